"""The zoo runner (benchmarks/zoo.py) on one model per CNN family at a small input: fxtaylor
prunes each to 70 % of its FLOPs with the Taylor criterion, output intact, dead-channel test
passed; and one model of each other torchvision family (detection, segmentation, video, optical
flow) with its own inputs and training loss. The full zoo (all 109 models, torch-pruning beside)
is `python benchmarks/zoo.py --all`."""
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


# One model per other family, small inputs (each < 15 s on one thread): partial tracing
# (Faster R-CNN, RAFT), the family's loss observed, the dead-channel test on one group per region
# (detection in float64 on the final boxes/scores and the RPN head's and box predictor's outputs),
# the output structure kept.
OTHER = {"fasterrcnn_mobilenet_v3_large_320_fpn": (128, {"backbone.body", "backbone.fpn", "rpn.head", "roi_heads.box_head"}),
         "lraspp_mobilenet_v3_large": (64, {"backbone", "classifier"}),
         "r3d_18": (32, set()),
         "raft_small": (128, {"feature_encoder", "context_encoder", "update_block"})}


@pytest.mark.parametrize("name", OTHER)
def test_other_family_prunes_end_to_end(name):
    size, regions = OTHER[name]
    row = zoo.fxtaylor_row(name, size=size)
    assert row["status"] == "pass", row
    assert row["family"] == zoo.family_of(name).name != "classification"
    assert 0.7 * 0.99 <= row["flops_after"] / row["flops_before"] <= 0.7 * 1.01
    assert row["params_after"] < row["params_before"]
    # every region's group tested (detection: backbone, FPN and heads all prunable)
    assert set(row["dead_regions"]) == regions and row["dead_groups"] == max(len(regions), 1)
    assert row["dead_channel_rel"] <= (1e-9 if row["family"] == "detection" else 1e-5)


def test_structure_ignores_detection_counts_only():
    import torch

    five = [{"boxes": torch.zeros(5, 4), "scores": torch.zeros(5)}]
    assert zoo.structure(five) == zoo.structure([{"boxes": torch.zeros(2, 4), "scores": torch.zeros(2)}])
    assert zoo.structure(five) != zoo.structure([{"boxes": torch.zeros(5, 4)}])  # a key lost
    assert zoo.structure(torch.zeros(1, 1000)) != zoo.structure(torch.zeros(1, 999))  # a class lost
    assert zoo.structure([torch.zeros(1, 2, 8, 8)] * 12) != zoo.structure([torch.zeros(1, 2, 8, 8)] * 11)


def test_every_torchvision_model_has_one_family():
    import torchvision

    names = [n for f in zoo.FAMILIES.values() for n in f.models()]
    quantized = torchvision.models.list_models(module=torchvision.models.quantization)  # int8 copies, not zoo rows
    assert len(names) == len(set(names)) == 109
    assert set(names) == set(torchvision.models.list_models()) - set(quantized)
    assert zoo.family_of("raft_small").name == "optical_flow" and zoo.family_of("timm/dla34").name == "classification"


def test_isolated_child_reports_a_row_and_its_failures():
    ok = zoo.isolated("fxtaylor_row", "squeezenet1_0", 64, timeout=300)
    assert ok["status"] == "pass" and ok["peak_mib"] > 0
    bad = zoo.isolated("fxtaylor_row", "no_such_model", 64, timeout=300)
    assert bad["status"] == "fail" and "no_such_model" in bad["reason"]


# timm (a dev extra): ops torchvision lacks. BatchNormAct2d and timm's Linear are traced as the
# torch.nn modules they subclass (rows of fxtaylor.graph.ops.SPECS); CSPNet splits channels.
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
