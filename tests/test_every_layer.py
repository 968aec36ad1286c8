"""Transposed convs, GroupNorm, weight-standardised convs and normalisers over channels.

Transposed convs (1-D to 3-D, any groups) prune on both axes; GroupNorm prunes by whole groups;
both are exact, so every such group must pass the dead-channel test. Channels tied through a
normaliser whose statistics span them (LayerNorm over channels, GRN, softmax over channels,
weight standardisation) have no exact removal: frozen by default, pruned with ``exact=False``.
"""
import copy
import random
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision

import fxtaylor
from fxtaylor.graph.check import dead_channel_diff
from deadcheck import assert_dead_equivalent, randomize_norms

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))


def _randomize_affine(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial batch-norm statistics and GroupNorm/LayerNorm affine parameters."""
    randomize_norms(model, seed)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.GroupNorm, nn.LayerNorm)) and getattr(m, "weight", None) is not None:
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.rand(m.bias.shape, generator=g) * 2 - 1)
    return model.eval()


def _block(cin, cout, norm):
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), norm(cout), nn.ReLU())


class UNet(nn.Module):
    """A plain U-Net: conv blocks, transposed-conv upsampling, skip concatenations."""

    def __init__(self, c=8, groups=1, norm=nn.BatchNorm2d):
        super().__init__()
        self.e1, self.e2, self.mid = _block(3, c, norm), _block(c, 2 * c, norm), _block(2 * c, 4 * c, norm)
        self.up2 = nn.ConvTranspose2d(4 * c, 2 * c, 2, stride=2, groups=groups)
        self.d2 = _block(4 * c, 2 * c, norm)
        self.up1 = nn.ConvTranspose2d(2 * c, c, 3, stride=2, padding=1, output_padding=1)
        self.d1 = _block(2 * c, c, norm)
        self.head = nn.Conv2d(c, 2, 1)

    def forward(self, x):
        a = self.e1(x)
        b = self.e2(F.max_pool2d(a, 2))
        m = self.mid(F.max_pool2d(b, 2))
        u = self.d2(torch.cat([self.up2(m), b], 1))
        return self.head(self.d1(torch.cat([self.up1(u), a], 1)))


def _group_with(graph, name, role):
    g = graph.group_of(name, role)
    assert g is not None and g.prunable, f"{name}.{role}: {g}"
    return g


@pytest.mark.parametrize("groups", [1, 2])
def test_unet_transposed_convs_prune_on_both_axes_and_pass_the_dead_channel_test(groups):
    torch.manual_seed(0)
    model, x = _randomize_affine(UNet(groups=groups)), torch.randn(2, 3, 16, 16)
    graph = assert_dead_equivalent(model, x, n_channels=3)
    for name in ("up2", "up1"):
        _group_with(graph, name, "out")
        _group_with(graph, name, "in")
    assert all(not g.frozen for g in graph.groups[:-1]), graph.summary()  # only the head's output is frozen
    g = graph.group_of("up2", "out")
    before = model.up2.out_channels
    graph.prune(g, [0])
    per = 1 if groups == 1 else before // groups  # a grouped transposed conv loses a whole group
    assert model.up2.out_channels == before - per and model.up2.weight.shape[1] * model.up2.groups == model.up2.out_channels
    assert model(x).shape == (2, 2, 16, 16)


@pytest.mark.parametrize("dims,groups", [(1, 1), (1, 4), (3, 1), (3, 2)])
def test_transposed_convs_1d_and_3d_any_groups(dims, groups):
    conv, tconv, bn = [(nn.Conv1d, nn.ConvTranspose1d, nn.BatchNorm1d), (None, None, None),
                       (nn.Conv3d, nn.ConvTranspose3d, nn.BatchNorm3d)][dims - 1]
    torch.manual_seed(0)
    model = nn.Sequential(conv(3, 8, 3, padding=1), bn(8), nn.ReLU(), tconv(8, 8, 2, stride=2, groups=groups),
                          bn(8), nn.ReLU(), conv(8, 4, 1))
    x = torch.randn(2, 3, *([6] * dims))
    graph = assert_dead_equivalent(randomize_norms(model), x, n_channels=2)
    assert graph.group_of("3", "out").prunable and graph.group_of("0", "out").prunable


class FCN8(nn.Module):
    """FCN-8s-style upsampling: class scores at three strides, learned transposed-conv
    upsampling (grouped per class, as FCN's bilinear deconvs) and skip additions."""

    def __init__(self, classes=3):
        super().__init__()
        self.s1, self.s2, self.s3 = _block(3, 8, nn.BatchNorm2d), _block(8, 16, nn.BatchNorm2d), _block(16, 32, nn.BatchNorm2d)
        self.score3, self.score2, self.score1 = nn.Conv2d(32, classes, 1), nn.Conv2d(16, classes, 1), nn.Conv2d(8, classes, 1)
        self.up3 = nn.ConvTranspose2d(classes, classes, 4, stride=2, padding=1, groups=classes, bias=False)
        self.up2 = nn.ConvTranspose2d(classes, classes, 4, stride=2, padding=1, groups=classes, bias=False)
        self.mid = nn.ConvTranspose2d(32, 16, 2, stride=2)  # a feature upsampler whose both axes prune

    def forward(self, x):
        a = self.s1(x)
        b = self.s2(F.max_pool2d(a, 2))
        c = self.s3(F.max_pool2d(b, 2))
        s = self.up3(self.score3(c)) + self.score2(b + self.mid(c))
        return self.up2(s) + self.score1(a)


def test_fcn_style_upsampling_transposed_convs_are_prunable_and_exact():
    torch.manual_seed(0)
    model, x = randomize_norms(FCN8()), torch.randn(2, 3, 16, 16)
    graph = assert_dead_equivalent(model, x, n_channels=2)
    _group_with(graph, "mid", "out")
    _group_with(graph, "mid", "in")
    assert graph.group_of("up2", "out").frozen  # the class scores reach the output


def _detection(name):
    import zoo_gate

    torch.manual_seed(0)
    return zoo_gate.gate_model(zoo_gate.zoo.family_of(name), name, 96).eval(), zoo_gate.zoo.family_of(name)


@pytest.mark.parametrize("name,layer", [("maskrcnn_resnet50_fpn", "roi_heads.mask_predictor.conv5_mask"),
                                        ("keypointrcnn_resnet50_fpn", "roi_heads.keypoint_predictor.kps_score_lowres")])
def test_rcnn_transposed_conv_heads_prunable_and_dead_channel_exact(name, layer):
    import zoo

    model, fam = _detection(name)
    x = fam.inputs(name, 96, 1)
    graph = fxtaylor.trace(model, x)
    for role in ("in", "out") if name.startswith("mask") else ("in",):  # keypoint logits reach the output
        g = _group_with(graph, layer, role)
        chans = random.Random(0).sample(range(g.size), 3)
        dead = zoo.dead_channel_test(model, x, zoo.fx_kill, g.index, chans, fam.probes, "float64")
        assert dead.passed, f"{layer}.{role}: {dead}"


@pytest.mark.parametrize("name", ["fcos_resnet50_fpn", "retinanet_resnet50_fpn_v2"])
def test_groupnorm_detection_heads_prune_by_whole_groups_and_pass_the_dead_channel_test(name):
    import zoo

    model, fam = _detection(name)
    x = fam.inputs(name, 96, 1)
    graph = fxtaylor.trace(model, x)
    gn = [n for n, m in model.named_modules() if isinstance(m, nn.GroupNorm)]
    assert gn
    groups = {graph.group_of(n, "norm").index for n in gn}
    assert all(graph.groups[i].prunable for i in groups), [graph.groups[i] for i in groups]
    for i in sorted(groups)[:2]:
        g = graph.groups[i]
        chans = random.Random(i).sample(range(g.size), 2)
        dead = zoo.dead_channel_test(model, x, zoo.fx_kill, g.index, chans, fam.probes, "float64")
        assert dead.passed, f"group {g}: {dead}"


def test_groupnorm_resnet_whole_groups_go_and_num_groups_follows():
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None, num_classes=10, norm_layer=lambda c: nn.GroupNorm(c // 16, c))
    model, x = _randomize_affine(model), torch.randn(2, 3, 32, 32)
    graph = assert_dead_equivalent(model, x, n_channels=2)
    assert len(graph.prunable_groups) == len(graph.groups) - 1  # every group but the logits
    g = graph.group_of("layer1.0.conv1", "out")
    assert g.size == 64 // 16 and g.width == 16  # a unit is one GroupNorm group of 16 channels
    graph.prune(g, [1])
    bn = model.layer1[0].bn1
    assert (bn.num_channels, bn.num_groups, bn.weight.numel()) == (48, 3, 48)
    assert model(x).shape == (2, 10)


def test_groupnorm_with_one_group_spans_the_channels_so_is_inexact():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.GroupNorm(1, 8), nn.ReLU(), nn.Conv2d(8, 4, 1))
    x = torch.randn(1, 3, 8, 8)
    exact, inexact = fxtaylor.trace(model, x), fxtaylor.trace(model, x, exact=False)
    assert exact.group_of("0").frozen and "one group" in exact.group_of("0").frozen[0]
    g = inexact.group_of("0")
    assert g.prunable and g.inexact and g.size == 8 and "prunable (inexact)" in repr(g)
    inexact.prune(g, [0, 3])
    assert model[1].num_channels == 6 and model[1].num_groups == 1 and model(x).shape == (1, 4, 6, 6)


def _timm(name, **kw):
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    return timm.create_model(name, pretrained=False, num_classes=10, **kw).eval()


def test_standardised_conv_outputs_prune_exactly_inputs_only_inexactly():
    timm = pytest.importorskip("timm")
    from timm.layers import ScaledStdConv2d, StdConv2d

    model = nn.Sequential(ScaledStdConv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 6, 3), nn.ReLU(), StdConv2d(6, 4, 1))
    x = torch.randn(2, 3, 10, 10)
    graph = fxtaylor.trace(model, x)
    first = graph.group_of("0")
    assert first.prunable and not first.inexact  # read by a plain conv: exact
    assert_dead_equivalent(model, x, groups=[first.index], n_channels=3)
    second = graph.group_of("2")
    assert second.frozen and "weight standardised" in second.frozen[0]  # read by a StdConv2d
    inexact = fxtaylor.trace(model, x, exact=False)
    g = inexact.group_of("2")
    assert g.prunable and g.min_keep == 2  # a 1×1 standardised conv needs two inputs
    inexact.prune(g, list(range(g.size - 2)))
    inexact.prune(inexact.group_of("0"), [0])
    assert model[0].gain.shape[0] == 7 and model[4].in_channels == 2
    model.train()(x).sum().backward()  # standardisation in training mode still has 2 values per row


def test_weight_criterion_reads_the_weight_axis_from_the_spec():
    timm = pytest.importorskip("timm")
    from timm.layers import ScaledStdConv2d

    torch.manual_seed(0)
    model = nn.Sequential(nn.ConvTranspose2d(3, 6, 2, stride=2, groups=3), nn.ReLU(),
                          ScaledStdConv2d(6, 5, 1), nn.ReLU(), nn.Conv2d(5, 2, 1))
    x = torch.randn(1, 3, 4, 4)
    imp = fxtaylor.WeightImportance(model, x, exact=False)
    scores = imp.unit_scores()
    w = model[0].weight  # [in=3, out/groups=2, 2, 2]: output o is column o % 2 of group o // 2's row
    want = torch.stack([w[o // 2, o % 2].pow(2).mean() for o in range(6)]).double()
    # (the input image carries no channels, so here each output is its own unit)
    got = scores[imp.graph.unit_maps[("0", "out")]]
    assert torch.allclose(got, want, rtol=1e-6)
    applied = fxtaylor.graph.ops.weight_of(model[2])  # standardised: zero mean per output row
    got = scores[imp.graph.unit_maps[("2", "out")]]
    assert torch.allclose(got, applied.detach().pow(2).flatten(1).mean(1).double(), rtol=1e-6)
    assert applied.flatten(1).mean(1).abs().max() < 1e-5


def test_taylor_criterion_observes_a_unet_with_transposed_convs():
    torch.manual_seed(0)
    model, x = UNet(), torch.randn(2, 3, 16, 16)
    imp = fxtaylor.TaylorImportance(model, x[:1])
    with imp.observe():
        model(x).pow(2).mean().backward()
    s = imp.unit_scores()
    for name in ("up1", "up2"):
        assert bool((s[imp.graph.unit_maps[(name, "out")]] > 0).all())


@pytest.mark.parametrize("build", ["tv_convnext", "convnext_atto", "convnextv2_atto", "nf_resnet26"])
def test_inexact_opt_in_opens_normaliser_groups_reaches_0_7_of_the_flops_and_trains_on(build):
    if build == "tv_convnext":
        torch.manual_seed(0)
        cfg = torchvision.models.convnext.CNBlockConfig
        model = torchvision.models.ConvNeXt([cfg(16, 32, 1), cfg(32, None, 1)], num_classes=10).eval()
    else:
        model = _timm(build)
    x = torch.randn(2, 3, 64, 64)
    exact, inexact = fxtaylor.trace(model, x[:1]), fxtaylor.trace(model, x[:1], exact=False)
    assert [g.units.numel() for g in exact.groups] == [g.units.numel() for g in inexact.groups]  # same groups
    opened = [g for g in inexact.prunable_groups if g.inexact]
    assert opened and all(g.frozen for g in exact.groups if g.inexact)
    share = [fxtaylor.cost.FlopsCost().sync(g, x[:1]).reachable() for g in (exact, inexact)]
    assert share[1] > share[0] and share[1] > 0.3
    pruner = fxtaylor.Pruner(model, x[:1], target_flops=0.7, flops_per_prune=0.3, exact=False, progress=False)
    model.train()
    with pruner.observe():
        F.cross_entropy(model(x), torch.tensor([1, 2])).backward()
    model.zero_grad()
    assert pruner.step() and pruner.done
    assert pruner.imp.total_flops() / pruner.flops0 <= 0.7 * 1.001
    loss = F.cross_entropy(model.train()(x), torch.tensor([1, 2]))
    loss.backward()
    assert torch.isfinite(loss) and all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_layernorm2d_cut_as_free_parameters_keeps_its_normalized_shape():
    cfg = torchvision.models.convnext.CNBlockConfig
    torch.manual_seed(0)
    model = torchvision.models.ConvNeXt([cfg(16, 32, 1), cfg(32, None, 1)], num_classes=10).eval()
    x = torch.randn(1, 3, 32, 32)
    graph = fxtaylor.trace(model, x, exact=False)
    stem = graph.group_of("features.0.0")
    graph.prune(stem, [0, 1, 2])
    assert model.features[0][1].normalized_shape == (13,) and model.features[0][1].weight.shape == (13,)
    assert model(x).shape == (1, 10)


def test_exact_false_is_refused_where_it_opens_nothing_and_a_bad_value_is_refused():
    model, x = torchvision.models.resnet18(weights=None, num_classes=10), torch.randn(1, 3, 32, 32)
    state = copy.deepcopy(model.state_dict())
    with pytest.raises(fxtaylor.FxTaylorError, match="changes nothing on this model"):
        fxtaylor.Pruner(model, x, target_flops=0.7, exact=False, progress=False)
    for bad in ("no", 0, None):
        with pytest.raises(fxtaylor.FxTaylorError, match="exact must be True or False"):
            fxtaylor.trace(model, x, exact=bad)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())


def test_inexact_run_saves_and_loads_by_replaying_the_same_mode(tmp_path):
    cfg = torchvision.models.convnext.CNBlockConfig
    torch.manual_seed(0)
    build = lambda: torchvision.models.ConvNeXt([cfg(16, 32, 1), cfg(32, None, 1)], num_classes=4)
    model = build()
    x = torch.randn(8, 3, 32, 32)
    loader = [(x[i:i + 4], torch.randint(0, 4, (4,))) for i in (0, 4)]
    result = fxtaylor.prune(model, loader, target_flops=0.6, exact=False, updates_between_prunes=1,
                            flops_per_prune=0.2, measure_latency=False, progress=False)
    assert result.arch["trace"]["exact"] is False
    result.save(tmp_path / "m.pt")
    back = fxtaylor.load(tmp_path / "m.pt", base=build())
    model.eval(), back.eval()
    with torch.no_grad():
        assert torch.allclose(back(x), model(x))


def test_inspect_prints_the_reachable_share_exact_and_inexact(capsys):
    from fxtaylor.cli import main

    assert main(["inspect", "--model", "convnext_tiny", "--input-size", "32"]) == 0
    out = capsys.readouterr().out
    assert "reachable: pruning can remove" in out and "with --inexact" in out
    assert main(["inspect", "--model", "resnet18", "--input-size", "32"]) == 0
    assert "--inexact opens nothing here" in capsys.readouterr().out


def test_a_flops_target_below_the_reachable_share_is_refused_naming_it():
    cfg = torchvision.models.convnext.CNBlockConfig
    model = torchvision.models.ConvNeXt([cfg(16, 32, 1), cfg(32, None, 1)], num_classes=10)
    x = torch.randn(1, 3, 32, 32)
    least = 1 - fxtaylor.cost.FlopsCost().sync(fxtaylor.trace(model, x), x).reachable()
    with pytest.raises(fxtaylor.FxTaylorError, match="cannot be reached"):
        fxtaylor.Pruner(model, x, target_flops=least * 0.9, progress=False)
    fxtaylor.Pruner(model, x, target_flops=least * 0.9, exact=False, progress=False)  # the opt-in reaches it


class _FunctionalGroupNorm(nn.GroupNorm):
    """A GroupNorm subclass with its own forward (as timm's): traced into, F.group_norm."""

    def forward(self, x):
        return F.group_norm(x, self.num_groups, self.weight, self.bias, self.eps)


def test_f_group_norm_in_a_subclass_ties_its_parameters_and_prunes_whole_groups():
    torch.manual_seed(0)
    model = _randomize_affine(nn.Sequential(nn.Conv2d(3, 8, 3), _FunctionalGroupNorm(4, 8), nn.ReLU(), nn.Conv2d(8, 4, 1)))
    x = torch.randn(2, 3, 8, 8)
    graph = assert_dead_equivalent(model, x, n_channels=2)
    g = graph.group_of("0")
    assert g.size == 4 and g.width == 2
    graph.prune(g, [0, 2])
    assert (model[1].num_channels, model[1].num_groups, model[1].weight.numel()) == (4, 2, 4)
    assert model(x).shape == (2, 4, 6, 6)


def test_latency_layer_specs_rebuild_transposed_convs_and_groupnorms_at_other_widths():
    from fxtaylor.latency.layers import find

    model = UNet(norm=lambda c: nn.GroupNorm(c // 4, c)).eval()
    specs, skipped = find(model, torch.randn(1, 3, 16, 16), None)
    assert not skipped
    by = {s.name: s for s in specs}
    up = by["up1"]
    assert up.config["transposed"] and (up.cin0, up.cout0) == (16, 8)
    new, shape = up.build(8, 4)
    assert isinstance(new, nn.ConvTranspose2d) and new(torch.randn(shape)).shape == (1, 4, 16, 16)  # output_padding kept
    gn = by["d1.1"]
    assert gn.step == 4  # whole groups of 4 channels go
    new, shape = gn.build(4, 4)
    assert (new.num_groups, new.num_channels) == (1, 4) and new(torch.randn(shape)).shape == shape


def test_rms_norm_over_channels_is_inexact_and_its_weight_follows():
    class Net(nn.Module):
        def __init__(self, functional):
            super().__init__()
            self.functional, self.c, self.n, self.fc = functional, nn.Conv2d(3, 8, 3), nn.RMSNorm(8), nn.Linear(8, 2)

        def forward(self, x):
            y = self.c(x).permute(0, 2, 3, 1)
            y = F.rms_norm(y, self.n.normalized_shape, self.n.weight) if self.functional else self.n(y)
            return self.fc(y)

    x = torch.randn(1, 3, 8, 8)
    for functional in (False, True):
        model = Net(functional)
        assert fxtaylor.trace(model, x).group_of("c").frozen
        graph = fxtaylor.trace(model, x, exact=False)
        graph.prune(graph.group_of("c"), [0, 5])
        assert model.n.normalized_shape == (6,) and model.n.weight.shape == (6,) and model(x).shape == (1, 6, 6, 2)


def test_inspect_with_a_latency_table_prints_the_latency_share(tmp_path, capsys):
    import shutil

    from fxtaylor.cli import main
    from fxtaylor.latency import Deployment, LatencyModel

    model, x = torchvision.models.resnet18(weights=None), torch.randn(1, 3, 32, 32)  # what inspect builds
    layers = list(fxtaylor.trace(model, x).module_io())
    LatencyModel.build(model, x, Deployment(threads=1), layers=layers, cache_dir=tmp_path / "cache", progress=False)
    shutil.copytree(next((tmp_path / "cache").iterdir()), tmp_path / "table")
    assert main(["inspect", "--model", "resnet18", "--input-size", "32", "--latency-table", str(tmp_path / "table")]) == 0
    line = next(l for l in capsys.readouterr().out.splitlines() if l.startswith("reachable:"))
    assert "of the FLOPs and" in line and "of the latency (predicted)" in line


def _folder(root, classes=("a", "b"), per_class=3):
    from PIL import Image

    for split in ("train", "val"):
        for c in classes:
            (root / split / c).mkdir(parents=True)
            for i in range(per_class):
                Image.new("RGB", (32, 32), (40 * i, 100, 200)).save(root / split / c / f"{i}.png")
    return root


def test_cli_inexact_prunes_a_convnext_and_is_refused_on_a_resnet_writing_nothing(tmp_path, capsys):
    from fxtaylor.cli import main

    data = _folder(tmp_path / "data")
    common = ["prune", "--data", str(data), "--input-size", "32", "--batch-size", "2", "--workers", "0", "--target-flops",
              "0.8", "--updates-between-prunes", "1", "--no-progress", "--inexact"]
    assert main([*common, "--model", "resnet18", "--out", str(tmp_path / "r")]) == 2
    assert "exact=False changes nothing on this model" in capsys.readouterr().err and not (tmp_path / "r").exists()
    assert main([*common, "--model", "convnext_tiny", "--flops-per-prune", "0.2", "--out", str(tmp_path / "c")]) == 0
    arch = torch.load(tmp_path / "c" / "model.pt", weights_only=True)["arch"]
    assert arch["trace"]["exact"] is False
    model = fxtaylor.load(tmp_path / "c" / "model.pt")  # replays the inexact graph
    dense = torchvision.models.convnext_tiny(weights=None, num_classes=2)
    assert sum(p.numel() for p in model.parameters()) < sum(p.numel() for p in dense.parameters())
