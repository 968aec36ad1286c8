"""Graph build: ``fxtaylor.trace`` vs torch-pruning's ``DependencyGraph().build_dependency``.

Goal: ≤ 0.5× tp's build time. fxtaylor's trace already yields every channel group; tp needs
``get_all_groups()`` on top of the build for that, so the ratio against build + groups is
reported too (the like-for-like one).
"""
import pytest
import torch
import torch_pruning as tp
import torchvision

import fxtaylor
from ratios import interleaved_medians, report


@pytest.mark.parametrize("name", ["resnet50", "densenet121", "densenet201"])
def test_trace_vs_tp_build(benchmark, name):
    model = torchvision.models.get_model(name, weights=None).eval()
    x = torch.randn(1, 3, 224, 224)
    graph = benchmark.pedantic(fxtaylor.trace, args=(model, x), rounds=7, warmup_rounds=1)
    assert graph.prunable_groups
    if benchmark.disabled:
        return
    ours, theirs = interleaved_medians(
        [lambda: fxtaylor.trace(model, x), lambda: tp.DependencyGraph().build_dependency(model, x)], rounds=7
    )
    report(benchmark, "ratio_vs_tp_build", ours / theirs, 0.5)
    fc = model.fc if hasattr(model, "fc") else model.classifier
    ours, theirs = interleaved_medians(
        [
            lambda: fxtaylor.trace(model, x),
            lambda: list(tp.DependencyGraph().build_dependency(model, x).get_all_groups(ignored_layers=[fc])),
        ],
        rounds=1 if name == "densenet201" else 3,
    )
    report(benchmark, "ratio_vs_tp_build_and_groups", ours / theirs, 0.5)
