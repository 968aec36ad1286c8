"""fxtaylor's channel groups against torch-pruning's DependencyGraph, on torchvision models.

The two must agree group for group (canonical form: see ``tp_compare``), except where they
differ by design; every difference is settled with the dead-channel test: the fxtaylor-only
group must pass it (pruned through fxtaylor) and the tp-only group must fail it (pruned through
tp). Any other outcome, including "both pass", fails the test with a readable diff.

Fast subset by default; ``-m slow`` runs the whole torchvision classification zoo.
"""
from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time

import pytest
import torch
import torchvision

import fxtaylor
import tp_compare as tc

FAST = ["resnet18", "mobilenet_v2", "densenet121", "efficientnet_b0", "regnet_y_400mf", "googlenet"]
# Models whose differences from tp are the documented grouped-conv ones (and nothing else).
GROUPED = {"regnet_y_400mf"}

# Per side, at most this many differing groups get a dead-channel test in the zoo run (each
# test deep-copies, re-traces and runs the model twice; a RegNet-128GF has dozens).
ZOO_MAX_CHECKS = int(os.environ.get("TP_CROSSCHECK_MAX_CHECKS", "8"))


@pytest.fixture(autouse=True)
def _one_thread():
    """One intra-op thread: on a 2-core machine shared with other jobs, torch's spinning
    OpenMP threads slow these many small forward passes down ~4x; alone, 1 thread costs ~10%."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _size(name: str) -> int:
    return 299 if name == "inception_v3" else 224


BIG = 200_000_000  # parameters; above this, float32 (ViT-L/H, RegNet-Y-128GF: memory)


def _model(name: str, dtype=None):
    """Random weights, non-trivial norm statistics, eval mode, float64 unless the model is
    BIG (the dead-channel tests then resolve effects far below float32 noise: ``tp_compare.TOL``)."""
    # aux heads off: they run in train mode only, which fxtaylor's graph joins (tests/test_partial.py)
    # and torch-pruning's, built from an eval-mode forward, does not: like is compared with like
    kw = {"init_weights": True, "aux_logits": False} if name in ("googlenet", "inception_v3") else {}
    model = tc.randomize_norms(torchvision.models.get_model(name, weights=None, **kw))
    if dtype is None:
        dtype = torch.float32 if sum(p.numel() for p in model.parameters()) > BIG else torch.float64
    return model.to(dtype)


def _control(model, x, cmp, seed: int = 0) -> list[str]:
    """Both dead-channel tests must pass on a group both tools agree on: proves the harness
    tells a right group from a wrong one (a tp_dead that always failed would prove nothing)."""
    if not cmp.matching:
        return []
    rng = random.Random(seed)
    c = rng.choice(sorted(cmp.matching, key=tc.describe_group))
    gi, root = cmp.fx.prunable[c], cmp.tp.groups[c]
    g = cmp.fx.graph.groups[gi]
    if g.size < 2:
        return []
    ch = [rng.randrange(g.size)]
    # the same channel on tp's side: the root's output positions in fxtaylor's unit (units are
    # known to pair positions the same way on both sides, see Comparison.unit_mismatch)
    root_out = [m for m in g.members if m.name == root and m.role == "out"]
    tp_ch = sorted(p for m in root_out for p, k in zip(m.positions.tolist(), m.channels.tolist()) if k == ch[0])
    scale = tc.output_scale(model, x)
    fx, tp_ = tc.fx_dead(model, x, gi, ch, scale), tc.tp_dead(model, x, root, tp_ch, scale)
    out = []
    if not fx.passed:
        out.append(f"control: fxtaylor group {gi} (matches tp) channel {ch} fails the dead-channel test: {fx}")
    if not tp_.passed:
        out.append(f"control: tp group rooted at {root} channel {tp_ch} fails the dead-channel test: {tp_}")
    return out


def _fx_self_check(model, x, max_checks: int | None, seed: int = 0) -> list[str]:
    """Dead-channel test of random prunable fxtaylor groups; failures are marked 'FAILS'."""
    graph = fxtaylor.trace(model, x)
    rng = random.Random(seed)
    groups = graph.prunable_groups
    if max_checks is not None and len(groups) > max_checks:
        groups = sorted(rng.sample(groups, max_checks), key=lambda g: g.index)
    scale, out = tc.output_scale(model, x), []
    for g in groups:
        ch = [rng.randrange(g.size)]
        d = tc.fx_dead(model, x, g.index, ch, scale)
        out.append(f"fxtaylor group {g.index} channel {ch}: {'passes' if d.passed else 'FAILS'} ({d})")
    return out


def crosscheck(name: str, max_checks: int | None = None, tp_timeout: float | None = None) -> dict:
    """Compare, settle differences, run the control. Returns a JSON-able record."""
    t0 = time.perf_counter()
    model = _model(name)
    dtype = next(model.parameters()).dtype
    x = torch.randn(1, 3, _size(name), _size(name), dtype=dtype)
    rec = {"model": name, "dtype": str(dtype).replace("torch.", "")}
    try:
        cmp = tc.compare(model, x, tp_timeout=tp_timeout)
    except tc.ToolError as e:
        rec.update(status=f"{e.tool} error", error=str(e))
        if e.tool == "tp":  # nothing to compare with: fxtaylor's own dead-channel test at least
            rec["fx_self_check"] = _fx_self_check(model, x, max_checks)
        rec["seconds"] = round(time.perf_counter() - t0, 1)
        return rec
    verdicts = tc.resolve(model, x, cmp, max_groups=max_checks) if not cmp.equal or cmp.tp_frozen_by_fx else []
    control = _control(model, x, cmp)
    bad = [str(v) for v in verdicts if not v.ok]
    rec.update(
        matching=len(cmp.matching), only_fx=len(cmp.only_fx), only_tp=len(cmp.only_tp),
        frozen_by_fx=len(cmp.tp_frozen_by_fx), unit_mismatch=len(cmp.unit_mismatch),
        checked=len(verdicts), unexpected=bad, control=control,
        tp_groups_fx_freezes=sum(v.frozen_by_fx for v in verdicts),
        grouped_conv=tc.grouped_conv_difference(model, cmp) if not cmp.equal else None,
    )
    if cmp.unit_mismatch:
        status = "unit pairing differs"
    elif bad or control:
        status = "FAIL"
    elif cmp.equal and not cmp.tp_frozen_by_fx:
        status = "equal"
    else:
        status = "differs, fxtaylor right"
    rec["status"] = status
    rec["describe"] = tc.describe(cmp, limit=6)
    rec["verdicts"] = [str(v) for v in verdicts]
    rec["seconds"] = round(time.perf_counter() - t0, 1)
    return rec


def _assert_ok(rec: dict) -> None:
    msg = json.dumps({k: rec[k] for k in rec if k not in ("describe", "verdicts")}, indent=1)
    msg += "\n" + rec.get("describe", "") + "\n" + "\n".join(rec.get("verdicts", [])[:40])
    assert rec["status"] in ("equal", "differs, fxtaylor right"), msg


@pytest.mark.parametrize("name", FAST)
def test_fast_models_match_tp_or_fxtaylor_is_right(name):
    rec = crosscheck(name)
    _assert_ok(rec)
    if name in GROUPED:
        assert rec["status"] == "differs, fxtaylor right", rec["describe"]
        # every difference is a grouped conv: fxtaylor ties in/out/producer blocks into one
        # unit, tp splits them; tp's groups break the model (all of them were tested).
        assert rec["grouped_conv"] is None, rec["grouped_conv"]
        assert rec["checked"] == rec["only_fx"] + rec["only_tp"]
    else:
        assert rec["status"] == "equal", rec["describe"]


def test_tp_dead_detects_a_broken_group():
    """The tp-side dead test fails for a group that is wrong: tp's raw group of a grouped conv
    (RegNet) leaves an invalid model, and passes for a right one (ResNet-18)."""
    model = _model("resnet18", torch.float64)
    x = torch.randn(1, 3, 64, 64, dtype=torch.float64)
    assert tc.tp_dead(model, x, "layer1.0.conv1", [3]).passed
    assert tc.tp_dead(model, x, "layer2.0.conv2", [7]).passed  # residual group, with downsample
    reg = _model("regnet_y_400mf", torch.float64)
    d = tc.tp_dead(reg, x, "trunk_output.block1.block1-0.f.b.0", [5])
    assert not d.passed and d.error, d


def test_canonical_form_drops_depthwise_in_only():
    model = _model("mobilenet_v2", torch.float32)
    x = torch.randn(1, 3, 64, 64)
    cmp = tc.compare(model, x)
    dw = {n for n, m in model.named_modules() if tc.is_depthwise(m)}
    assert dw
    for side in (cmp.fx.prunable, cmp.tp.groups):
        entries = {(n, a) for c in side for n, a, _ in c}
        assert not {(n, "in") for n in dw} & entries
        assert {(n, "out") for n in dw} <= entries


# -- the whole zoo (slow) ---------------------------------------------------------------------

ZOO = torchvision.models.list_models(module=torchvision.models)
ZOO_TIMEOUT = int(os.environ.get("TP_CROSSCHECK_TIMEOUT", "900"))  # seconds per model
ZOO_MEMORY = int(os.environ.get("TP_CROSSCHECK_MEMORY_GB", "16"))  # data-segment limit per model


def _limit_memory():
    import resource

    lim = ZOO_MEMORY * 2**30
    resource.setrlimit(resource.RLIMIT_DATA, (lim, lim))


def _crosscheck_in_child(name: str) -> dict:
    """One model in a fresh process: memory comes back after each (RegNet-128GF, ViT-H in
    float64 with deep copies), a hang or an out-of-memory is a record, not a dead run."""
    cmd = [sys.executable, os.path.abspath(__file__), name]
    try:
        p = subprocess.run(
            cmd, capture_output=True, text=True, timeout=ZOO_TIMEOUT, preexec_fn=_limit_memory,
            cwd=os.path.dirname(os.path.abspath(__file__)),
        )
    except subprocess.TimeoutExpired:
        return {"model": name, "status": "harness error", "error": f"no result after {ZOO_TIMEOUT} s"}
    lines = [l for l in p.stdout.splitlines() if l.startswith("{")]
    if p.returncode == 0 and lines:
        return json.loads(lines[-1])
    tail = (p.stderr or "").strip().splitlines()[-3:]
    return {"model": name, "status": "harness error", "error": f"exit {p.returncode}: {' | '.join(tail)[:400]}"}


@pytest.mark.slow
@pytest.mark.parametrize("name", ZOO)
def test_zoo_matches_tp_or_fxtaylor_is_right(name):
    rec = _crosscheck_in_child(name)
    path = os.environ.get("TP_CROSSCHECK_REPORT")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps(rec) + "\n")
    if rec["status"] == "tp error":
        self_check = rec.get("fx_self_check", [])
        bad = [l for l in self_check if "FAILS" in l]
        assert not bad, "torch-pruning failed, and fxtaylor fails its own dead-channel test:\n" + "\n".join(bad)
        pytest.skip(f"torch-pruning failed: {rec['error']} (fxtaylor: {len(self_check)} random groups pass the dead-channel test)")
    assert rec["status"] not in ("fxtaylor error", "harness error"), rec["error"]
    _assert_ok(rec)


if __name__ == "__main__":  # one zoo model, JSON record on the last line (used by the slow test)
    import warnings

    warnings.filterwarnings("ignore")
    torch.manual_seed(0)
    torch.set_num_threads(int(os.environ.get("TP_CROSSCHECK_THREADS", "1")))
    print(json.dumps(crosscheck(sys.argv[1], max_checks=ZOO_MAX_CHECKS, tp_timeout=120)))
