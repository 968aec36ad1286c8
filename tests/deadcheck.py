"""Shared test helpers: non-trivial norm statistics and the dead-channel assertion."""
import random

import torch
import torch.nn as nn

from fxtaylor.graph.check import dead_channel_diff


def randomize_norms(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial batch-norm statistics and affine, so a wrong group changes the output."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.copy_(torch.rand(m.num_features, generator=g) * 2 - 1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.rand(m.num_features, generator=g) * 2 - 1)
    return model.eval()


def assert_dead_equivalent(model, x, groups=None, n_channels=2, seed=0, tol=1e-5, **trace_kw):
    """Every given (default: every prunable) group passes the dead-channel test: the output
    changes by at most ``tol`` relative to its magnitude (``max(1, max|output|)``)."""
    from fxtaylor import trace

    graph = trace(model, x, **trace_kw)
    rng = random.Random(seed)
    chosen = graph.prunable_groups if groups is None else [graph.groups[i] for i in groups]
    assert chosen, "no prunable group to test"
    for g in chosen:
        channels = rng.sample(range(g.size), min(n_channels, g.size - g.min_keep))
        diff, same_shape = dead_channel_diff(model, x, g.index, channels, relative=True, **trace_kw)
        assert same_shape, f"group {g}: output shape changed"
        assert diff <= tol, f"group {g}: dead channels {channels} changed the output by {diff} (relative)"
    return graph
