"""Channel rules that timm's CNNs need: stack, softmax over paths, matmul, splits whose sizes a
module attribute holds (MixedConv2d, SelectiveKernel, Res2Net), timm's Conv2dSame.

Each rule is shown on a small synthetic module and on the real timm model (64 px input) by the
dead-channel test; ops that cannot be exact must stay frozen, with their reason.
"""
import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import fxtaylor
from fxtaylor.errors import PruneError
from fxtaylor.graph import ops

from deadcheck import assert_dead_equivalent, randomize_norms

X = torch.randn(2, 3, 16, 16)


def cbr(cin, cout, k=3, groups=1):
    return nn.Sequential(nn.Conv2d(cin, cout, k, 1, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


def producers(group):
    return {m.name for m in group.members if m.kind == "producer"}


# -- synthetic constructs ----------------------------------------------------------------------


class PathAttention(nn.Module):
    """A selective-kernel block: paths stacked on a new dim, softmax over the paths."""

    def __init__(self, dim=1):
        super().__init__()
        self.dim = dim
        self.stem = cbr(3, 8)
        self.paths = nn.ModuleList([cbr(8, 6, 3), cbr(8, 6, 5)])
        self.reduce = nn.Conv2d(6, 4, 1)
        self.select = nn.Conv2d(4, 12, 1)
        self.head = nn.Conv2d(6, 5, 1)

    def forward(self, x):
        x = self.stem(x)
        paths = torch.stack([p(x) for p in self.paths], dim=self.dim)  # [B, 2, C, H, W] (dim 1)
        if self.dim != 1:
            paths = paths.movedim(self.dim, 1)
        attn = self.select(F.relu(self.reduce(paths.sum(1).mean((2, 3), keepdim=True))))
        B, C2, H, W = attn.shape
        attn = torch.softmax(attn.view(B, 2, C2 // 2, H, W), dim=1)
        return self.head((paths * attn).sum(1))


@pytest.mark.parametrize("dim", [1, 0, -1])
def test_stack_ties_its_inputs_and_softmax_over_paths_passes(dim):
    model = randomize_norms(PathAttention(dim))
    graph = assert_dead_equivalent(model, X)
    g = graph.group_of("paths.0.0")
    # both paths and the attention's selector (each of its path rows) are one group
    assert producers(g) == {"paths.0.0", "paths.1.0", "select"}
    assert g.size == 6 and not g.frozen
    assert graph.group_of("reduce").prunable


class ChannelSoftmax(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.dim, self.a, self.b = dim, cbr(3, 8), nn.Conv2d(8, 4, 1)

    def forward(self, x):
        y = self.a(x)
        # a dead channel's softmax over space is uniform, not zero: gated by the channel itself
        # (attention pooling) its contribution is zero, as in SelectiveKernel and GlobalContext
        return self.b(y * torch.softmax(y.flatten(2), dim=self.dim).view_as(y))


def test_softmax_over_channels_stays_frozen_over_space_passes():
    graph = fxtaylor.trace(ChannelSoftmax(1).eval(), X)
    assert any("softmax over channels" in r for r in graph.group_of("a.0").frozen)
    assert fxtaylor.trace(ChannelSoftmax(1).eval(), X, exact=False).group_of("a.0").prunable  # the opt-in
    model = randomize_norms(ChannelSoftmax(-1))
    graph = assert_dead_equivalent(model, X)
    assert graph.group_of("a.0").prunable


class GlobalContext(nn.Module):
    """timm's GlobalContext pooling: [B, 1, C, HW] @ [B, 1, HW, 1]."""

    def __init__(self):
        super().__init__()
        self.a, self.attn, self.fc, self.b = cbr(3, 8), nn.Conv2d(8, 1, 1), nn.Conv2d(8, 8, 1), nn.Conv2d(8, 4, 1)

    def forward(self, x):
        x = self.a(x)
        B, C, H, W = x.shape
        attn = F.softmax(self.attn(x).reshape(B, 1, H * W), dim=-1).unsqueeze(3)
        context = (x.reshape(B, C, H * W).unsqueeze(1) @ attn).view(B, C, 1, 1)
        return self.b(x * torch.sigmoid(self.fc(context)))


def test_matmul_passes_channels_on_its_free_dims():
    graph = assert_dead_equivalent(randomize_norms(GlobalContext()), X)
    g = graph.group_of("a.0")
    assert g.prunable and producers(g) == {"a.0", "fc"}


class ChannelGram(nn.Module):
    """Contracts channels: [B, HW, C] @ [B, C, HW] (tied operands) or against a fixed matrix."""

    def __init__(self, fixed=False):
        super().__init__()
        self.a, self.b, self.head = cbr(3, 8), cbr(3, 8), nn.Conv2d(8, 4, 1)
        self.fixed = fixed
        self.register_buffer("w", torch.randn(8, 16 * 16))

    def forward(self, x):
        a, b = self.a(x), self.b(x)
        other = self.w.expand(x.shape[0], -1, -1) if self.fixed else b.flatten(2)
        gram = torch.matmul(a.flatten(2).transpose(1, 2), other)  # [B, HW, HW]
        return self.head(a) * gram.mean((1, 2)).view(-1, 1, 1, 1)


def test_matmul_contracting_channels_ties_both_operands_or_freezes():
    graph = assert_dead_equivalent(randomize_norms(ChannelGram()), X)
    assert producers(graph.group_of("a.0")) == {"a.0", "b.0"}
    graph = fxtaylor.trace(ChannelGram(fixed=True).eval(), X)
    assert any("contracts channels with a tensor that carries none" in r for r in graph.group_of("a.0").frozen)


class MatrixChannels(nn.Module):
    """A non-local / channel-attention style product: (f fᵀ) f, f = [B, C, HW]. The Gram matrix
    carries the channels on both dims; the second product contracts them against f's own."""

    def __init__(self):
        super().__init__()
        self.a, self.head = cbr(3, 6), nn.Conv2d(6, 4, 1)

    def forward(self, x):
        y = self.a(x)
        f = y.flatten(2)
        return self.head(torch.bmm(f @ f.transpose(1, 2), f).view_as(y))


def test_matmul_channel_gram_matrix():
    graph = assert_dead_equivalent(randomize_norms(MatrixChannels()), X)
    assert graph.group_of("a.0").prunable


# -- timm modules and models -------------------------------------------------------------------


def _groups_with(graph, names):
    return sorted({graph.group_of(n).index for n in names})


def test_mixed_conv2d_prunes_per_piece_and_keeps_its_splits():
    timm = pytest.importorskip("timm")
    from timm.layers import MixedConv2d

    torch.manual_seed(0)
    model = randomize_norms(nn.Sequential(
        cbr(3, 12, 1), MixedConv2d(12, 12, [3, 5, 7], depthwise=True), nn.BatchNorm2d(12), nn.ReLU(),
        MixedConv2d(12, 8, [1, 1]), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 3, 1)))
    graph = assert_dead_equivalent(model, X, n_channels=3)
    g = graph.group_of("0.0")
    assert {"0.0", "1.0", "1.1", "1.2"} <= producers(g) and g.prunable
    assert producers(graph.group_of("4.0")) == {"4.0"}  # a dense sub-conv's outputs: its own group

    pruned = copy.deepcopy(model)
    graph = fxtaylor.trace(pruned, X)
    graph.prune(graph.group_of("0.0"), [0, 1, 5, 11])  # pieces [4, 4, 4] lose 2, 1, 1
    assert pruned[1].splits == [2, 3, 3] and pruned[1].in_channels == pruned[1].out_channels == 8
    assert pruned[4].splits == [3, 5] and pruned[4].in_channels == 8  # reads the same channels
    for mode in (pruned.train, pruned.eval):
        mode()
        assert pruned(X).shape == (2, 3, 16, 16)
    before = {k: v.clone() for k, v in pruned.state_dict().items()}
    with pytest.raises(PruneError, match="a split piece"):  # the piece [0, 1] would be left empty
        graph.prune(graph.group_of("0.0"), [0, 1])
    after = pruned.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)  # nothing cut
    assert pruned[1].splits == [2, 3, 3]
    # the pruner never picks such a cut: one channel of every piece stays last in line
    g = graph.group_of("0.0")
    # pieces [0, 1], [2, 3, 4], [5, 6, 7] of the first split, [0, 1, 2], [3..7] of the second:
    # one channel of each is kept, three cover all five
    assert len(g.keep) == 5 and g.least == 3 and g.num_prunable == g.size - 3
    order, least = g.removal_order(torch.arange(g.size, dtype=torch.float))
    assert least == 3 and set(order[-3:].tolist()) == {1, 4, 7}  # the best of each piece stays


@pytest.mark.parametrize("name, parts", [
    ("skresnet18", ["layer1.0.conv1.paths.0.conv", "layer2.0.conv1.paths.0.conv", "conv1", "layer2.0.downsample.0"]),
    ("mixnet_s", ["blocks.1.0.conv_pw.0", "blocks.1.0.conv_pwl.0", "blocks.2.0.conv_pw", "blocks.3.0.conv_pwl.0"]),
    ("tf_mixnet_s", ["blocks.1.0.conv_pw.0", "blocks.2.0.conv_pw"]),
    ("res2net50_14w_8s", ["layer1.0.conv1", "layer1.0.convs.0", "layer2.0.conv1", "conv1"]),
    ("gcresnext26ts", ["stages.0.0.conv1_1x1.conv", "stages.1.0.conv1_1x1.conv", "stages.0.0.conv3_1x1.conv"]),
    ("resnest14d", ["layer1.0.conv2.fc1", "layer1.0.conv3"]),
])
def test_timm_model_groups_pass_the_dead_channel_test(name, parts):
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = randomize_norms(timm.create_model(name, pretrained=False))
    x = torch.randn(1, 3, 64, 64)
    graph = fxtaylor.trace(model, x)
    frozen = [g for g in graph.groups if g.frozen and g.frozen != ["reaches the model output"]
              and not any("layer norm" in r or "fixed index" in r for r in g.frozen)]
    assert not frozen, frozen  # GlobalContext: its LayerNorm2d and 1-channel attention map only
    assert_dead_equivalent(model, x, groups=_groups_with(graph, parts), n_channels=3)


def test_pruned_timm_models_run_in_train_and_eval_mode():
    timm = pytest.importorskip("timm")
    x = torch.randn(2, 3, 64, 64)
    for name in ("skresnet18", "mixnet_s", "res2net50_14w_8s"):
        model = timm.create_model(name, pretrained=False)
        graph = fxtaylor.trace(model, x)
        for g in graph.prunable_groups:
            graph.prune(g, [0, g.size - 1][: g.size - 1])
        for mode in (model.train, model.eval):
            mode()
            assert model(x).shape == (2, 1000), name


def test_split_stays_frozen_outside_its_owner():
    """A split by a literal in user code (or in an unregistered module) cannot follow pruning."""
    timm = pytest.importorskip("timm")

    class Split(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.c = cbr(3, 8), nn.Conv2d(4, 2, 1), nn.Conv2d(4, 2, 1)

        def forward(self, x):
            p, q = torch.split(self.a(x), 4, 1)
            return self.b(p) + self.c(q)

    graph = fxtaylor.trace(Split().eval(), X)
    assert any("fixed-size split" in r for r in graph.group_of("a.0").frozen)
    assert ops.split_owner_of(timm.layers.MixedConv2d) is not None and ops.split_owner_of(Split) is None


class StackOfAList(nn.Module):
    """``torch.stack`` of a list that is one value in the graph: the model's input (a list of
    images) and a split's pieces."""

    def __init__(self):
        super().__init__()
        self.c, self.d, self.e = nn.Conv2d(3, 8, 3), nn.Conv2d(8, 4, 1), nn.Conv2d(2, 6, 1)

    def forward(self, images):
        x = self.d(self.c(torch.stack(images)))
        return self.e(torch.stack(x.split(2, 1), 2).sum(2))


def test_stack_of_a_list_value_traces_and_stays_exact():
    model = StackOfAList().eval()
    x = [torch.randn(3, 16, 16), torch.randn(3, 16, 16)]
    graph = fxtaylor.trace(model, x)  # was a raw TypeError in the stack rule
    assert graph.group_of("c").prunable and graph.group_of("d").frozen  # d's channels: a fixed-size split
    assert_dead_equivalent(model, (x,))


class PadVarUnfoldPow(nn.Module):
    """Ops the timm survey found without a rule, each exact where it leaves the channel dim alone:
    a padding module (NASNet's ZeroPad2d), a variance over space, Tensor.unfold over a spatial
    dim (HaloNet), pow (PoolFormer-V2, MobileNetV5)."""

    def __init__(self):
        super().__init__()
        self.a = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8))
        self.p, self.b, self.c = nn.ZeroPad2d((1, 0, 1, 0)), nn.Conv2d(8, 6, 3), nn.Conv2d(6, 4, 1)

    def forward(self, x):
        y = self.b(self.p(self.a(x)))
        v = y.var(dim=(2, 3), keepdim=True)
        w = y.unfold(2, 3, 1).mean(-1)
        return self.c(w * (v + 1).pow(0.5) + y[:, :, 2:] ** 2)


class OverChannels(nn.Module):
    """The same ops across the channel dim: no exact removal, so frozen."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 3), nn.Conv2d(8, 4, 1)

    def forward(self, x):
        y = self.a(x)
        return self.b(y / y.var(dim=1, keepdim=True) + y.unfold(1, 2, 2).mean(-1).repeat_interleave(2, 1))


def test_pad_modules_var_unfold_and_pow_pass_channels_exactly():
    model = randomize_norms(PadVarUnfoldPow())
    graph = assert_dead_equivalent(model, X, n_channels=2)
    assert graph.group_of("a.0").prunable and graph.group_of("b").prunable


def test_var_and_unfold_over_the_channel_dim_freeze():
    graph = fxtaylor.trace(OverChannels().eval(), X)
    reasons = " ".join(graph.group_of("a").frozen)
    assert "reduces over a channel dim" in reasons or "sliding windows" in reasons


class InterpolatedPosEmbed(nn.Module):
    """SAM2-Hiera: a channel x 7 x 7 position embedding interpolated to the feature map and added."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 4, 1)
        self.pos = nn.Parameter(torch.randn(1, 8, 7, 7))

    def forward(self, x):
        y = self.a(x)
        return self.b(y + F.interpolate(self.pos, size=y.shape[-2:], mode="bicubic"))


def test_a_factor_on_a_resized_dim_is_frozen_not_a_crash():
    model = InterpolatedPosEmbed().eval()
    graph = fxtaylor.trace(model, X)  # raised RuntimeError (a 7-atom axis joined at 16) before
    assert graph.group_of("a").prunable  # the embedding's channel axis follows the conv's channels
    assert_dead_equivalent(model, X, n_channels=2)
