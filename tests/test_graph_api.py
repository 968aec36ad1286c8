"""The channel graph's contract at its edges: errors, warnings, leaves, ignored layers, reuse."""
import copy
import warnings

import pytest
import torch
import torch.nn as nn

import fxtaylor
from fxtaylor.graph.check import kill_channels
from deadcheck import randomize_norms

X = torch.randn(2, 3, 16, 16)


def cbr(cin, cout):
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class Gate(nn.Module):
    """Python control flow on a tensor value: torch.fx cannot trace it."""

    def forward(self, x):
        if x.mean() > 0:
            return x * 2
        return x


class WithGate(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.gate, self.b, self.c = cbr(3, 8), Gate(), cbr(8, 6), cbr(6, 4)

    def forward(self, x):
        return self.c(self.b(self.gate(self.a(x)))).mean((2, 3))


def test_untraceable_model_names_the_module_and_the_fix():
    """fx alone cannot trace it: the error names the module, the line and the fix."""
    with pytest.raises(fxtaylor.TraceError) as e:
        fxtaylor.graph.propagate.symbolic_trace(WithGate())
    msg = str(e.value)
    assert "'gate' (Gate)" in msg and "leaf_modules=[Gate]" in msg and "control flow" in msg
    assert "if x.mean() > 0" in msg  # the offending line of user code


def test_untraceable_module_is_recorded_and_its_reads_freeze_with_the_reason():
    """fxtaylor.trace traces the rest in parts; the gate reads the mean of a's channels (its
    branch depends on them), so those freeze with a reason naming the gate and the fx error."""
    model = randomize_norms(WithGate())
    graph = fxtaylor.trace(model, X)
    assert "if x.mean() > 0" in graph.partial.untraced["gate"]
    a = graph.group_of("a.0")
    assert not a.prunable and any("in gate (not traced" in r for r in a.frozen), a.frozen
    assert graph.group_of("b.0").prunable and graph.group_of("c.0").frozen == ["reaches the model output"]


@pytest.mark.parametrize("leaf", [Gate, "gate"])
def test_leaf_module_is_opaque_and_frozen(leaf):
    model = WithGate()
    graph = fxtaylor.trace(model, X, leaf_modules=[leaf])
    assert graph.opaque == ["gate"]
    a, b = graph.group_of("a.0"), graph.group_of("b.0")
    assert not a.prunable and any("opaque leaf module gate" in r for r in a.frozen)
    assert b.prunable  # consumes the leaf's output but produces its own channels


class Cumsum(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = cbr(3, 8), cbr(8, 4)

    def forward(self, x):
        return self.b(torch.cumsum(self.a(x), 1)).mean((2, 3))


def test_op_without_rule_freezes_with_one_warning():
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        graph = fxtaylor.trace(Cumsum(), X)
    ours = [x for x in w if "fxtaylor" in str(x.message)]
    assert len(ours) == 1 and "cumsum" in str(ours[0].message)
    g = graph.group_of("a.0")
    assert not g.prunable and "no channel rule for cumsum" in g.frozen
    assert graph.group_of("b.0").frozen == ["reaches the model output"]


def test_ignored_layers_freeze_their_groups():
    model = nn.Sequential(cbr(3, 8), cbr(8, 6), nn.Conv2d(6, 4, 1))
    graph = fxtaylor.trace(model, X, ignored_layers=[model[1][0]])
    assert any("ignored layer 1.0" in r for r in graph.group_of("1.0").frozen)
    assert any("ignored layer 1.0" in r for r in graph.group_of("0.0").frozen)  # 1.0 consumes it
    by_name = fxtaylor.trace(model, X, ignored_layers=["1.0"])
    assert [g.prunable for g in by_name.groups] == [g.prunable for g in graph.groups]


def test_prune_rejects_bad_requests_and_leaves_model_intact():
    model = nn.Sequential(cbr(3, 8), cbr(8, 6), nn.Conv2d(6, 4, 1))
    graph = fxtaylor.trace(model, X)
    before = copy.deepcopy(model.state_dict())
    g = graph.group_of("0.0")
    cases = [
        (graph.group_of("2"), [0], "frozen"),
        (g, list(range(8)), "must keep at least 1"),
        (g, [8], "in [0, 8)"),
        (g, [1, 1], "distinct"),
        (fxtaylor.trace(model, X).groups[0], [0], "another channel graph"),
    ]
    for group, idx, text in cases:
        with pytest.raises(fxtaylor.PruneError, match=text.replace("[", r"\[").replace(")", r"\)")):
            graph.prune(group, idx)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert g.size == 8


def test_prune_many_checks_every_cut_before_any_and_equals_one_by_one():
    model = randomize_norms(nn.Sequential(cbr(3, 8), cbr(8, 6), cbr(6, 5), nn.Conv2d(5, 4, 1)))
    graph = fxtaylor.trace(model, X)
    g0, g1 = graph.group_of("0.0"), graph.group_of("1.0")
    before = copy.deepcopy(model.state_dict())
    for cuts, text in [([(g0, [0, 3]), (g1, list(range(6)))], "must keep at least 1"),
                       ([(g0, [0]), (graph.group_of("3"), [0])], "frozen"),
                       ([(g0, [0]), (g0, [1])], "cut twice")]:
        with pytest.raises(fxtaylor.PruneError, match=text):
            graph.prune_many(cuts)
        after = model.state_dict()
        assert all(torch.equal(before[k], after[k]) for k in before) and (g0.size, g1.size) == (8, 6)
    one = copy.deepcopy(model)
    g_one = fxtaylor.trace(one, X)
    g_one.prune(g_one.group_of("0.0"), [0, 3])
    g_one.prune(g_one.group_of("1.0"), [5])
    graph.prune_many([(g0, [0, 3]), (g1, [5])])
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), one.state_dict().values()))
    assert [g.size for g in graph.groups] == [g.size for g in g_one.groups]


def test_graph_stays_valid_across_several_prunes():
    model = randomize_norms(nn.Sequential(cbr(3, 8), cbr(8, 6), cbr(6, 5), nn.Conv2d(5, 4, 1)))
    graph = fxtaylor.trace(model, X)
    g0, g1 = graph.group_of("0.0"), graph.group_of("1.0")
    graph.prune(g0, [0, 3])
    graph.prune(g1, [5])
    graph.prune(g0, [1])  # group-local indices refer to the shrunk group
    assert (g0.size, g1.size) == (5, 5)
    assert model[1][0].in_channels == 5 and model[2][0].in_channels == 5
    # the reused graph is still exact: kill a channel, prune it, nothing moves
    kill_channels(model, g0, [2])
    with torch.no_grad():
        ref = model(X)
    graph.prune(g0, [2])
    with torch.no_grad():
        assert torch.allclose(model(X), ref, atol=1e-6)
    # and agrees with a fresh trace of the pruned model
    fresh = fxtaylor.trace(model, X)
    assert [g.size for g in fresh.groups] == [g.size for g in graph.groups]


def test_trace_does_not_touch_the_model():
    model = cbr(3, 8).train()
    state = copy.deepcopy(model.state_dict())
    fxtaylor.trace(model, X)
    assert model.training and all(m.training for m in model.modules())
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())  # BN stats too


def test_free_parameter_follows_its_channels():
    class Scaled(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = cbr(3, 8), cbr(8, 4)
            self.scale = nn.Parameter(torch.rand(8, 1, 1) + 0.5)

        def forward(self, x):
            return self.b(self.a(x) * self.scale).mean((2, 3))

    model = randomize_norms(Scaled())
    graph = fxtaylor.trace(model, X)
    g = graph.group_of("a.0")
    assert ("scale", "param0") in {(m.name, m.role) for m in g.members}
    graph.prune(g, [0, 7])
    assert model.scale.shape == (6, 1, 1) and model(X).shape == (2, 4)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_model_traces_and_prunes_on_device():
    import torchvision

    model = torchvision.models.resnet18(weights=None).cuda().eval()
    x = torch.randn(1, 3, 64, 64, device="cuda")
    graph = fxtaylor.trace(model, x)
    g = graph.group_of("layer1.0.conv1")
    graph.prune(g, [0, 1, 2])
    assert model.layer1[0].conv1.weight.is_cuda and model(x).shape == (1, 1000)


class MyGain(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.gain = nn.Parameter(torch.rand(c) + 0.5)

    def forward(self, x):
        return x * self.gain[None, :, None, None]


def test_documented_recipe_for_a_new_rule(monkeypatch):
    """docs/graph.md, 'Adding a rule': a leaf module with its own rule and surgery handler."""
    from fxtaylor.graph import ops, rules

    def scale_by_channel(c):
        f = rules.factor_on(c.ann(0), 1)
        if f is not None:
            c.atoms.alias(c.name, "norm", "norm", f.atoms, type(c.module).__name__)
        return c.ann(0)

    def cut(m, removed):
        keep = [i for i in range(m.gain.numel()) if i not in set(removed["norm"])]
        m.gain = nn.Parameter(m.gain.data[keep])

    monkeypatch.setitem(ops.SPECS, MyGain, ops.OpSpec(rule=scale_by_channel, prune=cut))
    model = randomize_norms(nn.Sequential(cbr(3, 8), MyGain(8), cbr(8, 4)))
    graph = fxtaylor.trace(model, X)  # a module with an op spec is a leaf
    g = graph.group_of("0.0")
    assert g.prunable and ("1", "norm") in {(m.name, m.role) for m in g.members} and graph.opaque == []
    kill_channels(model, g, [2])
    with torch.no_grad():
        ref = model(X)
    graph.prune(g, [2])
    with torch.no_grad():
        assert torch.allclose(model(X), ref, atol=1e-6) and model[1].gain.numel() == 7
