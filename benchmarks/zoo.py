"""Coverage of the torchvision classification zoo: every model pruned end to end, by fxtaylor
(Taylor criterion) and by torch-pruning (GroupMagnitudeImportance(p=2)), side by side.

    python benchmarks/zoo.py --doc docs/zoo.md            # all 80 torchvision models
    python benchmarks/zoo.py --timm --doc docs/zoo-timm.md  # timm's list (needs `pip install timm`)
    python benchmarks/zoo.py --models NAME ... [--size 224] [--tools fxtaylor tp]

Per model and tool, each in a child process (a crash, a hang or a memory blow-up costs one row):

- fxtaylor traces the channel graph, observes the Taylor criterion on a few random batches with
  a cross-entropy loss, cuts to 70 % of the FLOPs (the classifier output is a frozen group, so
  it is kept) and checks the forward pass, the output shape, the FLOPs band and the dead-channel
  test on one random prunable group.
- torch-pruning builds its dependency graph, runs the same dead-channel test on one random
  group of those its pruner ranks (``tests/tp_compare.py``), and prunes globally in small
  iterative steps until its own FLOPs count is at or below 70 %.

Rows: groups, prunable channels, frozen groups and why, FLOPs and params before and after,
seconds, peak memory of the child (VmHWM) and memory beyond the built model while tracing and
pruning (the 4 GB budget), status and reason. Rows are kept in a JSON file next to ``--doc``, so
an interrupted run resumes where it stopped (``--redo`` recomputes).
"""
from __future__ import annotations

import argparse
import collections
import json
import multiprocessing as mp
import sys
import time
import traceback
from pathlib import Path

from sections import replace_section

TARGET = 0.7
BUDGET_MIB = 4096  # memory beyond the built model, to trace and prune
ROOT = Path(__file__).resolve().parents[1]
TIMM = ["resnet50d", "efficientnet_b0", "mobilenetv3_large_100", "convnext_tiny", "regnety_008", "rexnet_100",
        "cspresnet50", "dla34", "hrnet_w18_small"]


def _model(name: str):
    if name.startswith("timm/"):
        import timm

        return timm.create_model(name[len("timm/"):], pretrained=False)
    import torchvision

    kw = {"aux_logits": False, "init_weights": True} if name in ("googlenet", "inception_v3") else {}
    return torchvision.models.get_model(name, weights=None, **kw)


def _size(name: str, size: int) -> int:
    return max(size, 299) if name == "inception_v3" and size >= 224 else size


class Memory:
    """Resident memory of this process: now, the peak since the last ``reset()`` (Linux:
    /proc/self/status VmHWM, reset through /proc/self/clear_refs), and the highest peak."""

    highest = 0.0

    @staticmethod
    def _status(key: str) -> float:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
        return 0.0

    def now(self) -> float:
        return self._status("VmRSS")

    def peak(self) -> float:
        return self._status("VmHWM")

    def highest_peak(self) -> float:
        return max(Memory.highest, self.peak())

    def reset(self) -> None:
        Memory.highest = max(Memory.highest, self.peak())
        try:
            Path("/proc/self/clear_refs").write_text("5")
        except OSError:  # not Linux, or not allowed: the peak then covers the whole process
            pass


_FROZEN_LABELS = [
    ("reaches the model output", "classifier output"),
    ("combined with a tensor that carries no prunable channels", "added to a frozen tensor"),
    ("reshapes channels to a fixed size", "fixed-size reshape"),
    ("layer norm over these channels", "layer norm over channels"),
    ("group reads channels that cannot be pruned", "reads frozen channels"),
    ("channels broadcast or mixed", "mixed with other dims"),
    ("selects channels by a fixed index", "fixed channel index"),
    ("fixed-size split", "fixed-size split"),
    ("GroupNorm", "GroupNorm"),
    ("LocalResponseNorm", "LocalResponseNorm"),
]


def frozen_summary(groups) -> str:
    """Why groups are frozen, by kind: '12 added to a frozen tensor, 1 classifier output'."""
    kinds = collections.Counter()
    for g in groups:
        if not g.frozen:
            continue
        reason = g.frozen[0]
        label = next((lab for key, lab in _FROZEN_LABELS if key in reason), None)
        if label is None:
            label = "no rule for " + reason.split("no channel rule for ")[1].split(";")[0] if "no channel rule for" in reason else reason[:40]
        kinds[label] += 1
    return ", ".join(f"{n} {k}" for k, n in kinds.most_common())


def fxtaylor_row(name: str, size: int = 224, batches: int = 2, batch_size: int = 4, seed: int = 0) -> dict:
    import torch
    import torch.nn.functional as F

    import fxtaylor
    from fxtaylor.pruner.select import cut

    sys.path.insert(0, str(ROOT / "tests"))
    from tp_compare import fx_dead

    torch.manual_seed(seed)
    mem = Memory()
    t0 = time.perf_counter()
    model = _model(name)
    s = _size(name, size)
    x = torch.randn(1, 3, s, s)
    built = mem.now()
    mem.reset()
    imp = fxtaylor.TaylorImportance(model, x)
    overhead = mem.peak() - built
    groups = imp.graph.groups
    prunable = imp.graph.prunable_groups
    row = {"groups": len(groups), "prunable_groups": len(prunable),
           "prunable_channels": sum(g.num_prunable for g in prunable),
           "frozen_groups": sum(1 for g in groups if g.frozen), "frozen": frozen_summary(groups)}
    model.eval()
    with torch.no_grad():
        ref = model(x)
    # dead-channel test on one random prunable group, before anything is cut
    if prunable:
        g = prunable[int(torch.randint(len(prunable), ()))]
        k = max(1, min(g.num_prunable, g.size // 4))
        chans = torch.randperm(g.size)[:k].tolist()
        dead = fx_dead(model, x, g.index, chans, scale=float(ref.abs().max()))
        row["dead_channel_rel"] = dead.rel
        if not dead.passed:
            return {**row, "status": "fail", "reason": f"dead-channel test: {dead}"}
    model.train()
    mem.reset()
    before_observe = mem.now()
    with imp.observe():
        for _ in range(batches):
            xb = torch.randn(batch_size, 3, s, s)
            yb = torch.randint(0, ref.shape[-1], (batch_size,))
            model.zero_grad()
            F.cross_entropy(model(xb), yb).backward()
    row["observe_mib"] = round(mem.peak() - before_observe)
    model.zero_grad(set_to_none=True)
    f0, p0 = imp.total_flops(), sum(p.numel() for p in model.parameters())
    row.update(flops_before=f0, params_before=p0)
    if not prunable:
        return {**row, "status": "frozen", "reason": "no prunable group", "seconds": round(time.perf_counter() - t0, 1),
                "overhead_mib": round(overhead)}
    mem.reset()
    base = mem.now()
    cut(imp, TARGET * f0)
    overhead = max(overhead, mem.peak() - base)
    f1 = imp.total_flops()
    model.eval()
    with torch.no_grad():
        out = model(x)
    row.update(flops_after=f1, params_after=sum(p.numel() for p in model.parameters()),
               seconds=round(time.perf_counter() - t0, 1), overhead_mib=round(overhead))
    return _verdict(row, out.shape, ref.shape, f1 / f0)


def _verdict(row: dict, shape, want, ratio: float | None) -> dict:
    """Output shape, FLOPs within 1 % of the target (``ratio`` None: not asked), memory budget."""
    if shape != want:
        return {**row, "status": "fail", "reason": f"output shape {tuple(shape)}, expected {tuple(want)}"}
    if ratio is not None and not TARGET * 0.99 <= ratio <= TARGET * 1.01:
        return {**row, "status": "fail", "reason": f"FLOPs {ratio:.3f} of the original, target {TARGET}"}
    if row["overhead_mib"] > BUDGET_MIB:
        return {**row, "status": "fail", "reason": f"{row['overhead_mib']} MiB beyond the model to trace and prune"}
    return {**row, "status": "pass", "reason": ""}


def tp_row(name: str, size: int = 224, seed: int = 0, max_steps: int = 50) -> dict:
    import torch
    import torch_pruning as tp

    sys.path.insert(0, str(ROOT / "tests"))
    from tp_compare import tp_dead

    torch.manual_seed(seed)
    mem = Memory()
    t0 = time.perf_counter()
    model = _model(name).eval()
    s = _size(name, size)
    x = torch.randn(1, 3, s, s)
    with torch.no_grad():
        ref = model(x)
    # the classifier: a linear, or a conv (SqueezeNet, timm's DLA) with one output per class
    classes = ref.shape[-1]
    head = [m for m in model.modules() if (isinstance(m, torch.nn.Linear) and m.out_features == classes)
            or (isinstance(m, torch.nn.Conv2d) and m.out_channels == classes)]
    f0, p0 = tp.utils.count_ops_and_params(model, x)
    built = mem.now()
    mem.reset()
    pruner = tp.pruner.BasePruner(model, x, importance=tp.importance.GroupMagnitudeImportance(p=2), global_pruning=True,
                                  pruning_ratio=0.9, iterative_steps=max_steps, ignored_layers=head)
    groups = list(pruner.DG.get_all_groups(ignored_layers=pruner.ignored_layers, root_module_types=pruner.root_module_types))
    overhead = mem.peak() - built
    row = {"groups": len(groups), "flops_before": int(f0), "params_before": int(p0)}
    if groups:  # the same dead-channel test as fxtaylor's, on one random group tp would prune
        g = groups[int(torch.randint(len(groups), ()))]
        n = len(g[0].idxs)
        names = {m: k for k, m in model.named_modules()}
        chans = torch.randperm(n)[:max(1, n // 4)].tolist()
        dead = tp_dead(model, x, names[g[0].dep.target.module], chans, scale=float(ref.abs().max()))
        row["dead_channel_rel"] = dead.rel
        if not dead.passed:
            row.update(status="fail", reason=f"dead-channel test on the group of {names[g[0].dep.target.module]}: {dead}"[:200],
                       seconds=round(time.perf_counter() - t0, 1), overhead_mib=round(overhead))
            return row
    mem.reset()
    base = mem.now()
    f1 = f0
    for _ in range(max_steps):
        if f1 <= TARGET * f0:
            break
        pruner.step()
        f1, _ = tp.utils.count_ops_and_params(model, x)
    overhead = max(overhead, mem.peak() - base)
    with torch.no_grad():
        out = model(x)
    row.update(flops_after=int(f1), params_after=int(sum(p.numel() for p in model.parameters())),
               seconds=round(time.perf_counter() - t0, 1), overhead_mib=round(overhead))
    if f1 > TARGET * f0:
        return {**row, "status": "fail", "reason": f"stopped at {f1 / f0:.3f} of the FLOPs"}
    # torch-pruning steps by channel ratio, not to a FLOPs target: its last step may overshoot
    return _verdict({**row, "flops_ratio": f1 / f0}, out.shape, ref.shape, None)


def _child(fn_name: str, name: str, size: int, queue) -> None:
    try:
        row = globals()[fn_name](name, size)
    except Exception as e:  # noqa: BLE001 - every failure becomes a row
        row = {"status": "fail", "reason": f"{type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}",
               "trace": traceback.format_exc(limit=3)}
    row["peak_mib"] = round(Memory().highest_peak())
    queue.put(row)


def _rss_mib(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def isolated(fn_name: str, name: str, size: int, timeout: float, max_rss_mib: float = 12288) -> dict:
    """One model in a fresh process: its peak memory is its own, a hang, a crash or a memory
    blow-up (resident memory above ``max_rss_mib``, checked every 0.5 s) is a row."""
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_child, args=(fn_name, name, size, q))
    p.start()
    t0, why = time.monotonic(), None
    while p.is_alive() and why is None:
        p.join(0.5)
        if time.monotonic() - t0 > timeout:
            why = f"did not finish in {timeout:.0f} s"
        elif _rss_mib(p.pid) > max_rss_mib:
            why = f"over {max_rss_mib / 1024:.0f} GiB resident after {time.monotonic() - t0:.0f} s"
    if why is not None:
        p.kill()
        p.join()
        return {"status": "fail", "reason": why}
    if not q.empty():
        return q.get()
    why = "killed (SIGKILL: out of memory)" if p.exitcode == -9 else f"process died (exit {p.exitcode})"
    return {"status": "fail", "reason": why}


TOOLS = {"fxtaylor": "fxtaylor_row", "tp": "tp_row"}


def _status(r: dict | None) -> str:
    if r is None:
        return "not run"
    return r["status"] + (f": {r['reason']}" if r.get("reason") else "")


def markdown(rows: dict, size: int) -> str:
    def gf(v):
        return "–" if v is None else f"{v / 1e9:.2f}"

    def mp_(v):
        return "–" if v is None else f"{v / 1e6:.1f}"

    def cells(r: dict | None) -> list[str]:
        r = r or {}
        return [f"{gf(r.get('flops_before'))} → {gf(r.get('flops_after'))}", f"{mp_(r.get('params_before'))} → {mp_(r.get('params_after'))}",
                str(r.get("seconds", "–")), f"{r.get('peak_mib', '–')} / {r.get('overhead_mib', '–')}", _status(r or None)]

    lines = [
        "| model | groups (prunable) | prunable ch. | frozen groups | fxtaylor GFLOPs | params M | s | peak / extra MiB | status "
        "| tp GFLOPs | params M | s | peak / extra MiB | status |",
        "|---" * 14 + "|",
    ]
    for name, r in rows.items():
        ours = r.get("fxtaylor") or {}
        lines.append(f"| {name} | {ours.get('groups', '–')} ({ours.get('prunable_groups', '–')}) | {ours.get('prunable_channels', '–')} | "
                     f"{ours.get('frozen', '–')} | " + " | ".join(cells(r.get("fxtaylor")) + cells(r.get("tp"))) + " |")
    return "\n".join(lines)


def counts(rows: dict) -> dict:
    """pass / frozen / fail per tool; a fxtaylor pass with frozen groups other than the
    classifier output counts as 'pass, parts frozen' (attention models)."""
    out = {}
    for tool in TOOLS:
        c = collections.Counter()
        for r in rows.values():
            row = r.get(tool)
            if row is None:
                continue
            kind = row["status"]
            if tool == "fxtaylor" and kind == "pass" and row.get("frozen_groups", 0) > 1:
                kind = "pass, parts frozen"
            c[kind] += 1
        out[tool] = dict(c)
    return out


def main(argv: list[str] | None = None) -> dict:
    import torchvision

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", help="default: every torchvision classification model")
    p.add_argument("--timm", action="store_true", help="timm's representative list instead (needs timm)")
    p.add_argument("--tools", nargs="+", choices=list(TOOLS), default=list(TOOLS))
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--timeout", type=float, default=300, help="seconds per model and tool [300]")
    p.add_argument("--max-rss-gib", type=float, default=12, help="kill a child above this resident memory [12]")
    p.add_argument("--doc", default=None, help="write the table here (docs/zoo.md); rows are kept in its .json")
    p.add_argument("--redo", action="store_true", help="recompute rows already in the .json")
    args = p.parse_args(argv)
    names = args.models or (["timm/" + n for n in TIMM] if args.timm else torchvision.models.list_models(module=torchvision.models))
    store = Path(args.doc).with_suffix(".json") if args.doc else None
    rows = json.loads(store.read_text()) if store and store.exists() else {}
    if store:
        store.parent.mkdir(parents=True, exist_ok=True)
    for name in names:
        r = rows.setdefault(name, {})
        for tool in args.tools:
            if tool in r and not args.redo:
                continue
            r[tool] = isolated(TOOLS[tool], name, args.size, args.timeout, args.max_rss_gib * 1024)
            print(f"{name} {tool}: {_status(r[tool])} ({r[tool].get('seconds', '–')} s, {r[tool].get('peak_mib', '–')} MiB)", flush=True)
            if store:
                tmp = store.with_suffix(".tmp")
                tmp.write_text(json.dumps(rows, indent=1, default=str))
                tmp.replace(store)
    shown = {n: rows[n] for n in names}
    if args.doc:
        source = "timm" if args.timm else "torchvision"
        total = sum(r.get("seconds", 0) for row in shown.values() for r in row.values())
        command = f"python benchmarks/zoo.py{' --timm' if args.timm else ''} --size {args.size} --doc {args.doc}"
        replace_section(Path(args.doc), f"zoo-{source}", f"Generated by `{command}` ({len(shown)} {source} models, "
                        f"{args.size} px, target 70 % of the FLOPs; {total / 60:.0f} min summed over the rows that finished, on a 2-core CPU).\n\n"
                        "Counts: " + "; ".join(f"{'torch-pruning' if tool == 'tp' else tool}: " + ", ".join(f"{n} {k}" for k, n in c.items())
                                                 for tool, c in counts(shown).items()) + ".\n\n" + markdown(shown, args.size), title="# The model zoo, pruned end to end")
    else:
        json.dump(shown, sys.stdout, indent=1, default=str)
    return shown


if __name__ == "__main__":
    main()
