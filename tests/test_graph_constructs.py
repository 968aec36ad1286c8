"""One small hand-written model per construct the channel graph must understand.

Each test checks the group structure against what the construct means, then proves it with the
dead-channel test (zero a channel at its source, prune it, the output must not move).
"""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.models.mobilenetv2 import InvertedResidual
from torchvision.models.resnet import BasicBlock, Bottleneck
from torchvision.ops import SqueezeExcitation

import fxtaylor
from fxtaylor.graph.check import dead_channel_diff
from deadcheck import assert_dead_equivalent, randomize_norms


def cbr(cin, cout, k=3, stride=1, groups=1):
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


def members(group):
    return {(m.name, m.role) for m in group.members}


def positions(group, name, role):
    for m in group.members:
        if (m.name, m.role) == (name, role):
            return m.positions.tolist(), m.channels.tolist()
    raise KeyError((name, role))


X = torch.randn(2, 3, 16, 16)


class Chain(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = cbr(3, 8), cbr(8, 6)
        self.fc = nn.Linear(6 * 4 * 4, 5)

    def forward(self, x):
        x = F.max_pool2d(self.b(self.a(x)), 4)
        return self.fc(torch.flatten(x, 1))


def test_plain_chain_and_flatten_linear():
    model = randomize_norms(Chain())
    graph = assert_dead_equivalent(model, X)
    ga, gb = graph.group_of("a.0"), graph.group_of("b.0")
    assert members(ga) == {("a.0", "out"), ("a.1", "norm"), ("b.0", "in")}
    assert members(gb) == {("b.0", "out"), ("b.1", "norm"), ("fc", "in")}
    # flatten→linear: channel k of b owns fc inputs k*16 .. k*16+15
    pos, ch = positions(gb, "fc", "in")
    assert pos == list(range(96)) and ch == [k // 16 for k in range(96)]
    assert graph.group_of("fc").frozen == ["reaches the model output"]
    assert len(graph.prunable_groups) == 2


class Residual(nn.Module):
    def __init__(self, block):
        super().__init__()
        self.stem = cbr(3, 16)
        down = nn.Sequential(nn.Conv2d(16, 8 * block.expansion, 1, 2, bias=False), nn.BatchNorm2d(8 * block.expansion))
        self.l1 = block(16, 16 // block.expansion)
        self.l2 = block(16, 8, stride=2, downsample=down)
        self.head = nn.Linear(8 * block.expansion, 4)

    def forward(self, x):
        x = self.l2(self.l1(self.stem(x)))
        return self.head(x.mean((2, 3)))


@pytest.mark.parametrize("block", [BasicBlock, Bottleneck])
def test_residual_add(block):
    model = randomize_norms(Residual(block))
    graph = assert_dead_equivalent(model, X)
    # observed where read: the stem output (l1.conv1) and the post-add relu (l2.conv1, l2.downsample)
    readers = {fm.consumer for fm in graph.group_of("stem.0").feature_maps}
    assert readers == {"l1.conv1", "l2.conv1", "l2.downsample.0"}
    # the stem's channels are tied by the first block's identity add to its last conv
    last = "l1.conv2" if block is BasicBlock else "l1.conv3"
    g = graph.group_of("stem.0")
    assert g is graph.group_of(last)
    assert {("stem.0", "out"), (last, "out"), ("l1.conv1", "in"), ("l2.conv1", "in"), ("l2.downsample.0", "in")} <= members(g)
    # downsample ties the second block's output to its projection
    last2 = "l2.conv2" if block is BasicBlock else "l2.conv3"
    assert graph.group_of("l2.downsample.0") is graph.group_of(last2)
    assert ("head", "in") in members(graph.group_of(last2))


class Concat(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = cbr(3, 4), cbr(3, 6), cbr(10, 5)
        self.fc = nn.Linear(5, 2)

    def forward(self, x):
        y = self.c(torch.cat([self.a(x), self.b(x)], 1))
        return self.fc(F.adaptive_avg_pool2d(y, 1).flatten(1))


def test_concat_offsets():
    model = randomize_norms(Concat())
    graph = assert_dead_equivalent(model, X)
    ga, gb = graph.group_of("a.0"), graph.group_of("b.0")
    assert ga is not gb
    assert positions(ga, "c.0", "in") == ([0, 1, 2, 3], [0, 1, 2, 3])
    assert positions(gb, "c.0", "in") == ([4, 5, 6, 7, 8, 9], [0, 1, 2, 3, 4, 5])


class Chunked(nn.Module):
    def __init__(self, use_split=False):
        super().__init__()
        self.use_split = use_split
        self.a = cbr(3, 8)
        self.l, self.r = cbr(4, 3), cbr(4, 3)
        self.fc = nn.Linear(6, 2)

    def forward(self, x):
        x = self.a(x)
        left, right = torch.split(x, [4, 4], 1) if self.use_split else x.chunk(2, dim=1)
        y = torch.cat([self.l(left), self.r(right)], 1)
        return self.fc(y.mean((2, 3)))


def test_chunk_ties_matching_positions():
    model = randomize_norms(Chunked())
    graph = assert_dead_equivalent(model, X)
    g = graph.group_of("a.0")
    # chunk(2) stays balanced only if position j of each half goes together: 4 units of 2
    assert g.size == 4 and g.width == 2
    pos, ch = positions(g, "a.0", "out")
    assert ch == [0, 1, 2, 3, 0, 1, 2, 3]
    assert positions(g, "l.0", "in")[1] == [0, 1, 2, 3] and positions(g, "r.0", "in")[1] == [0, 1, 2, 3]


def test_fixed_size_split_freezes():
    model = randomize_norms(Chunked(use_split=True))
    graph = assert_dead_equivalent(model, X)
    g = graph.group_of("a.0")
    assert not g.prunable and any("fixed-size split" in r for r in g.frozen)
    assert graph.group_of("l.0").prunable


def test_depthwise_pointwise_inverted_residual():
    model = randomize_norms(nn.Sequential(cbr(3, 16), InvertedResidual(16, 16, 1, 4), InvertedResidual(16, 24, 2, 6)))
    graph = assert_dead_equivalent(model, X)
    expand, dw = "1.conv.0.0", "1.conv.1.0"
    g = graph.group_of(expand)
    assert g is graph.group_of(dw) and g.size == 64 and g.width == 1
    assert {(expand, "out"), (dw, "in"), (dw, "out"), ("1.conv.2", "in")} <= members(g)
    # the stem is tied to the residual block's projection
    assert graph.group_of("0.0") is graph.group_of("1.conv.2")


class Grouped(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.g, self.c = cbr(3, 8), cbr(8, 12, groups=4), cbr(12, 5, k=1)

    def forward(self, x):
        return self.c(self.g(self.a(x))).mean((2, 3))


def test_grouped_conv_prunes_whole_groups():
    model = randomize_norms(Grouped())
    graph = fxtaylor.trace(model, X)
    g = graph.group_of("a.0")
    assert g is graph.group_of("g.0")  # input block k and output block k are one unit
    assert g.size == 4 and g.width == 2
    assert positions(g, "g.0", "out")[1] == [k // 3 for k in range(12)]
    assert positions(g, "c.0", "in")[1] == [k // 3 for k in range(12)]
    assert_dead_equivalent(model, X, groups=[g.index])
    graph.prune(g, [1, 3])
    assert (model.g[0].groups, model.g[0].in_channels, model.g[0].out_channels) == (2, 4, 6)
    assert model(X).shape == (2, 5)


class SE(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.se, self.b = cbr(3, 16), SqueezeExcitation(16, 4), cbr(16, 4, k=1)

    def forward(self, x):
        return self.b(self.se(self.a(x))).mean((2, 3))


def test_squeeze_excite_scale_is_tied():
    model = randomize_norms(SE())
    graph = assert_dead_equivalent(model, X)
    g = graph.group_of("a.0")
    assert g is graph.group_of("se.fc2")  # x * sigmoid(fc2(...)) ties fc2's outputs to x
    assert {("se.fc1", "in"), ("se.fc2", "out"), ("b.0", "in")} <= members(g)
    assert graph.group_of("se.fc1") is not g  # the squeeze channels are their own group


class Shuffle(nn.Module):
    """ShuffleNetV2's split / concat / channel-shuffle, in three spellings of the shuffle."""

    def __init__(self, how):
        super().__init__()
        self.how = how
        self.stem = cbr(3, 8)
        self.b1, self.b2 = cbr(4, 4, k=1), cbr(4, 4, k=1)
        self.shuffle = nn.ChannelShuffle(2)
        self.head = cbr(8, 3, k=1)

    def shuffle_(self, x):
        if self.how == "view":
            n, c, h, w = x.size()
            return x.view(n, 2, c // 2, h, w).transpose(1, 2).contiguous().view(n, c, h, w)
        return self.shuffle(x) if self.how == "module" else F.channel_shuffle(x, 2)

    def forward(self, x):
        x = self.stem(x)
        for b in (self.b1, self.b2):
            x1, x2 = x.chunk(2, dim=1)
            x = self.shuffle_(torch.cat([x1, b(x2)], 1))
        return self.head(x).mean((2, 3))


@pytest.mark.parametrize("how", ["view", "module", "function"])
def test_channel_shuffle_is_followed(how):
    model = randomize_norms(Shuffle(how))
    graph = assert_dead_equivalent(model, X, n_channels=1)
    # the shuffled trunk is one group; unit j holds the j-th channel of each shuffled half
    g = graph.group_of("stem.0")
    assert g is graph.group_of("b1.0") and g is graph.group_of("b2.0")
    pos, ch = positions(g, "head.0", "in")
    assert len(pos) == 8 and g.size * g.width == 8


def test_fixed_size_view_freezes():
    class Lenet(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.fc = nn.Conv2d(3, 4, 5), nn.Linear(4 * 12 * 12, 3)

        def forward(self, x):
            return self.fc(torch.relu(self.conv(x)).view(-1, 4 * 12 * 12))

    graph = fxtaylor.trace(Lenet(), X)
    g = graph.group_of("conv")
    assert not g.prunable and any("fixed size" in r for r in g.frozen)


class Twice(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = cbr(3, 6), cbr(3, 6)
        self.shared = nn.Conv2d(6, 5, 3, padding=1)
        self.fc = nn.Linear(5, 2)

    def forward(self, x):
        y = self.shared(self.a(x)) + self.shared(self.b(x))  # one module, two calls
        return self.fc(y.mean((2, 3)))


def test_module_called_twice():
    model = randomize_norms(Twice())
    graph = assert_dead_equivalent(model, X)
    # input channel j of the shared conv reads a[j] and b[j]: a and b are tied
    assert graph.group_of("a.0") is graph.group_of("b.0")
    g = graph.group_of("a.0")  # read by both calls of the shared conv: two feature maps
    assert sorted((fm.consumer, fm.call) for fm in g.feature_maps) == [("shared", "shared"), ("shared", "shared_1")]
    assert positions(graph.group_of("shared"), "shared", "out")[0] == list(range(5))


class Relus(nn.Module):
    def __init__(self, functional):
        super().__init__()
        self.functional = functional
        self.conv, self.bn, self.relu = nn.Conv2d(3, 6, 3), nn.BatchNorm2d(6), nn.ReLU(inplace=True)
        self.fc = nn.Linear(6, 2)

    def forward(self, x):
        x = self.bn(self.conv(x))
        x = F.relu(x, inplace=True) if self.functional else self.relu(x)
        return self.fc(x.mean((2, 3)))


def test_functional_op_and_module_twin_agree():
    graphs = [fxtaylor.trace(randomize_norms(Relus(f)), X) for f in (False, True)]
    shapes = [[(g.size, sorted(members(g)), g.prunable) for g in graph.groups] for graph in graphs]
    assert shapes[0] == shapes[1]
    maps = [[(fm.consumer, fm.node) for fm in graph.group_of("conv").feature_maps] for graph in graphs]
    assert maps == [[("fc", "mean")], [("fc", "mean")]]  # read once, after the relu and the pooling
    assert_dead_equivalent(randomize_norms(Relus(True)), X)


class ChannelsLast(nn.Module):
    """ConvNeXt's two LayerNorms: a module over the last dim after a permute, and F.layer_norm
    (LayerNorm2d's forward); a third normalises the spatial dim only."""

    def __init__(self, functional):
        super().__init__()
        self.functional = functional
        self.a, self.b = nn.Conv2d(3, 6, 3, padding=1), nn.Conv2d(6, 5, 3, padding=1)
        self.ln = nn.LayerNorm(6)
        self.c = nn.Conv1d(5, 4, 1)
        self.ln_len = nn.LayerNorm(16 * 16)
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        y = self.a(x).permute(0, 2, 3, 1)
        y = F.layer_norm(y, self.ln.normalized_shape, self.ln.weight, self.ln.bias) if self.functional else self.ln(y)
        y = self.b(y.permute(0, 3, 1, 2)).flatten(2)  # [N, 5, 256]
        # relu: the mean over space of a norm over space alone would be constant, hiding any change
        return self.fc(self.c(self.ln_len(y)).relu().mean(2))


@pytest.mark.parametrize("functional", [False, True])
def test_layer_norm_freezes_the_channels_it_normalises(functional):
    model = randomize_norms(ChannelsLast(functional))
    graph = fxtaylor.trace(model, X)
    g = graph.group_of("a")
    assert not g.prunable and any("layer norm over channels" in r for r in g.frozen), g.frozen
    # why: a dead channel still enters the mean and variance of the kept ones, so pruning it
    # moves the output; torch-pruning prunes it anyway
    y = torch.randn(2, 6)
    dead = y.clone()
    dead[:, 0] = 0
    assert not torch.allclose(F.layer_norm(dead, (6,))[:, 1:], F.layer_norm(dead[:, 1:], (5,)))
    # channels on a dim the norm does not cover pass through it and stay prunable
    assert graph.group_of("b").prunable
    assert_dead_equivalent(model, X)
    # the opt-in prunes them (the affine parameters follow), and the removal is not exact
    loose = fxtaylor.trace(model, X, exact=False)
    g = loose.group_of("a")
    assert g.prunable and g.inexact
    diff, same = dead_channel_diff(model, X, g.index, [0, 3], relative=True, exact=False)
    assert same and diff > 1e-4


def test_swapaxes_is_followed_like_transpose():
    class Swap(nn.Module):  # MaxViT's partition code moves channels last with swapaxes
        def __init__(self):
            super().__init__()
            self.a, self.fc1, self.fc2 = nn.Conv2d(3, 6, 3, padding=1), nn.Linear(6, 10), nn.Linear(10, 4)

        def forward(self, x):
            y = torch.relu(self.fc1(self.a(x).swapaxes(1, -1)))
            return self.fc2(torch.swapaxes(y, 1, -1).mean((2, 3)).unsqueeze(1)).squeeze(1)

    model = Swap()
    graph = fxtaylor.trace(model, X)
    assert graph.group_of("a").prunable and graph.group_of("fc1").prunable
    assert_dead_equivalent(model, X)


class L2Norm(nn.Module):
    """SSD300's conv4_3: an L2 norm over the channels, then a learned per-channel scale."""

    def __init__(self):
        super().__init__()
        self.a = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.scale = nn.Parameter(torch.rand(8) + 0.5)
        self.b = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return self.b(self.scale.view(1, -1, 1, 1) * nn.functional.normalize(self.a(x), dim=1))


def test_l2_normalisation_over_channels_keeps_them_prunable_and_exact():
    """A dead channel adds nothing to the L2 norm: the group (with the free scale) is prunable
    and passes the dead-channel test; a wrong rule (one ignoring the scale) would fail it."""
    torch.manual_seed(0)
    model = randomize_norms(L2Norm())
    graph = assert_dead_equivalent(model, torch.randn(2, 3, 8, 8))
    g = graph.group_of("a.0")
    assert g.prunable and "scale" in {m.name for m in g.members}


class MadeConstant(nn.Module):
    """A tensor the forward creates (MaxViT's window offsets): fx stores it as a new attribute
    of the root (``_tensor_constant0``) that tracing must keep for itself, not leave on the model."""

    def __init__(self):
        super().__init__()
        self.a, self.b = cbr(3, 8), nn.Conv2d(8, 4, 1)

    def forward(self, x):
        scale = torch.tensor([0.5, 2.0]).sum()
        return self.b(self.a(x) * scale)


def test_a_tensor_made_in_forward_is_traced_and_the_model_is_left_as_it_was():
    model = randomize_norms(MadeConstant())
    before = set(vars(model))
    for mode in ("eval", "train"):
        getattr(model, mode)()
        graph = fxtaylor.trace(model, X)
        assert len(graph.prunable_groups) == 1
    assert set(vars(model)) == before  # no _tensor_constant0 left behind
    assert_dead_equivalent(model.eval(), X)
