"""Timing forward passes: the one place fxtaylor measures time.

Everything that reports a latency — the run's before/after numbers, the latency model's tables,
the whole-model remainder — goes through :func:`time_calls`, so all of them share warm-up,
inference mode, accelerator synchronisation, thread count and the interleaving that keeps a busy
machine from favouring whichever model ran in a quiet moment.

The clock is ``torch.utils.benchmark.Timer`` (it synchronises CUDA before reading the clock and
sets the thread count). Blocks are timed with ``Timer.timeit(number)`` at a block size chosen
from the warm-up runs rather than with ``blocked_autorange``: the latter first grows its block
until the timer's overhead is below 1e-4 of it, which costs about 0.2 s per call whatever
``min_run_time`` says (measured: 0.24 s for a 1 ms conv at ``min_run_time=0.02``) — minutes for a
latency table of hundreds of small layers. Blocks here last ≥ 5 ms (or one run), where the
timer's microsecond overhead is already below 1 %.
"""
from __future__ import annotations

import contextlib
import copy
import logging
import math
import statistics
import time
from dataclasses import dataclass
from typing import Any, Sequence

import torch
import torch.nn as nn
import torch.utils._pytree as pytree


# torch.utils.benchmark imports torch.utils.cpp_extension, which logs "No CUDA runtime is found"
# as it loads on a CPU-only torch wherever a CUDA toolkit is installed: every fxtaylor command
# printed it. That one logger is muted for this import; nothing else is silenced.
_cpp_log = logging.getLogger("torch.utils.cpp_extension")
_level = _cpp_log.level
_cpp_log.setLevel(logging.ERROR)
try:
    from torch.utils import benchmark
finally:
    _cpp_log.setLevel(_level)

from .. import examples
from ..devices import device_of, float_dtype
from ..errors import FxTaylorError, describe
from .deployment import Deployment
from .runtimes import run_once, runtime_of

BLOCK_S = 0.005  # shortest block worth timing: the timer's ~µs overhead stays below 1 %
WARMUP = 2  # untimed runs first: oneDNN/cuDNN pick and cache their kernels on the first call

# Number of time_calls() invocations in this process: tests read it to check that a cache hit
# measures nothing.
CALLS = 0


@dataclass
class Timing:
    """A measured latency: median milliseconds, interquartile range of the timed blocks
    (spread), and how many forward passes were timed."""

    median_ms: float
    iqr_ms: float
    runs: int
    rounds_ms: tuple[float, ...] = ()  # median of each interleaved round: round i of every model ran side by side
    setup_s: float = 0.0  # building the runner and its first (untimed) call: an export and session, a compile

    def as_dict(self) -> dict:
        return {"median_ms": self.median_ms, "iqr_ms": self.iqr_ms, "runs": self.runs}


def noise(timing: Timing) -> float:
    """Relative noise of a measurement: IQR ÷ median. Two models whose medians differ by less
    than about this fraction cannot be told apart by this measurement."""
    return timing.iqr_ms / timing.median_ms if timing.median_ms > 0 else float("inf")


def measure(
    models: Sequence[nn.Module],
    example_input: torch.Tensor,
    deployment: Deployment,
    *,
    min_run_time: float = 0.5,
    rounds: int = 5,
) -> list[Timing]:
    """Latency of each model's forward pass as ``deployment`` runs it.

    Each model is copied, cast to the deployment's dtype and memory format and moved to its
    device (the models passed in are not touched: not their mode, weights, dtype or format).
    The input is ``example_input``'s per-sample shape repeated to ``deployment.batch_size``
    (random values, on the device, in the dtype and format). Forward hooks are not copied:
    an observer (e.g. the Taylor criterion's) would otherwise be timed and fed the timing runs.

    About ``min_run_time`` seconds per model are timed, split into ``rounds`` interleaved rounds
    (model A, B, C, A, B, C, ...): a machine that gets busier slows every model alike, so their
    ratio stays right. Median over rounds; spread = IQR of the timed blocks.
    """
    models = check_models(models)
    check_deployment(deployment)
    for name, v, least in (("min_run_time", min_run_time, 0.0), ("rounds", rounds, 1)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < least:
            raise FxTaylorError(f"{name} must be a number ≥ {least:g}, got {v!r}")
    if not models:
        return []
    dep = deployment.resolved(models[0])
    copies = [prepare(m, dep) for m in models]
    x = batch_like(example_for(copies, example_input, dep), dep)
    return time_calls([(m, x) for m in copies], dep, min_run_time=min_run_time, rounds=rounds)


def check_runtime(model: nn.Module, example: Any, deployment: Deployment) -> None:
    """Run ``model`` once in the deployment's runtime (a copy: the model is untouched), so that a
    model the runtime cannot take — an op the ONNX exporter lacks, a graph torch.compile
    rejects — fails before a run starts rather than at its first measurement. The runner is
    kept where the runtime caches them (ONNX Runtime's sessions): the run's first measurement
    of the dense model reuses it.

    A runtime with nothing to build (eager PyTorch: :attr:`Runtime.builds`) deployed on the
    model's own device and dtype is not run: the caller ran the model there already (its first
    batch), and a copy and a forward pass would only repeat that."""
    dep = deployment.resolved(model)
    rt = runtime_of(dep.runtime)
    if not rt.builds and dep.torch_device == device_of(model) and dep.torch_dtype == float_dtype(model, None):
        return
    copies = [prepare(model, dep)]
    x = batch_like(example_for(copies, example, dep), dep)
    try:
        run_once(copies[0], tuple(x) if isinstance(x, _Args) else (x,), dep)
    except FxTaylorError as e:
        raise FxTaylorError(f"the model cannot be timed in {rt.label}: {e}") from None
    except Exception as e:
        raise FxTaylorError(f"the model cannot be timed in {rt.label}: {describe(e)}") from e


def check_models(models: Any) -> list[nn.Module]:
    """``models``: a list (or tuple) of modules."""
    if isinstance(models, nn.Module):
        raise FxTaylorError(f"models must be a list of models, got one {type(models).__name__}: pass [model]")
    if not isinstance(models, (list, tuple)):
        raise FxTaylorError(f"models must be a list of models (torch.nn.Module), got {type(models).__name__}")
    for i, m in enumerate(models):
        examples.check_model(m, f"models[{i}]")
    return list(models)


def check_deployment(deployment: Any) -> None:
    if not isinstance(deployment, Deployment):
        raise FxTaylorError(f"deployment must be a fxtaylor.Deployment (e.g. Deployment(batch_size=1)), got {type(deployment).__name__}")


def example_for(copies: Sequence[nn.Module], example: Any, dep: Deployment, what: str = "example_input") -> Any:
    """The example as timing takes it: a lone tensor (``model(x)``; timed at the deployment's
    batch size), or a plain tuple of the model's arguments (``model(*args)``), decided by running
    the first prepared copy on it (:func:`fxtaylor.examples.resolve`: ``model(*inputs)``, else
    ``model(inputs)``) and checked on the others — copies, so no hook of the models passed in
    sees these runs. Only shapes matter: the example is first put on the deployment's device and
    dtype (a tensor: the timed batch). An :class:`~fxtaylor.examples.Args` (an example an entry
    point decided already) is taken as it is."""
    if not isinstance(example, examples.Args):
        examples.check_values(None, example, what, device=False)
        placed = batch_like(example, dep) if isinstance(example, torch.Tensor) else _on(example, dep)
        args = examples.resolve(copies[0], placed, what)
        for i, m in enumerate(copies[1:], 1):
            try:
                examples.run(m, args)
            except Exception as e:
                raise FxTaylorError(f"models[{i}] cannot run on {what} ({examples.shape_of(example)}), models[0] "
                                    f"can: {describe(e)}") from e
        example = args
    x = examples.single(example)
    return x if x is not None else tuple(example)


def one_tensor(example: Any, what: str = "example_input") -> torch.Tensor:
    """The one batched input tensor a latency table is measured with (a lone tensor, or the one
    tensor of a tuple or list of arguments), with finite values."""
    x = example[0] if isinstance(example, (tuple, list)) and len(example) == 1 else example
    if not isinstance(x, torch.Tensor):
        examples.check_values(None, example, what, device=False)  # names what it is, if it holds no tensor
        raise FxTaylorError(f"{what}: a latency model needs a model whose input is one batched tensor (its tables are "
                            f"measured at the deployment's batch size), got {examples.shape_of(example)}")
    examples.check_values(None, x, what, device=False)
    if x.dim() == 0:
        raise FxTaylorError(f"{what} must be a batch (its first dimension the batch), got a 0-d tensor")
    return x


def prepare(model: nn.Module, dep: Deployment) -> nn.Module:
    """A copy of ``model`` in eval mode, on the deployment's device, dtype and memory format,
    without forward/backward hooks (the copy's hook dicts start empty: the memo maps each
    original hook dict to a new empty one, so hooks — and the objects they close over — are
    never deep-copied)."""
    memo: dict[int, object] = {}
    for m in model.modules():
        for attr in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks",
                     "_forward_hooks_with_kwargs", "_forward_pre_hooks_with_kwargs", "_forward_hooks_always_called"):
            d = getattr(m, attr, None)
            if d is not None:
                memo[id(d)] = type(d)()
    c = copy.deepcopy(model, memo)
    c.eval()
    for p in c.parameters():
        p.requires_grad_(False)
    return c.to(dep.torch_device, dep.torch_dtype, memory_format=dep.torch_memory_format) if _has_4d(c) else c.to(dep.torch_device, dep.torch_dtype)


def _has_4d(model: nn.Module) -> bool:
    return any(p.dim() == 4 for p in model.parameters())


def batch_like(example: Any, dep: Deployment) -> Any:
    """Random input of ``example``'s per-sample shape at the deployment's batch size, dtype,
    device and memory format (channels_last applies to 4-D inputs only). Random values: dense
    kernels take the same time whatever the numbers.

    A model whose input is not one batched tensor (a detection model's list of images, RAFT's
    two frames — ``example`` a tuple of its arguments) is timed on ``example`` itself, moved to
    the device and dtype: its batch is what the example holds."""
    if not isinstance(example, torch.Tensor):
        return _Args(_on(example, dep))
    x = torch.randn((dep.batch_size, *example.shape[1:]), device=dep.torch_device)
    x = x.to(dep.torch_dtype) if example.is_floating_point() else x.to(example.dtype)
    return x.contiguous(memory_format=dep.torch_memory_format) if x.dim() == 4 else x


class _Args(tuple):
    """Positional arguments of a forward pass, as opposed to one input tensor."""


def _on(x: Any, dep: Deployment) -> Any:
    """``x``'s tensors on the deployment's device; floating ones in its dtype."""
    def move(t):
        if not isinstance(t, torch.Tensor):
            return t
        return t.to(dep.torch_device, dep.torch_dtype) if t.is_floating_point() else t.to(dep.torch_device)
    return pytree.tree_map(move, x)


def time_calls(
    calls: Sequence[tuple[nn.Module, torch.Tensor]],
    dep: Deployment,
    *,
    min_run_time: float,
    rounds: int,
    runtimes: Sequence[str] | None = None,
) -> list[Timing]:
    """Time ``module(input)`` for each (module, input), modules already prepared (eval, device,
    dtype, format), in the deployment's runtime (:mod:`.runtimes`; ``runtimes``: one runtime
    name per call instead). Runs ≈ ``min_run_time`` seconds per call in total, in ``rounds``
    rounds that visit every call in turn; each round times whole blocks of ≥ ``BLOCK_S`` (or
    one run). Each runner's build and first call (an export, a compile) is untimed and
    recorded as :attr:`Timing.setup_s`."""
    global CALLS
    CALLS += 1
    rounds = max(1, int(rounds))
    per_round = max(min_run_time, 0.0) / rounds
    names = list(runtimes) if runtimes is not None else [dep.runtime] * len(calls)
    blocks: list[list[float]] = [[] for _ in calls]  # seconds per run, one entry per block
    round_medians: list[list[float]] = [[] for _ in calls]
    runs = [0] * len(calls)
    setup = [0.0] * len(calls)
    with contextlib.ExitStack() as stack:
        for name in dict.fromkeys(names):
            stack.enter_context(runtime_of(name).timing(names.count(name)))
        timers = []
        for i, ((m, x), name) in enumerate(zip(calls, names)):
            t0 = time.perf_counter()
            run = runtime_of(name).runner(m, tuple(x) if isinstance(x, _Args) else (x,), dep)
            with torch.inference_mode():
                run()  # untimed: the runtime's build (a compile) happens on the first call
            if dep.torch_device.type == "cuda":
                torch.cuda.synchronize(dep.torch_device)
            setup[i] = time.perf_counter() - t0
            timers.append(benchmark.Timer("run()", globals={"run": run}, num_threads=dep.threads or torch.get_num_threads()))
        with torch.inference_mode():
            plan = []
            for t in timers:
                t.timeit(WARMUP)  # untimed
                est = max(t.timeit(1).median, 1e-7)
                number = max(1, int(BLOCK_S / est))
                n_blocks = max(1, round(per_round / (number * est)))
                plan.append((number, n_blocks))
            for _ in range(rounds):
                for i, t in enumerate(timers):
                    number, n_blocks = plan[i]
                    this_round = [t.timeit(number).median for _ in range(n_blocks)]
                    blocks[i].extend(this_round)
                    round_medians[i].append(statistics.median(this_round))
                    runs[i] += number * n_blocks
    out = []
    for b, r, n, s in zip(blocks, round_medians, runs, setup):
        q = statistics.quantiles(b, n=4, method="inclusive") if len(b) >= 2 else [b[0], b[0], b[0]]
        out.append(Timing(median_ms=statistics.median(r) * 1e3, iqr_ms=(q[2] - q[0]) * 1e3, runs=n,
                          rounds_ms=tuple(v * 1e3 for v in r), setup_s=s))
    return out
