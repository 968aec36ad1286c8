"""The op specs (fxtaylor/graph/ops.py): one row per module kind, found through the class
hierarchy; the coverage it adds (Conv3d subclasses, FrozenBatchNorm2d); the selections."""
import copy
import random

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision
from torchvision.models.video.resnet import Conv3DNoTemporal, Conv3DSimple
from torchvision.ops.misc import FrozenBatchNorm2d

import fxtaylor
from fxtaylor import flops
from fxtaylor.cost import FlopsCost
from fxtaylor.cost.base import DENSE, Layers
from fxtaylor.errors import FxTaylorError
from fxtaylor.graph import ops, rules, surgery
from fxtaylor.pruner import inputs, measure

from deadcheck import assert_dead_equivalent, randomize_norms

X = torch.randn(1, 3, 32, 32)
VIDEO = torch.randn(1, 3, 4, 32, 32)


def cbr(cin, cout):
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU())


# -- lookup ------------------------------------------------------------------------------------


class PlainConv(nn.Conv2d):  # keeps Conv2d's forward: is a Conv2d
    pass


class StdConv(nn.Conv2d):  # weight standardisation: its own forward, not a plain conv
    def forward(self, x):
        w = self.weight - self.weight.mean((1, 2, 3), keepdim=True)
        return F.conv2d(x, w, self.bias, self.stride, self.padding)


class SubStdConv(StdConv):
    pass


def test_subclass_that_keeps_forward_takes_its_base_spec():
    assert ops.spec_of(PlainConv(3, 4, 3)) is ops.SPECS[nn.Conv2d]
    assert ops.registered_type(PlainConv(3, 4, 3)) is nn.Conv2d
    # torchvision's video convs: nn.Conv3d subclasses outside torch.nn (fx traced into them)
    for m in (Conv3DSimple(3, 4), Conv3DNoTemporal(3, 4)):
        assert ops.spec_of(m) is ops.SPECS[nn.Conv3d] and ops.lookup_module(m) is rules.conv


def test_subclass_that_overrides_forward_has_no_spec_and_is_traced_into():
    assert ops.spec_of(StdConv(3, 4, 3)) is None and ops.spec_of(SubStdConv(3, 4, 3)) is None
    assert ops.lookup_module(StdConv(3, 4, 3)) is None  # the MRO lookup gave it conv's rule
    model = nn.Sequential(cbr(3, 8), StdConv(8, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.Conv2d(6, 4, 1))
    with pytest.warns(UserWarning, match="no channel rule for: conv2d"):
        graph = fxtaylor.trace(model, X)
    assert graph.group_of("1") is None  # traced into: not a module call, no space of its own
    assert "no channel rule for conv2d" in graph.group_of("0.0").frozen


def test_registered_subclass_gets_its_own_spec_and_changes_clear_the_cache(monkeypatch):
    m = StdConv(3, 4, 3)
    assert ops.spec_of(m) is None  # cached as None
    own = ops.OpSpec(rule=rules.frozen("standardised weights"))
    with monkeypatch.context() as mp:
        mp.setitem(ops.SPECS, StdConv, own)
        assert ops.spec_of(m) is own and ops.spec_of(SubStdConv(3, 4, 3)) is own
    assert ops.spec_of(m) is None


def test_when_applies_a_row_per_instance(monkeypatch):
    class Gain(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.g = nn.Parameter(torch.ones(c)) if c else None

        def forward(self, x):
            return x if self.g is None else x * self.g[:, None, None]

    monkeypatch.setitem(ops.SPECS, Gain, ops.OpSpec(rule=rules.passthrough, when=lambda m: m.g is None))
    assert ops.spec_of(Gain(0)) is not None and ops.spec_of(Gain(4)) is None


# -- coverage ------------------------------------------------------------------------------------


@pytest.mark.parametrize("m", [
    nn.Conv3d(4, 6, 3), Conv3DSimple(4, 6), Conv3DNoTemporal(4, 6, stride=2), nn.Conv1d(4, 6, 3),
], ids=lambda m: type(m).__name__)
def test_conv_kinds_have_every_fact(m):
    spec = ops.spec_of(m)
    assert spec.rule is rules.conv and spec.prune is surgery.conv and ops.cost_kind(m) == DENSE
    assert spec.widths(m) == (4, 6)
    x = torch.randn(1, 4, *([5] * (m.weight.dim() - 2)))
    assert spec.reads(m, x) == 1 and spec.reads(m, x[0]) == 0  # batched, unbatched
    with torch.no_grad():
        assert spec.meta_out(m, x.to("meta")).shape == m(x).shape


@pytest.mark.parametrize("m", [nn.BatchNorm3d(6), FrozenBatchNorm2d(6)], ids=lambda m: type(m).__name__)
def test_norm_kinds_have_every_fact(m):
    spec = ops.spec_of(m)
    assert spec.rule is rules.batchnorm and (spec.prune is not None or spec.channel_buffers)
    assert spec.same_shape and ops.cost_kind(m) == "single" and spec.reads is None


@pytest.mark.parametrize("cls", [nn.MaxPool3d, nn.AvgPool3d, nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool3d])
def test_3d_pools_pass_channels(cls):
    m = cls(2) if "Adaptive" not in cls.__name__ else cls(1)
    assert ops.spec_of(m).rule is rules.passthrough and ops.cost_kind(m) == "single"


def test_grouped_conv_cost_is_single():
    assert ops.cost_kind(nn.Conv2d(8, 8, 3, groups=8)) == "single" and ops.cost_kind(nn.Linear(3, 4)) == DENSE


@pytest.mark.parametrize("name", ["r3d_18", "mc3_18"])
def test_video_resnets_prune_like_their_2d_counterparts(name):
    """Conv3DSimple / Conv3DNoTemporal are leaves with the conv rule: r3d_18 and mc3_18 had 0
    prunable groups; now 12 of 13, as resnet18 (the classifier's input is the frozen one)."""
    model = randomize_norms(torchvision.models.get_model(name, weights=None))
    graph = fxtaylor.trace(model, VIDEO)
    assert (len(graph.prunable_groups), len(graph.groups)) == (12, 13)
    assert any(m.module_type == type(model.layer1[0].conv1[0]).__name__ for m in graph.prunable_groups[0].members)
    chosen = random.Random(0).sample([g.index for g in graph.prunable_groups], 2)
    assert_dead_equivalent(model, VIDEO, groups=chosen)


def test_video_resnet_costs_follow_the_specs():
    """Conv3DSimple is a dense layer for the cost model: a multi-group cut's predicted FLOPs are
    fvcore's recount of the pruned model; the run report lists its widths."""
    model = torchvision.models.get_model("r3d_18", weights=None).eval()
    graph = fxtaylor.trace(model, VIDEO)
    layers = Layers(graph)
    assert layers.kind[layers.names.index("layer1.0.conv1.0")] == DENSE
    cost = FlopsCost().sync(graph, VIDEO)
    rng = random.Random(1)
    chosen = {g.index: rng.sample(range(g.size), g.num_prunable // 2) for g in rng.sample(graph.prunable_groups, 4)}
    units = torch.cat([graph.groups[i].units[torch.tensor(c, dtype=torch.long)] for i, c in chosen.items()])
    L = cost.layers
    widths = {n: (L.cin[i] - L.delta(i, units)[0], L.cout[i] - L.delta(i, units)[1]) for i, n in enumerate(L.names)}
    predicted = cost.predict(widths)
    for i, c in chosen.items():
        graph.prune(graph.groups[i], c)
    counted = flops.count(model, VIDEO)[0]
    assert abs(predicted - counted) <= 1e-6 * counted, (predicted, counted)
    assert measure.out_channels(model)["layer1.0.conv1.0"] == model.layer1[0].conv1[0].out_channels


def test_latency_rebuilds_a_conv_subclass_as_its_registered_class():
    from fxtaylor.latency import layers

    m = Conv3DNoTemporal(4, 6, stride=2)
    new, shape = layers.layer_spec("c", m, (1, 4, 2, 8, 8), 1).build(3, 5)
    assert type(new) is nn.Conv3d and (new.in_channels, new.out_channels) == (3, 5) and shape == (1, 3, 2, 8, 8)
    assert new.kernel_size == m.kernel_size and new.stride == m.stride and new.padding == m.padding
    fbn, _ = layers.layer_spec("n", FrozenBatchNorm2d(6), (1, 6, 8, 8), 1).build(4, 4)
    assert isinstance(fbn, FrozenBatchNorm2d) and fbn.weight.numel() == 4
    assert isinstance(layers.layer_spec("s", StdConv(4, 6, 3), (1, 4, 8, 8), 1), str)  # own forward: not modelled


# -- FrozenBatchNorm2d ---------------------------------------------------------------------------


def _randomize_frozen(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, FrozenBatchNorm2d):
            n = m.weight.numel()
            m.running_mean.copy_(torch.rand(n, generator=g) * 2 - 1)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.copy_(torch.rand(n, generator=g) * 2 - 1)
    return model.eval()


def test_frozen_batchnorm_resnet_is_as_prunable_as_with_batchnorm():
    """torchvision's detection backbones use FrozenBatchNorm2d: was 0 of 21 groups prunable."""
    plain = fxtaylor.trace(torchvision.models.resnet18(weights=None), X)
    model = _randomize_frozen(torchvision.models.resnet18(weights=None, norm_layer=FrozenBatchNorm2d))
    graph = fxtaylor.trace(model, X)
    assert len(graph.groups) == len(plain.groups) == 13
    assert len(graph.prunable_groups) == len(plain.prunable_groups) == 12
    assert ("bn1", "norm") in {(m.name, m.role) for m in graph.group_of("conv1").members}
    chosen = random.Random(0).sample([g.index for g in graph.prunable_groups], 3)
    assert_dead_equivalent(model, X, groups=chosen, n_channels=3)


def test_frozen_batchnorm_surgery_slices_its_four_buffers():
    model = _randomize_frozen(nn.Sequential(nn.Conv2d(3, 8, 3), FrozenBatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 1)))
    ref = copy.deepcopy(model)
    graph = fxtaylor.trace(model, X)
    graph.prune(graph.group_of("0"), [1, 5])
    keep = [0, 2, 3, 4, 6, 7]
    for name in ("weight", "bias", "running_mean", "running_var"):
        assert torch.equal(getattr(model[1], name), getattr(ref[1], name)[keep])
    assert model[1].state_dict().keys() == ref[1].state_dict().keys()  # still buffers
    assert model(X).shape == (1, 4, 30, 30)


# -- transposed convs --------------------------------------------------------------------------


class PlainConvT(nn.ConvTranspose2d):
    pass


@pytest.mark.parametrize("convt", [nn.ConvTranspose2d, PlainConvT])
def test_transposed_conv_takes_the_conv_rule_with_its_weight_axes_swapped(convt):
    """ConvTranspose's weight is [in, out/groups, ...]: its row is the conv's with out_axis=1,
    in_axis=0, which surgery, zeroing and the criteria read; a subclass keeping ``forward``
    takes it too. Both axes prune, exactly (more in tests/test_every_layer.py)."""
    m = convt(8, 6, 2, stride=2)
    spec = ops.spec_of(m)
    assert ops.lookup_module(m) is rules.conv and (spec.out_axis, spec.in_axis) == (1, 0)
    model = randomize_norms(nn.Sequential(
        cbr(3, 8), convt(8, 6, 2, stride=2), nn.BatchNorm2d(6), nn.ReLU(), cbr(6, 5), nn.Conv2d(5, 4, 1),
    ))
    graph = assert_dead_equivalent(model, X)
    assert graph.group_of("1", "in").prunable and graph.group_of("1", "out").prunable
    assert len(graph.prunable_groups) == 3


# -- selections ----------------------------------------------------------------------------------


def test_ignoring_a_container_freezes_every_group_inside_it():
    """mobilenet_v2's features[1] is an InvertedResidual (a container): ignoring it froze
    nothing (25 prunable groups with or without it)."""
    model = torchvision.models.mobilenet_v2(weights=None)
    free = fxtaylor.trace(model, X)
    graph = fxtaylor.trace(model, X, ignored_layers=[model.features[1]])
    by_name = fxtaylor.trace(model, X, ignored_layers=["features.1"])
    inside = {(m.name, m.role) for m in free.group_of("features.1.conv.0.0").members} | {
        (m.name, m.role) for m in free.group_of("features.1.conv.1").members}
    assert len(free.prunable_groups) == 25 and len(graph.prunable_groups) == 23
    assert [g.frozen for g in graph.groups] == [g.frozen for g in by_name.groups]
    for name, role in inside:
        g = graph.group_of(name, role)
        assert g is not None and any("ignored layer features.1." in r for r in g.frozen), (name, role)
    # the same names go into prune()'s arch record, expanded by trace() again
    assert inputs.names(model, [model.features[1]], False) == ["features.1"]


def test_selection_errors_name_what_is_wrong():
    model = nn.Sequential(cbr(3, 8), cbr(8, 4))
    with pytest.raises(FxTaylorError, match=r"no module named '1\.3'"):
        fxtaylor.trace(model, X, ignored_layers=["1.3"])
    with pytest.raises(FxTaylorError, match="not a module of this model"):
        fxtaylor.trace(model, X, ignored_layers=[nn.ReLU()])
    with pytest.raises(FxTaylorError, match="leaf_modules: cannot select 3"):
        fxtaylor.trace(model, X, leaf_modules=[3])


class Gate(nn.Module):
    def forward(self, x):
        return x * 2 if x.mean() > 0 else x


class LoudGate(Gate):
    pass


class Gated(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.g1, self.b, self.g2, self.c = cbr(3, 8), Gate(), cbr(8, 6), LoudGate(), cbr(6, 4)

    def forward(self, x):
        return self.c(self.g2(self.b(self.g1(self.a(x))))).mean((2, 3))


def test_leaf_modules_by_type_match_subclasses_in_trace_and_in_prune():
    """A type selects every instance, subclasses included, in trace() and in prune()'s names
    (prune() matched the exact type: LoudGate was left out and its trace failed)."""
    model = Gated()
    assert inputs.names(model, [Gate], True) == ["g1", "g2"]
    graph = fxtaylor.trace(model, X, leaf_modules=[Gate])
    assert graph.opaque == ["g1", "g2"]
    by_names = fxtaylor.trace(model, X, leaf_modules=inputs.names(model, [Gate], True))
    assert by_names.opaque == graph.opaque
    assert [g.frozen for g in by_names.groups] == [g.frozen for g in graph.groups]
