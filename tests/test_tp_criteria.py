"""torch-pruning's criteria through fxtaylor's graph score exactly as torch-pruning does."""
import functools

import torch
import torch.nn.functional as F
import torch_pruning as tp
import torchvision

import fxtaylor
from fxtaylor.importance import TorchPruningImportance


def _tp_reference(model, x, importance, group):
    root = next(m for m in group.members if m.kind == "producer")
    module = model.get_submodule(root.name)
    dg = tp.DependencyGraph().build_dependency(model, x)
    g = dg.get_pruning_group(module, dg.get_pruner_of_module(module).prune_out_channels, list(range(module.out_channels)))
    return importance(g).to(torch.float64)


def test_magnitude_scores_equal_torch_pruning():
    model = torchvision.models.resnet18(weights=None).eval()
    x = torch.randn(1, 3, 64, 64)
    tp_imp = tp.importance.GroupMagnitudeImportance(p=2)
    imp = TorchPruningImportance(model, x, tp_imp)
    groups = imp.graph.prunable_groups
    assert len(groups) == 12
    for g in groups:
        assert torch.allclose(imp.group_scores(g), _tp_reference(model, x, tp_imp, g), rtol=1e-6)


def test_taylor_uses_the_gradient_accumulated_over_the_observed_updates():
    model = torchvision.models.resnet18(weights=None, num_classes=4)
    x = torch.randn(1, 3, 32, 32)
    tp_imp = tp.importance.GroupTaylorImportance()
    imp = TorchPruningImportance(model, x, tp_imp)
    batches = [(torch.randn(4, 3, 32, 32), torch.randint(0, 4, (4,))) for _ in range(3)]
    with imp.observe():
        for xb, yb in batches:
            model.zero_grad()
            F.cross_entropy(model(xb), yb).backward()
    # reference: the same three gradients summed in .grad, then torch-pruning's own scores
    model.zero_grad()
    for xb, yb in batches:
        F.cross_entropy(model(xb), yb).backward()
    g = imp.graph.group_of("layer2.0.conv1")
    ref = _tp_reference(model, x, tp_imp, g)
    model.zero_grad(set_to_none=True)
    assert torch.allclose(imp.group_scores(g), ref, rtol=1e-5)
    assert all(p.grad is None for p in model.parameters())  # scoring put .grad back as it was


def test_runs_inside_the_loop():
    from torch.utils.data import DataLoader

    from fxtaylor.datasets import digits

    model = torchvision.models.resnet18(weights=None, num_classes=10)
    loader = DataLoader(digits("train", size=16, channels=3), batch_size=32, shuffle=True)
    factory = functools.partial(TorchPruningImportance, tp_importance=tp.importance.GroupTaylorImportance())
    r = fxtaylor.prune(model, loader, target_flops=0.7, criterion=factory, normalize=None, updates_between_prunes=2,
                       flops_per_prune=0.1, progress=False, measure_latency=False)
    assert r.reached and len(r.history) == 4  # 0.7 in three steps of 10 % of the FLOPs
