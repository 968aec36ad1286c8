"""The zoo runner (benchmarks/zoo.py) on one model per CNN family at a small input: fxtaylor
prunes each to 70 % of its FLOPs with the Taylor criterion, output intact, dead-channel test
passed. The full zoo (all 80 models, torch-pruning beside) is `python benchmarks/zoo.py`."""
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import zoo  # noqa: E402

FAMILIES = ["resnet18", "resnext50_32x4d", "vgg11", "squeezenet1_0", "densenet121", "googlenet", "mobilenet_v2",
            "mobilenet_v3_small", "mnasnet0_5", "shufflenet_v2_x0_5", "efficientnet_b0", "regnet_y_400mf"]


@pytest.mark.parametrize("name", FAMILIES)
def test_family_prunes_end_to_end(name):
    row = zoo.fxtaylor_row(name, size=64)
    assert row["status"] == "pass", row
    assert 0.7 * 0.99 <= row["flops_after"] / row["flops_before"] <= 0.7 * 1.01
    assert row["params_after"] < row["params_before"] and row["dead_channel_rel"] <= 1e-4


def test_isolated_child_reports_a_row_and_its_failures():
    ok = zoo.isolated("fxtaylor_row", "squeezenet1_0", 64, timeout=300)
    assert ok["status"] == "pass" and ok["peak_mib"] > 0
    bad = zoo.isolated("fxtaylor_row", "no_such_model", 64, timeout=300)
    assert bad["status"] == "fail" and "no_such_model" in bad["reason"]


# timm (a dev extra): ops torchvision lacks. BatchNormAct2d and timm's Linear are traced as the
# torch.nn modules they subclass (fxtaylor.graph.rules.KNOWN_LEAVES); CSPNet splits channels.
@pytest.mark.parametrize("name", ["efficientnet_b0", "mobilenetv3_large_100", "cspresnet50"])
def test_timm_model_prunes_end_to_end(name):
    pytest.importorskip("timm")
    row = zoo.fxtaylor_row("timm/" + name, size=64)
    assert row["status"] == "pass", row
    assert row["prunable_groups"] >= 10 and row["dead_channel_rel"] <= 1e-5


def test_known_leaf_only_when_its_extra_parts_are_channel_agnostic():
    timm = pytest.importorskip("timm")
    import torch.nn as nn

    from fxtaylor.graph.rules import known_leaf

    assert known_leaf(timm.layers.BatchNormAct2d(8))  # BN + ReLU
    assert not known_leaf(timm.layers.BatchNormAct2d(8, act_layer=nn.PReLU))  # weights per channel: traced into
