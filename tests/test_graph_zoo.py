"""Dead-channel equivalence on real torchvision architectures (weights=None, eval mode).

For a few random groups of each model: zero one channel at its source, prune it through the
graph; the output must not change (max abs diff ≤ 1e-5) and keep its shape.
"""
import random

import pytest
import torch
import torchvision

import fxtaylor
from deadcheck import assert_dead_equivalent, randomize_norms

FAST = ["resnet18", "mobilenet_v2", "densenet121", "efficientnet_b0", "regnet_y_400mf", "googlenet"]
SHUFFLENETS = ["shufflenet_v2_x0_5", "shufflenet_v2_x1_0", "shufflenet_v2_x1_5", "shufflenet_v2_x2_0"]


def build(name):
    kw = {"init_weights": True} if name in ("googlenet", "inception_v3") else {}
    return randomize_norms(torchvision.models.get_model(name, weights=None, **kw))


def random_groups(model, x, k, seed=0):
    graph = fxtaylor.trace(model, x)
    groups = graph.prunable_groups
    return sorted(g.index for g in random.Random(seed).sample(groups, min(k, len(groups))))


@pytest.mark.parametrize("name", FAST)
def test_dead_channel_equivalence_fast_subset(name):
    model, x = build(name), torch.randn(1, 3, 96, 96)
    assert_dead_equivalent(model, x, groups=random_groups(model, x, 3), n_channels=1)


@pytest.mark.parametrize("name", SHUFFLENETS[:1])
def test_shufflenet_every_group(name):
    model, x = build(name), torch.randn(1, 3, 64, 64)
    graph = assert_dead_equivalent(model, x, n_channels=1)
    # the branch groups are free; the trunk is tied across shuffle+chunk into wide units
    assert len(graph.prunable_groups) >= 16


@pytest.mark.slow
@pytest.mark.parametrize("name", SHUFFLENETS)
def test_shufflenet_all_sizes(name):
    model, x = build(name), torch.randn(1, 3, 224, 224)
    assert_dead_equivalent(model, x, n_channels=1)
