"""The zoo gate: every torchvision model (and a timm list) re-checked on every change.

The zoo runner (``zoo.py``) measures the whole zoo once, at full size and with torch-pruning
beside, in about three hours. The gate is its fast half that runs in the README's ``pytest``
(``tests/test_zoo_gate.py``), one test per model, at small inputs chosen per family:

1. trace the channel graph (in train and eval mode where the model's graphs differ; in parts
   where torch.fx cannot trace it whole) and count its groups, prunable groups and channels,
   and its frozen groups by kind of reason;
2. the dead-channel test on one random prunable group per region (``zoo.dead_channel_tests``:
   zero a quarter of its channels at every producer, prune them, the output must not move;
   float64 for detection, whose top-k and NMS turn float32 rounding into other proposals);
3. one real cut through :class:`fxtaylor.Pruner`: the Taylor criterion observed on one training
   batch with the family's loss, then one step that removes 10 % of the FLOPs (or half of what
   the prunable groups carry, where that is less);
4. the pruned model trained one step (forward and backward in train mode, the family's loss)
   and run in eval mode: its output structure must equal the unpruned model's.

Each model's numbers are compared with the checked-in table ``tests/zoo_gate.json``, written
by this module (``python benchmarks/zoo_gate.py --write``): a model that no longer traces,
loses prunable groups or channels, or fails a check fails its test, naming the difference; a
model that gains prunable groups (a new rule) is reported, so the table is regenerated
deliberately. Models run in ``WORKERS`` long-lived child processes (one per core, one thread
each); a crash, a hang or a memory blow-up costs one model's row, not the run.

    python benchmarks/zoo_gate.py --write                 # rerun every model, rewrite the table
    python benchmarks/zoo_gate.py --models maxvit_t swin_t  # rows as JSON, table untouched
    pytest tests/test_zoo_gate.py -k maxvit_t             # one model through the gate
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import queue
import re
import sys
import threading
import time
import traceback
from pathlib import Path

import zoo

ROOT = Path(__file__).resolve().parents[1]
TABLE = ROOT / "tests" / "zoo_gate.json"
WORKERS = 2  # one process per core on the CI machine
TIMEOUT = 420  # seconds per model before its worker is killed
MAX_RSS_MIB = 10240  # a worker above this resident memory is killed (its model's row fails)
RECYCLE_MIB = 4096  # a worker above this after a model is replaced (memory the allocator kept)
CUT = 0.1  # the share of the FLOPs the one pruner step removes (thousands of channels in many groups)

# timm models in the gate (beside every torchvision model): the smallest model of every timm
# architecture module that is a CNN (benchmarks/timm_models.json, chosen by the zoo runner's
# --select-timm; 58 in timm 1.0.31), and the zoo's earlier hand-picked list
TIMM = list(dict.fromkeys(
    [v["model"] for v in json.loads((ROOT / "benchmarks" / "timm_models.json").read_text())["modules"].values() if v["cnn"]]
    + ["resnet50d", "efficientnet_b0", "mobilenetv3_large_100", "convnext_tiny", "regnety_008", "rexnet_100",
       "cspresnet50", "dla34", "hrnet_w18_small"]))

# per family: the input side of the gate (small, where every model of the family still runs)
SIZES = {"classification": 64, "detection": 128, "segmentation": 64, "video": 32, "optical_flow": 128}
# models whose architecture fixes or bounds the input side
SIZE = {"maxvit_t": 224, "inception_v3": 299, "s3d": 112,  # MaxViT: 7x7 windows at every stage; Inception-v3:
        # its aux head; S3D: 16-frame clips (zoo.py's video inputs) for its last pooling; timm: fixed-size attention
        # (HaloNet, EfficientFormer, Visformer), Inception stems that need more than 64 px
        "timm/halonet_h1": 256, "timm/efficientformer_l1": 224, "timm/efficientformerv2_s0": 224,
        "timm/visformer_tiny": 224, "timm/inception_v3": 128, "timm/inception_v4": 128, "timm/inception_resnet_v2": 128}
# models built smaller than their default input (a ViT's image_size is a constructor argument)
BUILD = {name: {"image_size": side} for name, side in
         [("vit_b_16", 64), ("vit_b_32", 64), ("vit_l_16", 64), ("vit_l_32", 64), ("vit_h_14", 56)]}
# the largest models skip the training step after the cut (observing the criterion is one
# training step already): measured, each costs minutes of the gate's budget otherwise
NO_TRAIN_STEP = {"regnet_y_128gf", "vit_h_14"}


def models() -> list[str]:
    """Every torchvision model of every family, then the timm list."""
    return [n for f in zoo.FAMILIES.values() for n in f.models()] + ["timm/" + n for n in TIMM]


def size_of(name: str) -> int:
    return BUILD.get(name, {}).get("image_size") or SIZE.get(name, SIZES[zoo.family_of(name).name])


# the R-CNNs with fewer proposals: their box, mask and keypoint heads run once per proposal
# (1000 at test time by default), in float64 in the dead-channel test — measured 331 s for
# Faster R-CNN v2's row with the defaults
RCNN = dict(rpn_pre_nms_top_n_test=100, rpn_post_nms_top_n_test=50, rpn_pre_nms_top_n_train=100,
            rpn_post_nms_top_n_train=50, box_batch_size_per_image=32)


def gate_model(fam, name: str, size: int):
    """The zoo's model, with the gate's constructor arguments where it has some."""
    import torchvision

    if name in BUILD:
        return torchvision.models.get_model(name, weights=None, **BUILD[name])
    if fam.name == "detection" and "rcnn" in name:
        return torchvision.models.get_model(name, weights=None, weights_backbone=None, min_size=size,
                                            max_size=size * 5 // 4, **RCNN)
    return fam.build(name, size)


def frozen_kinds(groups) -> dict[str, int]:
    """Frozen groups counted by kind of reason (the zoo table's labels)."""
    text = zoo.frozen_summary(groups, "output")  # '12 added to a frozen tensor, 1 output'
    return {kind: int(n) for n, kind in (part.split(" ", 1) for part in re.split(r", (?=\d+ )", text) if part)}


def gate_row(name: str, seed: int = 0) -> dict:
    """One model through the gate (module docstring); the row's numbers, ``status`` 'pass' or
    'fail' and the ``reason`` of the first failure."""
    import torch

    import fxtaylor

    fam = zoo.family_of(name)
    size = size_of(name)
    torch.manual_seed(seed)
    t0 = time.perf_counter()
    zoo.phase("building")
    model = gate_model(fam, name, size).eval()
    x = fam.inputs(name, size, 1)
    with torch.no_grad():
        ref = model(*x)
    zoo.phase("tracing")
    graph = fxtaylor.trace(model, x)
    prunable = graph.prunable_groups
    row = {"family": fam.name, "input": zoo.shapes(x), "modes": list(graph.modes), "groups": len(graph.groups),
           "prunable_groups": len(prunable), "prunable_channels": sum(g.num_prunable for g in prunable),
           "frozen": frozen_kinds(graph.groups)}
    if graph.partial is not None:
        row["untraced"] = sorted(p or "<root>" for p in graph.partial.untraced)

    def done(reason: str = "") -> dict:
        return {**row, "status": "fail" if reason else "pass", "reason": reason, "seconds": round(time.perf_counter() - t0, 1)}

    if any(g.inexact for g in graph.groups):  # what the opt-in (exact=False) would open
        zoo.phase("tracing with exact=False")
        from fxtaylor.cost import FlopsCost

        loose = fxtaylor.trace(model, x, exact=False)
        row["reachable_inexact"] = round(FlopsCost().sync(loose, x).reachable(), 4)
        row["inexact_groups"] = sum(1 for g in loose.prunable_groups if g.inexact)
    if not prunable:
        row["reachable"] = 0.0
        return done()
    dead, failed = zoo.dead_channel_tests(model, x, fam, zoo.fx_kill,
                                          [(g.members[0].name, g.index, g.size, g.num_prunable) for g in prunable])
    row.update(dead_channel_rel=dead["dead_channel_rel"], dead_groups=dead["dead_groups"])
    if failed:
        return done(failed)
    zoo.phase("one pruner step")
    cut = _one_cut(model, x, graph, fam, name, size, ref)
    row.update(cut)
    if "reason" in cut:
        return done(cut.pop("reason"))
    if name not in NO_TRAIN_STEP:
        zoo.phase("training step of the pruned model")
        model.train()
        model.zero_grad(set_to_none=True)
        fam.loss(model, fam.inputs(name, size, 2), ref).backward()
        if any(p.grad is not None and not torch.isfinite(p.grad).all() for p in model.parameters()):
            return done("the pruned model's gradients are not finite")
        model.zero_grad(set_to_none=True)
    model.eval()
    zoo.phase("eval forward of the pruned model")
    with torch.no_grad():
        out = model(*x)
    if zoo.structure(out) != zoo.structure(ref):
        return done(f"output structure {zoo.structure(out)}, expected {zoo.structure(ref)}"[:300])
    return done()


def _one_cut(model, x, graph, fam, name: str, size: int, ref) -> dict:
    """Observe the criterion on one training batch, then one Pruner step removing ``CUT`` of the
    FLOPs (half the reachable share where that is less). The FLOPs before and after."""
    import fxtaylor
    from fxtaylor.pruner.select import minimum

    imp = fxtaylor.TaylorImportance(model, x, graph=graph)
    f0 = imp.total_flops()
    reach = 1 - minimum(imp) / f0
    share = min(CUT, reach / 2)
    if share <= 0.001:
        return {"flops_before": f0, "reachable": round(reach, 4), "reason": f"the prunable groups carry {reach:.2%} of the FLOPs"}
    pruner = fxtaylor.Pruner(model, x, graph=graph, criterion=lambda *a, **k: imp, target_flops=1 - share,
                             flops_per_prune=share, progress=False)
    model.train()
    with pruner.observe():
        fam.loss(model, fam.inputs(name, size, 2), ref).backward()
    model.zero_grad(set_to_none=True)
    gone = pruner.step()
    f1 = imp.total_flops()
    row = {"flops_before": f0, "flops_after": f1, "removed_units": len(gone), "reachable": round(reach, 4)}
    if not gone or f1 >= f0:
        row["reason"] = "the pruner step removed nothing"
    return row


# -- expected numbers ---------------------------------------------------------------------------

KEYS = ("groups", "prunable_groups", "prunable_channels", "frozen")


def expected() -> dict:
    return json.loads(TABLE.read_text())["models"] if TABLE.exists() else {}


def compare(row: dict, want: dict | None) -> tuple[list[str], list[str]]:
    """(failures, gains) of a row against its expected numbers. A failed check, fewer prunable
    groups or channels fail; more prunable groups or channels, or other counts that moved, are
    gains to regenerate the table for."""
    fails, gains = [], []
    if row.get("status") != "pass":
        fails.append(f"{row.get('status', 'fail')}: {row.get('reason', '')}")
    if want is None:
        gains.append("not in tests/zoo_gate.json yet")
        return fails, gains
    if "prunable_groups" not in row:  # it did not trace
        return fails, gains
    for key in ("prunable_groups", "prunable_channels"):
        if row[key] < want[key]:
            fails.append(f"{key} {want[key]} -> {row[key]}")
        elif row[key] > want[key]:
            gains.append(f"{key} {want[key]} -> {row[key]}")
    moved = [f"{k} {want[k]} -> {row[k]}" for k in ("groups", "frozen") if row[k] != want[k]]
    # other counts that moved go with the verdict: beside a loss they are part of it
    (fails if fails and not gains else gains).extend(moved)
    return fails, gains


# -- the workers --------------------------------------------------------------------------------


def _worker(tasks, results) -> None:
    """A child: rows for the names it is sent, one thread (the workers share the cores)."""
    import gc

    import torch

    torch.set_num_threads(1)
    sys.path.insert(0, str(ROOT / "tests"))
    parent = os.getppid()

    def orphaned() -> None:  # the parent killed (a CI timeout, ^C): do not run on alone
        while os.getppid() == parent:
            time.sleep(1)
        os._exit(1)

    threading.Thread(target=orphaned, daemon=True).start()
    zoo.PROGRESS = results
    while True:
        name = tasks.get()
        if name is None:
            return
        try:
            row = gate_row(name)
        except Exception as e:  # noqa: BLE001 - every failure becomes a row
            row = {"status": "fail", "reason": f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}",
                   "trace": traceback.format_exc(limit=-4)}
        gc.collect()
        results.put((name, row))


class _Slot:
    """One worker process and the model it is on."""

    def __init__(self, ctx):
        self.tasks, self.results = ctx.Queue(), ctx.Queue()
        self.proc = ctx.Process(target=_worker, args=(self.tasks, self.results), daemon=True)
        self.proc.start()
        self.name, self.since, self.phase = None, 0.0, ""

    def give(self, name: str) -> None:
        self.name, self.since, self.phase = name, time.monotonic(), "starting"
        self.tasks.put(name)

    def poll(self) -> tuple[str, dict] | None:
        while True:
            try:
                item = self.results.get_nowait()
            except queue.Empty:
                return None
            if isinstance(item, tuple):
                self.name = None
                return item
            self.phase = item

    def stop(self) -> None:
        if self.proc.is_alive():
            self.proc.kill()
        self.proc.join()


def run(names: list[str], workers: int = WORKERS, timeout: float = TIMEOUT, log=None) -> dict[str, dict]:
    """Gate rows for ``names``, computed by ``workers`` child processes (the slowest models
    first, so the two cores finish together); each row gets its ``seconds``."""
    ctx = mp.get_context("spawn")
    slow = {n: r.get("seconds", 0) for n, r in expected().items()}
    todo = sorted(names, key=lambda n: -slow.get(n, 30))
    rows: dict[str, dict] = {}
    slots = [_Slot(ctx) for _ in range(min(workers, len(todo)))]
    try:
        while len(rows) < len(names):
            for i, s in enumerate(slots):
                got = s.poll()
                if got is not None:
                    rows[got[0]] = got[1]
                    if log:
                        log(f"{got[0]}: {got[1]['status']} ({got[1].get('seconds', '-')} s) {got[1].get('reason', '')}")
                    if zoo.rss_mib(s.proc.pid) > RECYCLE_MIB:
                        s.stop()
                        slots[i] = s = _Slot(ctx)
                broke = None
                if s.name is not None:
                    if not s.proc.is_alive():
                        broke = f"worker died (exit {s.proc.exitcode})"
                    elif time.monotonic() - s.since > timeout:
                        broke = f"did not finish in {timeout:.0f} s"
                    elif zoo.rss_mib(s.proc.pid) > MAX_RSS_MIB:
                        broke = f"over {MAX_RSS_MIB / 1024:.0f} GiB resident"
                if broke:
                    rows[s.name] = {"status": "fail", "reason": f"{broke} ({s.phase})"}
                    s.stop()
                    slots[i] = s = _Slot(ctx)
                if s.name is None and todo:
                    s.give(todo.pop(0))
            time.sleep(0.2)
    finally:
        for s in slots:
            s.tasks.put(None)
        for s in slots:
            s.proc.join(5)
            s.stop()
    return rows


def write(rows: dict[str, dict]) -> None:
    """The expected table from rows that passed (a failing row is not an expectation)."""
    bad = {n: r.get("reason") for n, r in rows.items() if r.get("status") != "pass"}
    if bad:
        raise SystemExit(f"not written: {len(bad)} model(s) fail the gate: {bad}")
    shown = KEYS + ("reachable", "reachable_inexact", "inexact_groups", "seconds")  # the last four: not compared
    table = {n: {k: rows[n][k] for k in shown if k in rows[n]} for n in sorted(rows)}
    TABLE.write_text(json.dumps({"generated_by": "python benchmarks/zoo_gate.py --write",
                                 "models": table}, indent=1, sort_keys=False) + "\n")
    write_doc(table)


def write_doc(table: dict[str, dict]) -> None:
    """Rewrite docs/zoo.md's reachable-share block from the gate's table."""
    doc = ROOT / "docs" / "zoo.md"
    text = doc.read_text()
    start, end = text.index(REACH_START), text.index(REACH_END)
    doc.write_text(text[:start] + REACH_START + "\n" + reachable_table(table) + text[end:])


REACH_START, REACH_END = "<!-- reachable share: start -->", "<!-- reachable share: end -->"


def reachable_table(table: dict[str, dict]) -> str:
    """docs/zoo.md's reachable-share table: every gate model where the opt-in opens channel
    groups tied through a normaliser's statistics, with the FLOPs share pruning can remove exactly
    and with the opt-in."""
    has = [n for n, r in table.items() if "reachable_inexact" in r]
    rows = [(n, table[n]) for n in has if table[n]["inexact_groups"]]
    lines = ["| model | prunable groups (exact) | + with `exact=False` | reachable FLOPs, exact | with `exact=False` |",
             "|---|---:|---:|---:|---:|"]
    for n, r in rows:
        lines.append(f"| {n} | {r['prunable_groups']} | +{r['inexact_groups']} | {r.get('reachable', 0):.1%} | "
                     f"{r['reachable_inexact']:.1%} |")
    exact = [r.get("reachable", 0) for _, r in table.items()]
    lines.append("")
    lines.append(f"{len(has)} of {len(table)} gate models have such channels; in the {len(has) - len(rows)} not listed "
                 "every group holding them is frozen for another reason too, so the opt-in opens nothing there. Over all "
                 f"{len(table)}, the median "
                 f"reachable FLOPs share (exact) is {sorted(exact)[len(exact) // 2]:.1%}. Written by "
                 "`python benchmarks/zoo_gate.py --write` from the gate's own inputs (docs/zoo.md, \"The gate\").")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", help="these models only (default: all of them)")
    p.add_argument("--write", action="store_true", help=f"rewrite {TABLE.relative_to(ROOT)} from a run of every model")
    p.add_argument("--workers", type=int, default=WORKERS)
    args = p.parse_args(argv)
    if args.write and args.models:
        p.error("--write reruns every model")
    names = args.models or models()
    t0 = time.monotonic()
    rows = run(names, args.workers, log=lambda s: print(s, flush=True))
    print(f"{len(rows)} models in {time.monotonic() - t0:.0f} s with {args.workers} workers", flush=True)
    if args.write:
        write(rows)
    else:
        json.dump(rows, sys.stdout, indent=1, default=str)


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
