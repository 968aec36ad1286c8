"""The building blocks keep the optimizer right, and a pruned model saves without an arch record.

- ``graph.prune(..., optimizer=opt)``: the optimizer's parameters and state follow the cut, so
  the cut layer keeps training; without it, an optimizer built before the cut holds parameters
  the model no longer uses, and stepping it warns (once, naming the first) — rebuilding it, or
  fxtaylor's own loops, never warn.
- the model carries its arch record: ``fxtaylor.save(model, path)`` needs no ``arch``; the
  unpruned model's record given for a pruned model becomes the base of its pruning record; a
  record that cannot rebuild the model is refused at save time, and a file saved with one
  (written before these checks) explains on load what went wrong.

Models: torchvision ResNet-18 (10 classes, untrained) at 32×32.
"""
from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision

import fxtaylor
from fxtaylor import saving
from fxtaylor.errors import FxTaylorError
from fxtaylor.graph import StaleOptimizerWarning, arch_of

RESNET18 = {"kind": "torchvision", "name": "resnet18", "kwargs": {"num_classes": 10}}


def resnet() -> nn.Module:
    torch.manual_seed(0)
    return torchvision.models.resnet18(weights=None, num_classes=10)


def batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(4, 3, 32, 32, generator=g), torch.randint(0, 10, (4,), generator=g)


def train_step(model: nn.Module, opt: torch.optim.Optimizer, seed: int = 0) -> None:
    x, y = batch(seed)
    model.train()
    opt.zero_grad()
    F.cross_entropy(model(x), y).backward()
    opt.step()


def stale(caught) -> list[warnings.WarningMessage]:
    return [w for w in caught if issubclass(w.category, StaleOptimizerWarning)]


def same_outputs(a: nn.Module, b: nn.Module) -> None:
    x = batch(7)[0]
    a.eval(), b.eval()
    with torch.no_grad():
        ya, yb = a(x), b(x)
    assert ya.shape == yb.shape
    assert torch.allclose(ya, yb, rtol=1e-5, atol=1e-5 * float(ya.abs().max()))


def cut_some(model: nn.Module, optimizer=None, groups=("layer1.0.conv1", "layer2.0.conv1", "layer3.1.conv1")):
    graph = fxtaylor.trace(model, batch()[0][:1])
    for name in groups:
        g = graph.group_of(name)
        graph.prune(g, list(range(0, g.size, 4)), optimizer=optimizer)
    return graph


# -- the optimizer ---------------------------------------------------------------------------------


def test_prune_with_the_optimizer_keeps_the_layer_training_and_moves_its_state():
    model = resnet()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    train_step(model, opt)
    old_w = model.layer2[0].conv1.weight.detach().clone()
    old_m = opt.state[model.layer2[0].conv1.weight]["momentum_buffer"].clone()
    graph = fxtaylor.trace(model, batch()[0][:1])
    g = graph.group_of("layer2.0.conv1")
    gone = [0, 3, 9]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        graph.prune(g, gone, optimizer=opt)
        keep = [i for i in range(128) if i not in gone]
        w = model.layer2[0].conv1.weight
        assert w.shape[0] == 125 and torch.equal(w.detach(), old_w[keep])
        assert torch.equal(opt.state[w]["momentum_buffer"], old_m[keep])  # the kept channels' momentum
        assert any(p is w for pg in opt.param_groups for p in pg["params"])
        before = w.detach().clone()
        train_step(model, opt, seed=1)
        assert not torch.equal(before, w.detach())  # the cut layer still trains
    assert not stale(caught)


def test_an_optimizer_the_cut_did_not_follow_warns_once_when_it_steps():
    model = resnet()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    train_step(model, opt)
    graph = fxtaylor.trace(model, batch()[0][:1])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        graph.prune(graph.group_of("layer2.0.conv1"), [0, 3, 9])  # no optimizer
        assert not stale(caught)  # the cut itself does not warn: an optimizer that never steps is fine
        w = model.layer2[0].conv1.weight.detach().clone()
        train_step(model, opt, seed=1)
        assert torch.equal(w, model.layer2[0].conv1.weight.detach())  # what the warning is about: it no longer trains
        train_step(model, opt, seed=2)
    found = stale(caught)
    assert len(found) == 1, [str(w.message) for w in found]  # once per optimizer
    text = str(found[0].message)
    assert "first: layer2.0.conv1.weight" in text and "4 parameters" in text  # conv1, bn1 weight and bias, conv2
    assert "pass optimizer= to graph.prune" in text and "build the optimizer again after the cut" in text
    assert found[0].filename == __file__  # it points at the user's step, not into torch

    fresh = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)  # rebuilt after the cut
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        before = model.layer2[0].conv1.weight.detach().clone()
        train_step(model, fresh, seed=3)
        assert not torch.equal(before, model.layer2[0].conv1.weight.detach())
    assert not stale(caught)


def test_the_optimizer_argument_is_checked_before_anything_is_cut():
    model = resnet()
    graph = fxtaylor.trace(model, batch()[0][:1])
    g = graph.group_of("layer2.0.conv1")
    with pytest.raises(FxTaylorError, match=r"optimizer must be a torch.optim.Optimizer or None, got str"):
        graph.prune(g, [0], optimizer="sgd")
    assert g.size == 128 and model.layer2[0].conv1.out_channels == 128 and arch_of(model) is None


def test_a_pruner_run_with_its_optimizer_never_warns_and_saves_without_a_record(tmp_path):
    model = resnet()
    base = resnet()  # the same unpruned model (same seed)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = batch()[0][:1]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pruner = fxtaylor.Pruner(model, x, target_flops=0.8, optimizer=opt, maps_per_prune=64, progress=False)
        steps = 0
        while not pruner.done and steps < 6:
            with pruner.observe():
                for u in range(2):
                    train_step(model, opt, seed=10 * steps + u)
            pruner.step()
            steps += 1
        train_step(model, opt, seed=99)
    assert not stale(caught), [str(w.message) for w in stale(caught)]
    assert steps >= 2 and model.layer1[0].conv1.out_channels + model.layer4[0].conv1.out_channels < 64 + 512
    # no record passed anywhere: the model carries how it was pruned (from a custom base)
    fxtaylor.save(model, tmp_path / "own.pt")
    with pytest.raises(FxTaylorError, match="pass the unpruned model as base="):
        fxtaylor.load(tmp_path / "own.pt")
    same_outputs(model, fxtaylor.load(tmp_path / "own.pt", base=base))
    # the base model's record (the common mistake) becomes the base of the pruning record
    fxtaylor.save(model, tmp_path / "named.pt", RESNET18)
    raw = torch.load(tmp_path / "named.pt", weights_only=True)
    assert raw["arch"]["kind"] == "pruned" and raw["arch"]["base"] == RESNET18
    same_outputs(model, fxtaylor.load(tmp_path / "named.pt"))


# -- saving what a channel graph made ------------------------------------------------------------


def test_a_model_pruned_through_a_channel_graph_round_trips(tmp_path):
    model = resnet()
    keys = list(model.state_dict())
    cut_some(model)
    arch = arch_of(model)
    assert arch["kind"] == "pruned" and arch["base"] == {"kind": "custom"} and arch["input_shape"] == [1, 3, 32, 32]
    assert list(model.state_dict()) == keys  # the record is no parameter or buffer
    model = copy.deepcopy(model)  # and a copy carries it
    fxtaylor.save(model, tmp_path / "m.pt", RESNET18)
    loaded = fxtaylor.load(tmp_path / "m.pt")
    same_outputs(model, loaded)
    assert arch_of(loaded) == torch.load(tmp_path / "m.pt", weights_only=True)["arch"]  # the loaded model knows it too


def test_pruned_twice_traced_again_chains_the_records(tmp_path):
    model = resnet()
    cut_some(model)
    fxtaylor.save(model, tmp_path / "once.pt", RESNET18)
    loaded = fxtaylor.load(tmp_path / "once.pt")
    cut_some(loaded, groups=("layer1.1.conv1", "layer4.0.conv1"))  # traced again, pruned more
    fxtaylor.save(loaded, tmp_path / "twice.pt")  # no arch: load -> prune -> save
    arch = torch.load(tmp_path / "twice.pt", weights_only=True)["arch"]
    assert arch["kind"] == "pruned" and arch["base"]["kind"] == "pruned" and arch["base"]["base"] == RESNET18
    again = fxtaylor.load(tmp_path / "twice.pt")
    assert again.layer4[0].conv1.out_channels == 384
    same_outputs(loaded, again)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 16, 3, padding=1)
        self.bn = nn.BatchNorm2d(16)
        self.b = nn.Conv2d(16, 8, 3, padding=1)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        return self.fc(self.b(F.relu(self.bn(self.a(x)))).mean((2, 3)))


def test_a_custom_model_loads_with_its_base(tmp_path):
    torch.manual_seed(0)
    model = Net()
    base = Net()
    base.load_state_dict(model.state_dict())
    graph = fxtaylor.trace(model, torch.randn(1, 3, 8, 8))
    graph.prune(graph.group_of("a"), [1, 5, 6])
    fxtaylor.save(model, tmp_path / "m.pt")
    with pytest.raises(FxTaylorError, match="pass the unpruned model as base="):
        fxtaylor.load(tmp_path / "m.pt")
    same_outputs(model, fxtaylor.load(tmp_path / "m.pt", base=base))
    with pytest.raises(FxTaylorError, match=r"the rebuilt architecture does not match the saved weights .*the base= model "
                                            r"must be the unpruned model"):
        fxtaylor.load(tmp_path / "m.pt", base=model)  # the pruned model is not its base


# -- refused at save time, nothing written --------------------------------------------------------


def test_a_model_cut_by_torch_pruning_after_the_trace_saves_its_widths(tmp_path):
    """README's building blocks: fxtaylor's cut, then torch-pruning's pruner driven by the
    criterion. The record then is resized to the widths now (which channels went is not
    needed: the weights come from the file); loaded with the unpruned model as base, or by name
    where the base is named."""
    import torch_pruning as tp

    model = resnet()
    cut_some(model)
    x = batch()[0][:1]
    dg = tp.DependencyGraph().build_dependency(model, example_inputs=x)
    dg.get_pruning_group(model.layer4[1].conv1, tp.prune_conv_out_channels, idxs=[0, 1]).prune()
    assert model.layer4[1].conv1.out_channels == 510 and arch_of(model) is None
    fxtaylor.save(model, tmp_path / "m.pt")
    assert torch.load(tmp_path / "m.pt", weights_only=True)["arch"]["kind"] == "resized"
    back = fxtaylor.load(tmp_path / "m.pt", base=resnet())
    assert back.layer4[1].conv1.out_channels == 510
    same_outputs(model, back)
    # the same through a file loaded by name: the record's root is torchvision, no base= needed
    named = fxtaylor.load(_saved(resnet(), tmp_path / "named.pt", RESNET18))
    imp = fxtaylor.TaylorImportance(named, x)
    with imp.observe():
        F.cross_entropy(named(batch()[0]), batch()[1]).backward()
    tp.pruner.BasePruner(named, x, importance=imp, pruning_ratio=0.25, ignored_layers=[named.fc]).step()
    assert named.layer1[0].conv1.out_channels < 64
    fxtaylor.save(named, tmp_path / "n.pt")
    same_outputs(named, fxtaylor.load(tmp_path / "n.pt"))


def _saved(model, path, arch):
    fxtaylor.save(model, path, arch)
    return path


def test_a_model_changed_by_other_means_after_the_cut_is_refused(tmp_path):
    """A change that is not a channel cut (a tensor added, one grown) after fxtaylor's last cut
    cannot be recorded: refused, nothing written."""
    model = resnet()
    cut_some(model)
    model.extra = nn.Linear(3, 3)  # a module added by hand
    with pytest.raises(FxTaylorError, match=r"cannot save .*m\.pt: the model was changed by other means after fxtaylor last "
                                            r"pruned or loaded it \(extra\.bias is new"):
        fxtaylor.save(model, tmp_path / "m.pt")
    with pytest.raises(FxTaylorError, match=r"arch does not rebuild this model"):
        fxtaylor.save(model, tmp_path / "m.pt", RESNET18)
    assert not list(tmp_path.iterdir())


def test_a_record_that_cannot_rebuild_the_model_is_refused(tmp_path):
    model = resnet()
    with pytest.raises(FxTaylorError, match=r"fxtaylor has no arch record of this model .*pass arch="):
        fxtaylor.save(model, tmp_path / "m.pt")  # never pruned, never loaded: nothing is known
    other = {"kind": "torchvision", "name": "resnet18", "kwargs": {}}  # 1000 classes
    with pytest.raises(FxTaylorError, match=r"arch does not rebuild this model \(2 tensors of other shapes; first: fc\.weight: "
                                            r"arch \[1000, 512\], the model \[10, 512\]\)"):
        fxtaylor.save(model, tmp_path / "m.pt", other)
    cut_some(model)
    with pytest.raises(FxTaylorError, match=r"arch builds torchvision resnet18\(\), which is not the model this one was pruned "
                                            r"from .*fc\.weight"):
        fxtaylor.save(model, tmp_path / "m.pt", other)
    wrong = {**arch_of(model), "removed_units": arch_of(model)["removed_units"][:-1]}
    with pytest.raises(FxTaylorError, match=r"arch does not describe how this model was pruned"):
        fxtaylor.save(model, tmp_path / "m.pt", wrong)
    assert not list(tmp_path.iterdir())


# -- files written with a wrong record explain on load ---------------------------------------------


def test_a_pruned_model_saved_with_its_unpruned_record_explains_on_load(tmp_path):
    model = resnet()
    cut_some(model)
    # as fxtaylor.save wrote it before it checked the record: the base model's record, pruned weights
    saving.atomic_save({"format": saving.MODEL_FORMAT, "arch": RESNET18, "meta": {},
                        "state_dict": {k: v.detach().clone() for k, v in model.state_dict().items()}}, tmp_path / "old.pt")
    with pytest.raises(FxTaylorError, match=r"the rebuilt architecture does not match the saved weights \(\d+ shape mismatches.*"
                                            r"saved with its unpruned architecture's record.*fxtaylor\.save\(model, path\) "
                                            r"\(its pruning is recorded\) or result\.save\(path\)"):
        fxtaylor.load(tmp_path / "old.pt")
