"""fxtaylor's channel groups against torch-pruning's DependencyGraph, on torchvision models.

The two must agree group for group (canonical form: see ``tp_compare``), except where they
differ by design; every difference is settled with the dead-channel test: the fxtaylor-only
group must pass it (pruned through fxtaylor) and the tp-only group must fail it (pruned through
tp). Any other outcome, including "both pass", fails the test with a readable diff.

Fast subset by default; ``-m slow`` runs the whole torchvision classification zoo.
"""
from __future__ import annotations

import gc
import json
import os
import random
import time

import pytest
import torch
import torchvision

import tp_compare as tc

FAST = ["resnet18", "mobilenet_v2", "densenet121", "efficientnet_b0", "regnet_y_400mf", "googlenet"]
# Models whose differences from tp are the documented grouped-conv ones (and nothing else).
GROUPED = {"regnet_y_400mf"}

# Per side, at most this many differing groups get a dead-channel test in the zoo run (each
# test deep-copies, re-traces and runs the model twice; a RegNet-128GF has dozens).
ZOO_MAX_CHECKS = int(os.environ.get("TP_CROSSCHECK_MAX_CHECKS", "8"))


def _size(name: str) -> int:
    return 299 if name == "inception_v3" else 224


def _model(name: str):
    kw = {"init_weights": True} if name in ("googlenet", "inception_v3") else {}  # silences a warning
    return tc.randomize_norms(torchvision.models.get_model(name, weights=None, **kw))


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
    fx, tp_ = tc.fx_dead(model, x, gi, ch), tc.tp_dead(model, x, root, tp_ch)
    out = []
    if not fx.passed:
        out.append(f"control: fxtaylor group {gi} (matches tp) channel {ch} fails the dead-channel test: {fx}")
    if not tp_.passed:
        out.append(f"control: tp group rooted at {root} channel {tp_ch} fails the dead-channel test: {tp_}")
    return out


def crosscheck(name: str, max_checks: int | None = None) -> dict:
    """Compare, settle differences, run the control. Returns a JSON-able record."""
    t0 = time.perf_counter()
    model = _model(name)
    x = torch.randn(1, 3, _size(name), _size(name))
    rec = {"model": name}
    try:
        cmp = tc.compare(model, x)
    except Exception as e:  # tell tp's crashes from fxtaylor's
        import traceback

        tb = traceback.extract_tb(e.__traceback__)
        where = "tp" if any("torch_pruning" in f.filename for f in tb) else "fxtaylor"
        rec.update(status=f"{where} error", error=f"{type(e).__name__}: {str(e)[:300]}")
        return rec
    verdicts = tc.resolve(model, x, cmp, max_groups=max_checks) if not cmp.equal or cmp.tp_frozen_by_fx else []
    control = _control(model, x, cmp)
    bad = [str(v) for v in verdicts if not v.ok]
    rec.update(
        matching=len(cmp.matching), only_fx=len(cmp.only_fx), only_tp=len(cmp.only_tp),
        frozen_by_fx=len(cmp.tp_frozen_by_fx), unit_mismatch=len(cmp.unit_mismatch),
        checked=len(verdicts), unexpected=bad, control=control,
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
    model = _model("resnet18")
    x = torch.randn(1, 3, 64, 64)
    assert tc.tp_dead(model, x, "layer1.0.conv1", [3]).passed
    assert tc.tp_dead(model, x, "layer2.0.conv2", [7]).passed  # residual group, with downsample
    reg = _model("regnet_y_400mf")
    d = tc.tp_dead(reg, x, "trunk_output.block1.block1-0.f.b.0", [5])
    assert not d.passed and d.error, d


def test_canonical_form_drops_depthwise_in_only():
    model = _model("mobilenet_v2")
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


@pytest.mark.slow
@pytest.mark.parametrize("name", ZOO)
def test_zoo_matches_tp_or_fxtaylor_is_right(name):
    try:
        rec = crosscheck(name, max_checks=ZOO_MAX_CHECKS)
    finally:
        gc.collect()
    path = os.environ.get("TP_CROSSCHECK_REPORT")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps(rec) + "\n")
    if rec["status"] == "tp error":
        pytest.skip(f"torch-pruning crashed: {rec['error']}")
    assert rec["status"] != "fxtaylor error", rec["error"]
    _assert_ok(rec)
