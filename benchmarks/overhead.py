"""What observing costs: a training step with ``TaylorImportance.observe()`` ÷ the same step without.

Importable without side effects (``benchmarks/gpu.py`` builds its table from
:func:`criterion_overhead`); run it as a script for one figure or for the operator counts::

    python benchmarks/overhead.py --device cpu --batch 16                 # time ratio
    python benchmarks/overhead.py --profile --model resnet18 --batch 2    # ops per step

Method. Two copies of the model with the same weights, each with its own SGD optimiser: one
observed for the whole run (as in real use, where ``observe()`` spans the 10–30 updates between
prunings), one plain. Their steps alternate (``torch.utils.benchmark.Timer``, one step per
measurement, which synchronises CUDA), so drift of a shared or throttling machine hits both
alike; the ratio is of the medians. On CUDA the peak-memory ratio compares each step's peak
allocation above what was allocated before the step (``torch.cuda.max_memory_allocated``).
"""
from __future__ import annotations

import argparse
import copy
import gc
import json
import statistics
from collections import Counter
from contextlib import ExitStack, nullcontext

import torch
import torch.nn.functional as F
import torchvision

import fxtaylor

DTYPES = {"float32": None, "bfloat16": torch.bfloat16}


def _model(model_name: str, device: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return getattr(torchvision.models, model_name)(weights=None).to(device).train()


def _step_fn(model, opt, x, y, amp_dtype):
    """One SGD update; under bf16 autocast when ``amp_dtype`` is set (weights stay float32)."""
    amp = torch.autocast(x.device.type, dtype=amp_dtype) if amp_dtype is not None else nullcontext()

    def step():
        with amp:
            loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def _pair(device: str, batch: int, dtype: str, model_name: str, size: int):
    """(observed step, plain step, importance, exit stack holding the observation open)."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    plain_model = _model(model_name, device)
    observed_model = copy.deepcopy(plain_model)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, size, size, generator=g).to(device)
    y = torch.randint(0, 1000, (batch,), generator=g).to(device)
    imp = fxtaylor.TaylorImportance(observed_model, x[:1])
    steps = []
    for m in (observed_model, plain_model):
        opt = torch.optim.SGD(m.parameters(), lr=1e-3, momentum=0.9)
        steps.append(_step_fn(m, opt, x, y, DTYPES[dtype]))
    stack = ExitStack()
    stack.enter_context(imp.observe())
    return steps[0], steps[1], imp, stack


def _peak_increment(step, device: str) -> int:
    torch.cuda.synchronize(device)
    gc.collect()
    torch.cuda.empty_cache()
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    step()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - before


def criterion_overhead(device: str, batch: int, dtype: str = "float32", model_name: str = "resnet50",
                       *, rounds: int = 15, warmup: int = 3, size: int = 224) -> dict:
    """Step time with ``observe()`` ÷ without (ratio of interleaved medians) and, on CUDA, the
    ratio of the steps' peak memory increments.

    ``dtype``: ``"float32"``, or ``"bfloat16"`` for the forward under ``torch.autocast``.
    Returns a JSON-able dict: ``time_ratio``, ``observed_s``, ``plain_s`` (medians, seconds),
    ``memory_ratio`` (None off CUDA), ``examples`` (counted by the criterion, as a check that
    it observed) and the settings.
    """
    from torch.utils.benchmark import Timer

    observed, plain, imp, stack = _pair(device, batch, dtype, model_name, size)
    with stack:
        for _ in range(warmup):
            observed()
            plain()
        timers = [Timer("f()", globals={"f": f}) for f in (observed, plain)]
        times: list[list[float]] = [[], []]
        for _ in range(rounds):
            for i, t in enumerate(timers):
                gc.collect()
                times[i].append(t.timeit(1).median)
        memory = None
        if torch.device(device).type == "cuda":
            memory = _peak_increment(observed, device) / max(_peak_increment(plain, device), 1)
    ours, base = (statistics.median(t) for t in times)
    return {"device": device, "batch": batch, "dtype": dtype, "model": model_name, "rounds": rounds,
            "time_ratio": ours / base, "observed_s": ours, "plain_s": base, "memory_ratio": memory,
            "examples": int(imp.examples)}


def op_counts(device: str = "cpu", batch: int = 2, dtype: str = "float32", model_name: str = "resnet18",
              size: int = 64) -> dict:
    """torch.profiler operator counts of one observed and one plain step (after a warm-up step
    each), and the number of feature-map reads per observed step: what an added host sync, copy
    or per-read kernel shows up as, without a GPU."""
    from torch.profiler import ProfilerActivity, profile

    observed, plain, imp, stack = _pair(device, batch, dtype, model_name, size)
    counts = {}
    with stack:
        for name, step in (("observed", observed), ("plain", plain)):
            step()
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                step()
            counts[name] = Counter({e.key: e.count for e in prof.key_averages()})
    return {"observed": counts["observed"], "plain": counts["plain"], "reads": len(imp.graph.node_maps)}


def _alternatives(scratch: torch.Tensor) -> dict:
    """Ways to compute Σ_spatial g·z per example and channel, in float32, from NCHW g and z."""

    def like(t):  # a reused buffer with t's strides (channels_last stays channels_last)
        return scratch[: t.numel()].view(t.dtype).as_strided(t.shape, t.stride()) if scratch.dtype == t.dtype else torch.empty_like(t)

    def flat(t):
        return t.reshape(t.shape[0], t.shape[1], -1)

    return {
        "vecdot on [N, C, HW]": lambda g, z: torch.linalg.vecdot(flat(g), flat(z), dim=-1).float(),
        "mul into scratch, reshape, sum": lambda g, z: flat(torch.mul(g, z, out=like(g))).sum(-1, dtype=torch.float32),
        "mul into strided scratch, sum(2, 3)": lambda g, z: torch.mul(g, z, out=like(g)).sum((2, 3), dtype=torch.float32),
        "mul, sum(2, 3)": lambda g, z: torch.mul(g, z).sum((2, 3), dtype=torch.float32),
        "einsum nchw,nchw->nc": lambda g, z: torch.einsum("nchw,nchw->nc", g, z).float(),
        "bmm [NC,1,HW]·[NC,HW,1]": lambda g, z: torch.bmm(flat(g).flatten(0, 1).unsqueeze(1), flat(z).flatten(0, 1).unsqueeze(2)).view(g.shape[:2]).float(),
    }


def read_kernels(device: str = "cpu", batch: int = 16, rounds: int = 7) -> dict:
    """Median seconds of each way of reducing g·z on ResNet-50's read shapes (one per stage),
    NCHW and channels_last float32, and NCHW bfloat16: what the criterion's hook is made of."""
    from torch.utils.benchmark import Timer

    shapes = [(batch, 256, 56, 56), (batch, 512, 28, 28), (batch, 1024, 14, 14), (batch, 2048, 7, 7)]
    layouts = {"float32": (torch.float32, torch.contiguous_format), "float32 channels_last": (torch.float32, torch.channels_last),
               "bfloat16": (torch.bfloat16, torch.contiguous_format)}
    out = {}
    for layout, (dtype, fmt) in layouts.items():
        scratch = torch.empty(max(s[0] * s[1] * s[2] * s[3] for s in shapes), dtype=dtype, device=device)
        pairs = [tuple(torch.randn(s, device=device).to(dtype).contiguous(memory_format=fmt) for _ in range(2)) for s in shapes]
        ref = [(g.double() * z.double()).sum((2, 3)) for g, z in pairs]
        for name, fn in _alternatives(scratch).items():
            err = max(float(((fn(g, z).double() - r).abs().max() / r.abs().max())) for (g, z), r in zip(pairs, ref))
            t = Timer("[f(g, z) for g, z in p]", globals={"f": fn, "p": pairs}).blocked_autorange(min_run_time=0.3)
            out[(layout, name)] = {"seconds": t.median, "relative_error": err}
    return out


def extra_ops(counts: dict) -> Counter:
    """Operators the observed step issued beyond the plain one (positive differences)."""
    diff = Counter(counts["observed"])
    diff.subtract(counts["plain"])
    return Counter({k: v for k, v in diff.items() if v > 0 and k.startswith("aten::")})


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    p.add_argument("--model", default="resnet50")
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--profile", action="store_true", help="operator counts instead of timings")
    p.add_argument("--kernels", action="store_true", help="compare ways of reducing g·z (ResNet-50 read shapes)")
    args = p.parse_args()
    if args.kernels:
        for (layout, name), r in read_kernels(args.device, args.batch).items():
            print(f"{layout:22s} {name:38s} {r['seconds'] * 1e3:8.2f} ms  rel. error {r['relative_error']:.1e}")
        return
    if args.profile:
        c = op_counts(args.device, args.batch, args.dtype, args.model)
        extra = extra_ops(c)
        print(f"{args.model} batch {args.batch} on {args.device}: {c['reads']} reads per step; "
              f"{sum(extra.values())} operators more than the plain step")
        for k in ("aten::item", "aten::_local_scalar_dense", "aten::_to_copy", "aten::to", "aten::copy_"):
            print(f"  {k}: observed {c['observed'][k]}, plain {c['plain'][k]}")
        print("  extra:", dict(extra.most_common()))
        return
    print(json.dumps(criterion_overhead(args.device, args.batch, args.dtype, args.model, rounds=args.rounds)))


if __name__ == "__main__":
    main()
