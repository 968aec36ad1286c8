"""The paper's comparison criteria and the Spearman helper, against direct computations."""
import copy

import pytest
import torch
import torch.nn.functional as F

import fxtaylor
from fxtaylor.graph.check import kill_channels
from test_taylor import Chain, X, batches


def test_weight_importance_is_mean_squared_kernel_weight():
    model = Chain()
    imp = fxtaylor.WeightImportance(model, X, normalize=None)
    g = imp.graph.group_of("a.0")
    expected = model.a[0].weight.detach().pow(2).flatten(1).mean(1).double()
    torch.testing.assert_close(imp.group_scores(g), expected)


def test_activation_mean_and_std_over_elements_and_examples():
    model = Chain().train()
    data = batches([3, 4])
    means = fxtaylor.ActivationMeanImportance(model, X, normalize=None)
    stds = fxtaylor.ActivationStdImportance(model, X, normalize=None)
    seen = []
    h = model.b[0].register_forward_pre_hook(lambda m, a: seen.append(a[0].detach().clone()))
    with means.observe(), stds.observe():
        for x, _ in data:
            model(x)
    h.remove()
    z = torch.cat(seen).transpose(0, 1).flatten(1).double()
    g = means.graph.group_of("a.0")
    torch.testing.assert_close(means.group_scores(g), z.mean(1))
    torch.testing.assert_close(stds.group_scores(g), z.std(1, unbiased=False))


def test_oracle_is_the_loss_change_of_really_removing_the_channel():
    torch.manual_seed(0)
    model = Chain().eval()
    data = batches([6, 5])
    oracle = fxtaylor.OracleImportance(model, X, data, F.cross_entropy, normalize=None)
    signed = fxtaylor.OracleImportance(model, X, data, F.cross_entropy, mode="signed", normalize=None)
    g = oracle.graph.group_of("a.0")

    def loss(m):
        with torch.no_grad():
            return sum(float(F.cross_entropy(m(x), y, reduction="sum")) for x, y in data) / 11

    base = loss(model)
    for k in range(g.size):
        dead = copy.deepcopy(model)
        kill_channels(dead, fxtaylor.trace(dead, X).group_of("a.0"), [k])
        delta = loss(dead) - base
        assert oracle.group_scores(g)[k] == pytest.approx(abs(delta), rel=1e-4, abs=1e-7)
        assert signed.group_scores(g)[k] == pytest.approx(delta, rel=1e-4, abs=1e-7)


def test_random_importance_is_seeded():
    model = Chain()
    a, b = (fxtaylor.RandomImportance(model, X, seed=3) for _ in range(2))
    g = a.graph.group_of("a.0")
    assert torch.equal(a.group_scores(g), b.group_scores(g))


def test_spearman():
    a = torch.tensor([1.0, 2, 3, 4, 5])
    assert fxtaylor.spearman(a, a * 10) == pytest.approx(1.0)
    assert fxtaylor.spearman(a, -a) == pytest.approx(-1.0)
    b = torch.tensor([2.0, 1, 4, 3, 5])
    d2 = float(((a - b) ** 2).sum())  # ranks equal values here
    assert fxtaylor.spearman(a, b) == pytest.approx(1 - 6 * d2 / (5 * 24))
    assert fxtaylor.spearman(torch.tensor([1.0, 1, 2]), torch.tensor([3.0, 3, 5])) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        fxtaylor.spearman(a, a[:3])


def test_normalisers_and_bad_arguments():
    model = Chain()
    for how, check in [("l2", lambda s: s.norm()), ("sum", lambda s: s.sum()), ("max", lambda s: s.max())]:
        imp = fxtaylor.WeightImportance(model, X, normalize=how)
        assert float(check(imp.group_scores(imp.graph.group_of("a.0")))) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="normalize"):
        fxtaylor.WeightImportance(model, X, normalize="l3")
    with pytest.raises(ValueError, match="flops_reg"):
        fxtaylor.TaylorImportance(model, X, flops_reg=-1e-3)
    with pytest.raises(ValueError, match="flops_reg"):
        fxtaylor.TaylorImportance(model, X, flops_reg=float("nan"))
