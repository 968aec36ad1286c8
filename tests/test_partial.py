"""Partial tracing (fxtaylor/graph/record.py) and the train/eval union of graphs."""
import copy
import warnings

import pytest
import torch
import torch.nn as nn

import fxtaylor
from fxtaylor.errors import TraceError
from fxtaylor.graph.check import dead_channel_diff
from deadcheck import assert_dead_equivalent, randomize_norms


def block(cin, cout):
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU())


class Head(nn.Module):
    """Traceable alone, given a list: fx unrolls the loop over a real list of placeholders."""

    def __init__(self, c):
        super().__init__()
        self.conv = block(c, c)
        self.out = nn.Conv2d(c, 3, 1)

    def forward(self, feats: list):
        return [self.out(self.conv(f)) for f in feats]


class Detector(nn.Module):
    """The shape of a detection model: an untraceable forward (control flow on a tensor value,
    a loop over a tensor) around a traceable backbone and a head, with glue ops between them."""

    def __init__(self, c=8):
        super().__init__()
        self.backbone = nn.Sequential(block(3, c), block(c, 2 * c))
        self.lateral = nn.Conv2d(2 * c, c, 1)
        self.head = Head(c)

    def forward(self, x):
        if float(x.mean()) > 10:  # data-dependent: fx cannot trace the whole model
            x = x / 2
        f = self.backbone(x)
        p = self.lateral(f)
        levels = [p, torch.nn.functional.max_pool2d(p, 2)]  # glue: followed by the pooling rule
        return [o.flatten(1).sum(1) for o in self.head(levels)]


def test_a_model_fx_cannot_trace_is_traced_in_parts_and_prunes_exactly():
    torch.manual_seed(0)
    model = randomize_norms(Detector())
    x = torch.randn(1, 3, 16, 16)
    with pytest.raises(TraceError):
        fxtaylor.graph.propagate.symbolic_trace(model)  # the whole model does not trace
    state = copy.deepcopy(model.state_dict())
    graph = fxtaylor.trace(model, x)
    assert graph.partial is not None
    assert set(graph.partial.traced) == {"backbone", "head"}  # lateral: a conv, called as a leaf
    assert "Proxy" in graph.partial.untraced[""]  # why the root did not trace
    assert "not traced: <root>" in graph.summary()
    # the lateral conv (called from glue) feeds the head through a max-pool in glue code:
    # its channels are one group with the head's input, prunable
    g = graph.group_of("lateral")
    assert g is not None and g.prunable and "head.conv.0" in {m.name for m in g.members}
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())  # tracing changed nothing
    assert_dead_equivalent(model, x, n_channels=2)


class ReadsValues(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = block(3, 8), nn.Conv2d(8, 4, 1)

    def forward(self, x):
        if float(x.sum()) > 1e9:
            return x
        f = self.a(x)
        scale = float(f[:, 0].mean())  # Python reads channel 0's values: the channels freeze
        return self.b(f) * scale


def test_glue_that_reads_values_freezes_the_channels_with_a_reason_naming_the_module():
    graph = fxtaylor.trace(ReadsValues(), torch.randn(1, 3, 8, 8))
    g = graph.group_of("a.0")
    assert g.frozen and any("<root>" in r or "not traced" in r or "fixed index" in r for r in g.frozen), g.frozen


def test_nothing_traceable_keeps_the_clear_trace_error():
    class Plain(nn.Module):
        def forward(self, x):
            return x * 2 if float(x.sum()) > 0 else x

    with pytest.raises(TraceError, match="cannot trace"):
        fxtaylor.trace(Plain(), torch.randn(1, 3, 4, 4))


def test_a_module_caching_what_forward_computed_is_restored_after_tracing():
    """fx traced through a module that caches a value on itself (torchvision's
    MultiScaleRoIAlign caches its scales): the cache must not keep a Proxy."""

    class Caching(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.cached = nn.Conv2d(3, 4, 1), None

        def forward(self, x):
            self.cached = x.shape[-1] * 2
            return self.conv(x)

    class Outer(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner, self.out = Caching(), nn.Conv2d(4, 2, 1)

        def forward(self, x):
            if float(x.sum()) > 1e9:
                return x
            return self.out(self.inner(x))

    model = Outer()
    fxtaylor.trace(model, torch.randn(1, 3, 4, 4))
    assert model.inner.cached is None


class Aux(nn.Module):
    """An auxiliary head that runs only in train mode (GoogLeNet, Inception-v3)."""

    def __init__(self):
        super().__init__()
        self.stem, self.body = block(3, 8), block(8, 8)
        self.aux = nn.Conv2d(8, 2, 1)
        self.fc = nn.Conv2d(8, 2, 1)

    def forward(self, x):
        f = self.stem(x)
        out = self.fc(self.body(f))
        if self.training:
            return out, self.aux(f)
        return out


def test_train_only_branches_join_the_graph_so_the_pruned_model_runs_in_both_modes():
    torch.manual_seed(0)
    model = Aux().eval()
    graph = fxtaylor.trace(model, torch.randn(1, 3, 8, 8))
    assert graph.modes == ("eval", "train") and model.training is False
    g = graph.group_of("stem.0")
    assert "aux" in {m.name for m in g.members}  # the aux head reads the stem's channels
    graph.prune(g, [0, 3])
    model.train()
    out, aux = model(torch.randn(2, 3, 8, 8))
    assert aux.shape == (2, 2, 8, 8)
    # the criterion observes training steps: the aux head's read is a feature map it sees
    assert any(fm.consumer == "aux" for fm in g.feature_maps)


def test_googlenet_with_aux_heads_pruned_in_eval_runs_in_train_mode():
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.googlenet(weights=None, aux_logits=True, init_weights=False).eval()
    graph = fxtaylor.trace(model, torch.randn(1, 3, 96, 96))
    assert graph.modes == ("eval", "train")
    for g in graph.prunable_groups[::5]:
        graph.prune(g, [0, 1])
    model.train()
    out = model(torch.randn(2, 3, 96, 96))
    assert out.logits.shape == out.aux_logits1.shape == (2, 1000)
    model.eval()
    assert model(torch.randn(1, 3, 96, 96)).shape == (1, 1000)


def test_no_raw_exception_from_trace_swin3d_and_a_failing_node_named():
    import torchvision

    model = torchvision.models.video.swin3d_t(weights=None).eval()
    graph = fxtaylor.trace(model, torch.randn(1, 3, 4, 32, 32))  # raised TypeError (immutable_list) before
    assert graph.prunable_groups
    mvit = torchvision.models.video.mvit_v2_s(weights=None).eval()
    with pytest.raises(TraceError, match="failed at"):  # mvit only runs on 16×224×224 clips
        fxtaylor.trace(mvit, torch.randn(1, 3, 4, 32, 32))


def test_detection_model_traced_in_parts_with_backbone_fpn_and_heads_prunable_dead_channel_exact():
    from torchvision.models import detection

    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = detection.fasterrcnn_mobilenet_v3_large_320_fpn(weights=None, weights_backbone=None, num_classes=3,
                                                               min_size=96, max_size=128).eval()
    x = ([torch.rand(3, 96, 128)],)
    graph = fxtaylor.trace(model, x)
    assert {"backbone", "rpn.head", "roi_heads.box_head"} <= set(graph.partial.traced)
    prunable = {m.name.split(".")[0] + "." + m.name.split(".")[1] for g in graph.prunable_groups for m in g.members
                if m.kind == "producer"}
    assert {"backbone.body", "backbone.fpn", "rpn.head", "roi_heads.box_head"} <= prunable, prunable
    for g in [graph.group_of("backbone.fpn.layer_blocks.0.0"), graph.group_of("rpn.head.conv.0.0"),
              graph.group_of("roi_heads.box_head.fc6")]:
        assert g is not None and g.prunable, g
        diff, same = dead_channel_diff(model, x, g.index, [0, 2], relative=True)
        assert same and diff <= 1e-4, (g, diff)


def test_a_glue_op_named_like_metadata_but_giving_a_tensor_is_followed():
    """``x.type(dtype)`` returns a tensor: it is an op (followed or frozen), never skipped like a
    shape query — skipping it would hide the head's read of the stem's channels."""

    class Cast(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem, self.head = block(3, 8), nn.Conv2d(8, 2, 1)

        def forward(self, x):
            if float(x.sum()) > 1e9:
                return x
            return self.head(self.stem(x).type(torch.float32))

    model = randomize_norms(Cast())
    graph = fxtaylor.trace(model, torch.randn(1, 3, 8, 8))
    g = graph.group_of("stem.0")
    assert "head" in {m.name for m in g.members} or g.frozen, g
    for group in graph.prunable_groups:
        graph.prune(group, [0])
    assert model(torch.randn(1, 3, 8, 8)).shape == (1, 2, 8, 8)
