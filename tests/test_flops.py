"""Per-unit FLOPs against fvcore re-run on the pruned model, and the FLOPs regulariser."""
import copy
import logging
import random
import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision

import fxtaylor
from fxtaylor import flops
from fxtaylor.cost import FlopsCost

X = torch.randn(1, 3, 64, 64)


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2", "efficientnet_b0", "regnet_y_400mf"])
def test_unit_cost_is_the_flops_pruning_removes(name):
    model = torchvision.models.get_model(name, weights=None).eval()
    total = flops.count(model, X)[0]
    graph = fxtaylor.trace(model, X)
    cost = FlopsCost().sync(graph, X).unit_costs()
    rng = random.Random(0)
    groups = rng.sample(graph.prunable_groups, 3)
    if name == "regnet_y_400mf":  # grouped convs: a unit is a whole conv group
        groups.append(next(g for g in graph.prunable_groups if g.width > 1))
    for g in groups:
        m = copy.deepcopy(model)
        mg = fxtaylor.trace(m, X)
        k = rng.randrange(g.size)
        predicted = float(cost[g.units[k]])
        mg.prune(mg.groups[g.index], [k])
        removed = total - flops.count(m, X)[0]
        assert removed > 0
        assert abs(predicted - removed) <= 0.02 * removed, (g, predicted, removed)


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2", "regnet_x_400mf"])
def test_predicted_flops_of_a_multi_group_cut_equal_the_recount(name):
    """Cutting many units of several groups at once (a conv losing inputs and outputs, grouped
    convs losing whole groups): the cost model's prediction from per-layer widths is what fvcore
    counts on the pruned model — not the sum of unit costs, which over-counts shared convs."""
    model = torchvision.models.get_model(name, weights=None).eval()
    graph = fxtaylor.trace(model, X)
    cost = FlopsCost().sync(graph, X)
    rng = random.Random(1)
    chosen = {g.index: rng.sample(range(g.size), g.num_prunable // 2) for g in rng.sample(graph.prunable_groups, 6)}
    units = torch.cat([graph.groups[i].units[torch.tensor(c, dtype=torch.long)] for i, c in chosen.items()])
    L = cost.layers
    widths = {}
    for i, n in enumerate(L.names):
        di, do = L.delta(i, units)
        widths[n] = (L.cin[i] - di, L.cout[i] - do)
    predicted, summed = cost.predict(widths), cost.total() - float(cost.unit_costs()[units].sum())
    for i, c in chosen.items():
        graph.prune(graph.groups[i], c)
    counted = flops.count(model, X)[0]
    assert abs(predicted - counted) <= 1e-6 * counted, (predicted, counted)
    assert summed < counted  # the per-unit sum over-predicts the saving


def test_counting_keeps_fvcore_quiet(caplog):
    model = torchvision.models.mobilenet_v3_small(weights=None)
    with warnings.catch_warnings(record=True) as w, caplog.at_level(logging.DEBUG):
        warnings.simplefilter("always")
        flops.count(model, X)
    assert not [x for x in w if "fvcore" in str(x.filename) or "unsupported" in str(x.message).lower()]
    assert not [r for r in caplog.records if r.name.startswith("fvcore") and r.levelno >= logging.WARNING]


class Two(nn.Module):
    """A cheap early conv and an expensive late one."""

    def __init__(self):
        super().__init__()
        self.cheap = nn.Conv2d(3, 8, 1)
        self.costly = nn.Conv2d(8, 8, 5, padding=2)
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        return self.fc(torch.relu(self.costly(torch.relu(self.cheap(x)))).mean((2, 3)))


def observed(model, flops_reg):
    imp = fxtaylor.TaylorImportance(model, X, flops_reg=flops_reg)
    with imp.observe():
        for _ in range(2):
            F.cross_entropy(model(torch.randn(4, 3, 64, 64)), torch.randint(0, 3, (4,))).backward()
    return imp


def test_large_lambda_prunes_the_most_expensive_maps_first_and_zero_is_pure_taylor():
    torch.manual_seed(0)
    model = Two()
    pure, heavy = observed(model, 0.0), observed(model, 1e6)
    groups = pure.graph.prunable_groups
    cost = heavy.normalized_costs()
    # λ = 0: exactly the ℓ2-normalised Taylor scores
    for g in groups:
        raw = pure.unit_scores()[g.units]
        torch.testing.assert_close(pure.group_scores(g), (raw / raw.norm()).double())
    # λ huge: the globally lowest score is a unit of the group with the highest cost per unit
    lowest = min(((float(heavy.group_scores(g).min()), g) for g in groups), key=lambda t: t[0])[1]
    priciest = max(groups, key=lambda g: float(cost[g.units].max()))
    assert lowest is priciest and priciest.index == heavy.graph.group_of("cheap").index
