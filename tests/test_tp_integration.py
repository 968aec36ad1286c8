"""fxtaylor's criteria inside torch-pruning's own pruner (global ranking)."""
import pytest
import torch
import torch.nn.functional as F
import torch_pruning as tp
import torchvision

import fxtaylor

X = torch.randn(1, 3, 64, 64)


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2", "densenet121", "efficientnet_b0"])
def test_base_pruner_prunes_with_taylor_importance(name):
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None)
    head = model.fc if hasattr(model, "fc") else model.classifier
    imp = fxtaylor.TaylorImportance(model, X, flops_reg=1e-3)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    with imp.observe():
        for _ in range(2):
            loss = F.cross_entropy(model(torch.randn(4, 3, 64, 64)), torch.randint(0, 1000, (4,)))
            opt.zero_grad()
            loss.backward()
            opt.step()
    params = sum(p.numel() for p in model.parameters())
    pruner = tp.pruner.BasePruner(model, X, importance=imp, global_pruning=True, pruning_ratio=0.2, ignored_layers=[head])
    pruner.step()
    model.eval()
    assert model(X).shape == (1, 1000)
    assert sum(p.numel() for p in model.parameters()) < 0.95 * params
    # the model changed under the criterion: ranking again needs new observations
    with pytest.raises(fxtaylor.FxTaylorError, match="reset"):
        imp(next(iter(pruner.DG.get_all_groups(ignored_layers=[head]))))
    imp.reset()
    with imp.observe():
        F.cross_entropy(model(torch.randn(2, 3, 64, 64)), torch.tensor([1, 2])).backward()
    assert imp.examples == 2
