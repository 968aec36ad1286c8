"""The zoo gate (benchmarks/zoo_gate.py): every torchvision model and the gate's timm list,
re-checked on every change, one test per model (``pytest -k maxvit_t``).

Each model is traced (both modes where they differ), passes the dead-channel test on a random
prunable group per region, takes one real cut through ``fxtaylor.Pruner``, then trains one step
and runs in eval mode with its output structure unchanged; its numbers (groups, prunable groups
and channels, frozen groups by kind) must match the checked-in table ``tests/zoo_gate.json``.
A model that loses prunable groups or channels fails; one that gains some is reported as a
warning: regenerate the table deliberately with ``python benchmarks/zoo_gate.py --write``.

The rows of the selected models are computed once, by two worker processes (one per core),
when the first gate test runs.
"""
import sys
import warnings
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import zoo_gate  # noqa: E402

NAMES = zoo_gate.models()
EXPECTED = zoo_gate.expected()


class ZooGain(UserWarning):
    """A model gained prunable channels: regenerate tests/zoo_gate.json."""


@pytest.fixture(scope="session")
def gate_rows(request):
    """Rows of every gate model selected in this session, computed in parallel up front."""
    selected = [item.callspec.params["name"] for item in request.session.items
                if getattr(item, "originalname", None) == "test_zoo_gate"]
    timm = [n for n in selected if n.startswith("timm/")]
    if timm:
        try:
            import timm as _  # noqa: F401
        except ImportError:
            selected = [n for n in selected if n not in timm]
    return zoo_gate.run(selected)


@pytest.mark.parametrize("name", NAMES)
def test_zoo_gate(name, gate_rows):
    if name.startswith("timm/"):
        pytest.importorskip("timm")
    row = gate_rows[name]
    fails, gains = zoo_gate.compare(row, EXPECTED.get(name))
    if gains and not fails:
        warnings.warn(ZooGain(f"{name}: {'; '.join(gains)} — regenerate tests/zoo_gate.json "
                              "(python benchmarks/zoo_gate.py --write)"))
    assert not fails, f"{name}: " + "; ".join(fails + gains)


def test_the_gate_covers_every_torchvision_model_and_the_table_every_gate_model():
    import torchvision

    quantized = set(torchvision.models.list_models(module=torchvision.models.quantization))
    assert set(torchvision.models.list_models()) - quantized <= set(NAMES)
    assert set(EXPECTED) == set(NAMES), "regenerate tests/zoo_gate.json (python benchmarks/zoo_gate.py --write)"


def _row(**kw):
    row = {"status": "pass", "groups": 10, "prunable_groups": 8, "prunable_channels": 100, "frozen": {"output": 2}}
    return row | kw


def test_compare_fails_on_lost_groups_and_failed_checks_and_reports_gains():
    want = _row()
    assert zoo_gate.compare(_row(), want) == ([], [])
    fails, _ = zoo_gate.compare(_row(prunable_groups=7, groups=10, frozen={"output": 3}), want)
    assert "prunable_groups 8 -> 7" in fails and any(f.startswith("frozen") for f in fails)
    fails, _ = zoo_gate.compare(_row(prunable_channels=99), want)
    assert fails == ["prunable_channels 100 -> 99"]
    fails, _ = zoo_gate.compare({"status": "fail", "reason": "TraceError: boom"}, want)
    assert fails == ["fail: TraceError: boom"]
    fails, gains = zoo_gate.compare(_row(prunable_groups=9, prunable_channels=120, groups=11, frozen={"output": 2}), want)
    assert not fails and "prunable_groups 8 -> 9" in gains and "groups 10 -> 11" in gains
    fails, gains = zoo_gate.compare(_row(), None)
    assert not fails and gains == ["not in tests/zoo_gate.json yet"]


def test_a_broken_rule_fails_the_gate_naming_the_loss(monkeypatch):
    """The gate can fail: ``torch.cat`` made to freeze its inputs costs SqueezeNet its Fire
    modules' expand groups, and the comparison names the loss."""
    import torch

    from fxtaylor.graph import ops, rules

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    good = zoo_gate.gate_row("squeezenet1_0")
    assert zoo_gate.compare(good, EXPECTED["squeezenet1_0"]) == ([], [])
    monkeypatch.setitem(ops.FUNCTION_RULES, torch.cat, rules.frozen("cat (deliberately broken)"))
    broken = zoo_gate.gate_row("squeezenet1_0")
    fails, _ = zoo_gate.compare(broken, EXPECTED["squeezenet1_0"])
    assert any(f.startswith("prunable_groups") for f in fails), fails
