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

    from fxtaylor.graph.ops import known_leaf

    assert known_leaf(timm.layers.BatchNormAct2d(8))  # BN + ReLU
    assert not known_leaf(timm.layers.BatchNormAct2d(8, act_layer=nn.PReLU))  # weights per channel: traced into


# The timm survey (--timm): one model per timm module, selected on the meta device; what freezes
# channels aggregated over the fxtaylor rows.
def test_timm_selection_picks_the_smallest_model_of_a_module():
    timm = pytest.importorskip("timm")
    sel = zoo.select_timm(["densenet", "convit"], log=lambda *_: None)
    assert sel["densenet"]["model"] == "densenet121" and sel["densenet"]["cnn"] is True
    assert sel["convit"]["model"] == "convit_tiny" and sel["convit"]["cnn"] is False
    sizes = {n: sum(p.numel() for p in zoo.meta_build(n).parameters()) for n in timm.list_models(module="convit")}
    assert sel["convit"]["params"] == min(sizes.values()) and sel["convit"]["size"] == 224


def test_timm_selection_checked_in_covers_every_module():
    timm = pytest.importorskip("timm")
    data = __import__("json").loads(zoo.TIMM_MODELS.read_text())
    if data["timm"] != timm.__version__:
        pytest.skip(f"selection made with timm {data['timm']}, installed {timm.__version__}")
    assert set(data["modules"]) == set(timm.list_modules())
    assert zoo.timm_names() == ["timm/" + e["model"] for _, e in sorted(data["modules"].items()) if e["model"]]
    assert zoo.family_of(zoo.timm_names()[0]).name == "classification"


def test_frozen_reasons_name_the_op_and_the_kind():
    from types import SimpleNamespace as G

    from torch import nn

    model = nn.Sequential(nn.Conv2d(3, 8, 1), nn.LayerNorm(8))
    groups = [G(frozen=["1: layer norm over these channels (removing one changes the statistics of the others)"]),
              G(frozen=["add: combined with a tensor that carries no prunable channels", "more"]),
              G(frozen=["add: combined with a tensor that carries no prunable channels"]),
              G(frozen=["no channel rule for roi_align"]), G(frozen=["reaches the model output"]), G(frozen=[])]
    assert zoo.frozen_reasons(groups, model) == {"add: added to a frozen tensor": 2, "LayerNorm: layer norm over channels": 1,
                                                 "roi_align: no channel rule": 1, "output: classifier output": 1}
    assert zoo.frozen_summary(groups) == "2 added to a frozen tensor, 1 layer norm over channels, 1 no rule for roi_align, 1 classifier output"
    glue = [G(frozen=["mul in blocks.0.attn (not traced, see graph.partial): channels broadcast or mixed with other dims"]),
            G(frozen=["no channel rule for chunk in blocks.1 (not traced, see graph.partial)"])]
    assert zoo.frozen_reasons(glue, model) == {"mul: mixed with other dims (untraced code)": 1, "chunk: no channel rule (untraced code)": 1}


def test_timm_aggregate_counts_freezing_ops_and_cnns_short_of_the_target():
    sel = {"a": {"model": "a1", "cnn": True}, "b": {"model": "b1", "cnn": True}, "c": {"model": "c1", "cnn": False},
           "d": {"model": None}}
    rows = {"timm/a1": {"fxtaylor": {"status": "pass", "frozen_reasons": {"output: classifier output": 1, "getitem: fixed channel index": 3}}},
            "timm/b1": {"fxtaylor": {"status": "fail", "reason": "FLOPs 0.800 of the original, target 0.7",
                                     "frozen_reasons": {"output: classifier output": 1, "LayerNorm: layer norm over channels": 2}}},
            "timm/c1": {"fxtaylor": {"status": "frozen", "reason": "no prunable group",
                                     "frozen": "4 layer norm over channels, 1 classifier output"}},  # a row stored before frozen_reasons
            "other": {"fxtaylor": {"status": "pass"}}}
    agg = zoo.timm_aggregate(rows, sel)
    assert agg["freezing"]["output: classifier output"] == {"models": 2, "cnn_models": 2, "groups": 2}
    assert agg["freezing"]["?: layer norm over channels"] == {"models": 1, "cnn_models": 0, "groups": 4}
    assert agg["reached"] == {"a": None, "b": "FLOPs 0.800 of the original, target 0.7", "c": "no prunable group"}
    assert agg["cnn_not_reached"] == {"b": "FLOPs 0.800 of the original, target 0.7"}
    assert zoo.timm_names(sel) == ["timm/a1", "timm/b1", "timm/c1"]
