"""Coverage of the torchvision classification zoo: every model pruned end to end, by fxtaylor
(Taylor criterion) and by torch-pruning (GroupMagnitudeImportance(p=2)), side by side.

    python benchmarks/zoo.py [--models NAME ...] [--size 224] [--doc docs/zoo.md]

Per model, each in a child process (a crash, a hang or a memory blow-up costs one row):
fxtaylor observes the Taylor criterion on a few random batches with a cross-entropy loss and
cuts to 70 % of the FLOPs (the classifier output is a frozen group, so it is kept), then
checks the forward pass, the output shape, the FLOPs band, and dead-channel equivalence on one
random prunable group; torch-pruning prunes globally in small iterative steps until its own
FLOPs count is at or below 70 %. Rows: groups, prunable channels, FLOPs and params before and
after, seconds, peak memory (VmHWM of the child), status and reason.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import sys
import time
import traceback
from pathlib import Path

TARGET = 0.7
ROOT = Path(__file__).resolve().parents[1]


def _model(name: str):
    import torchvision

    kw = {"aux_logits": False, "init_weights": True} if name in ("googlenet", "inception_v3") else {}
    return torchvision.models.get_model(name, weights=None, **kw)


def _size(name: str, size: int) -> int:
    return max(size, 299) if name == "inception_v3" and size >= 224 else size


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def fxtaylor_row(name: str, size: int = 224, batches: int = 2, batch_size: int = 4, seed: int = 0) -> dict:
    import torch
    import torch.nn.functional as F

    import fxtaylor
    from fxtaylor.graph.check import dead_channel_diff
    from fxtaylor.pruner.select import cut

    torch.manual_seed(seed)
    t0 = time.perf_counter()
    model = _model(name)
    s = _size(name, size)
    x = torch.randn(1, 3, s, s)
    imp = fxtaylor.TaylorImportance(model, x)
    groups = imp.graph.groups
    prunable = imp.graph.prunable_groups
    row = {"groups": len(groups), "prunable_groups": len(prunable),
           "prunable_channels": sum(g.num_prunable for g in prunable),
           "frozen_groups": sum(1 for g in groups if g.frozen)}
    # dead-channel equivalence on one random prunable group, before anything is cut
    if prunable:
        g = prunable[int(torch.randint(len(prunable), ()))]
        k = max(1, min(g.num_prunable, g.size // 4))
        chans = torch.randperm(g.size)[:k].tolist()
        model.eval()
        diff, same = dead_channel_diff(model, x, g.index, chans)
        with torch.no_grad():
            scale = float(model(x).abs().max())
        row["dead_channel_rel"] = diff / max(scale, 1e-12)
        if not same or row["dead_channel_rel"] > 1e-4:
            return {**row, "status": "fail", "reason": f"dead-channel test: rel. diff {row['dead_channel_rel']:.1e}"}
    model.train()
    with imp.observe():
        for _ in range(batches):
            xb = torch.randn(batch_size, 3, s, s)
            yb = torch.randint(0, 1000, (batch_size,))
            model.zero_grad()
            F.cross_entropy(model(xb), yb).backward()
    f0, p0 = imp.total_flops(), sum(p.numel() for p in model.parameters())
    row.update(flops_before=f0, params_before=p0)
    if not prunable:
        return {**row, "status": "frozen", "reason": "no prunable group", "seconds": time.perf_counter() - t0}
    cut(imp, TARGET * f0)
    f1 = imp.total_flops()
    model.eval()
    with torch.no_grad():
        out = model(x)
    row.update(flops_after=f1, params_after=sum(p.numel() for p in model.parameters()),
               seconds=round(time.perf_counter() - t0, 1))
    if out.shape != (1, 1000):
        return {**row, "status": "fail", "reason": f"output shape {tuple(out.shape)}"}
    if not TARGET * 0.99 <= f1 / f0 <= TARGET * 1.01:
        return {**row, "status": "fail", "reason": f"FLOPs {f1 / f0:.3f} of the original, target {TARGET}"}
    return {**row, "status": "pass", "reason": ""}


def tp_row(name: str, size: int = 224, seed: int = 0, max_steps: int = 50) -> dict:
    import torch
    import torch_pruning as tp

    torch.manual_seed(seed)
    t0 = time.perf_counter()
    model = _model(name).eval()
    s = _size(name, size)
    x = torch.randn(1, 3, s, s)
    head = [m for m in model.modules() if isinstance(m, torch.nn.Linear) and m.out_features == 1000]
    f0, p0 = tp.utils.count_ops_and_params(model, x)
    pruner = tp.pruner.BasePruner(model, x, importance=tp.importance.GroupMagnitudeImportance(p=2), global_pruning=True,
                                  pruning_ratio=0.9, iterative_steps=max_steps, ignored_layers=head)
    f1 = f0
    for _ in range(max_steps):
        if f1 <= TARGET * f0:
            break
        pruner.step()
        f1, p1 = tp.utils.count_ops_and_params(model, x)
    with torch.no_grad():
        out = model(x)
    row = {"flops_before": int(f0), "flops_after": int(f1), "params_before": int(p0), "params_after": int(sum(p.numel() for p in model.parameters())),
           "seconds": round(time.perf_counter() - t0, 1)}
    if out.shape != (1, 1000):
        return {**row, "status": "fail", "reason": f"output shape {tuple(out.shape)}"}
    if f1 > TARGET * f0:
        return {**row, "status": "fail", "reason": f"stopped at {f1 / f0:.3f} of the FLOPs"}
    return {**row, "status": "pass", "reason": ""}


def _child(fn_name: str, name: str, size: int, queue) -> None:
    try:
        row = globals()[fn_name](name, size)
    except Exception as e:  # noqa: BLE001 - every failure becomes a row
        row = {"status": "fail", "reason": f"{type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}",
               "trace": traceback.format_exc(limit=3)}
    row["peak_mib"] = round(_peak_mib())
    queue.put(row)


def isolated(fn_name: str, name: str, size: int, timeout: float) -> dict:
    """One model in a fresh process: its peak memory is its own, a hang or crash is a row."""
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_child, args=(fn_name, name, size, q))
    p.start()
    p.join(timeout)
    if p.is_alive():
        p.kill()
        p.join()
        return {"status": "fail", "reason": f"did not finish in {timeout:.0f} s"}
    return q.get() if not q.empty() else {"status": "fail", "reason": f"process died (exit {p.exitcode})"}


def markdown(rows: dict, size: int, seconds: float) -> str:
    def mf(v):
        return "–" if v is None else f"{v / 1e9:.2f}"

    def mp_(v):
        return "–" if v is None else f"{v / 1e6:.1f}"

    lines = [
        f"Generated by `python benchmarks/zoo.py --size {size}` in {seconds / 60:.0f} min. FLOPs in GFLOPs (fvcore for fxtaylor, "
        "torch-pruning's own counter for torch-pruning), params in M, target 70 % of the FLOPs.",
        "",
        "| model | groups | prunable ch. | fxtaylor GFLOPs | params | s | peak MiB | status | torch-pruning GFLOPs | params | s | peak MiB | status |",
        "|---" * 13 + "|",
    ]
    for name, (ours, theirs) in rows.items():
        def cells(r):
            return [f"{mf(r.get('flops_before'))} → {mf(r.get('flops_after'))}", f"{mp_(r.get('params_before'))} → {mp_(r.get('params_after'))}",
                    str(r.get("seconds", "–")), str(r.get("peak_mib", "–")), r["status"] + (f": {r['reason']}" if r.get("reason") else "")]
        lines.append(f"| {name} | {ours.get('groups', '–')} | {ours.get('prunable_channels', '–')} | " + " | ".join(cells(ours) + cells(theirs)) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    import torchvision

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", help="default: every torchvision classification model")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--timeout", type=float, default=600)
    p.add_argument("--doc", default=None, help="write the table here (docs/zoo.md for the full zoo)")
    args = p.parse_args(argv)
    names = args.models or torchvision.models.list_models(module=torchvision.models)
    t0 = time.perf_counter()
    rows = {}
    for name in names:
        rows[name] = (isolated("fxtaylor_row", name, args.size, args.timeout), isolated("tp_row", name, args.size, args.timeout))
        print(f"{name}: fxtaylor {rows[name][0]['status']} {rows[name][0].get('reason', '')} | "
              f"torch-pruning {rows[name][1]['status']} {rows[name][1].get('reason', '')}", flush=True)
    if args.doc:
        Path(args.doc).write_text("# The torchvision zoo, pruned end to end\n\n" + markdown(rows, args.size, time.perf_counter() - t0) + "\n")
    json.dump({n: r for n, r in rows.items()}, sys.stdout if not args.doc else open(Path(args.doc).with_suffix(".json"), "w"), indent=1, default=str)
    return rows


if __name__ == "__main__":
    main()
