"""fxtaylor.prune: the loop reaches its target, resumes exactly, is reproducible, and refuses bad
input without touching anything."""
import math

import pytest
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, TensorDataset

import fxtaylor
from fxtaylor import FxTaylorError
from fxtaylor.datasets import digits
from fxtaylor.pruner import loop
from helpers import cloned_state


class TinyResNet(nn.Module):
    """Stem, one residual block (an add ties the stem's channels), a strided conv, classifier."""

    def __init__(self, width: int = 16):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        self.block = nn.Sequential(nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
                                   nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width))
        self.down = nn.Sequential(nn.Conv2d(width, 2 * width, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(2 * width), nn.ReLU())
        self.fc = nn.Linear(2 * width, 10)

    def forward(self, x):
        x = self.stem(x)
        x = torch.relu(x + self.block(x))
        return self.fc(self.down(x).mean((2, 3)))


def loaders(seed: int = 0):
    # 11 batches an epoch: runs cross epoch boundaries, which resuming must reproduce
    train = DataLoader(digits("train"), batch_size=128, shuffle=True, generator=torch.Generator().manual_seed(seed))
    val = DataLoader(digits("test"), batch_size=256)
    return train, val


def fresh(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return TinyResNet()


FAST = dict(target_flops=0.5, updates_between_prunes=3, maps_per_prune=4, progress=False, measure_latency=False, seed=0)


def sgd(model):
    return torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)


def test_reaches_the_flops_target_within_one_percent(tmp_path):
    model = fresh()
    train, val = loaders()
    r = fxtaylor.prune(model, train, val_loader=val, optimizer=sgd(model), **FAST)
    assert r.reached and r.stop_reason == "target reached"
    assert 0.5 * 0.99 <= r.flops_ratio <= 0.5, r.flops_ratio
    assert r.after["flops"] == fxtaylor.flops.count(model, torch.zeros(1, 1, 8, 8))[0]
    # every step but the last removed exactly maps_per_prune maps; FLOPs fall monotonically
    steps = [h for h in r.history if h["step"] != 0]
    assert all(h["removed"] == 4 for h in steps[:-1]) and 1 <= steps[-1]["removed"]
    assert all(a["flops"] > b["flops"] for a, b in zip(r.history, r.history[1:]))
    assert all(0 <= h["accuracy"] <= 1 for h in r.history)
    # no layer below its minimum: every conv keeps at least one channel, and the model runs
    assert all(c["after"] >= 1 for c in r.layers)
    assert model(torch.zeros(2, 1, 8, 8)).shape == (2, 10)
    assert r.model is model


def test_optimizer_state_follows_the_kept_channels():
    """Momentum / Adam moments of a kept channel are the ones it had before the cut."""
    for make in (lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9), lambda p: torch.optim.Adam(p, lr=1e-3)):
        model = fresh()
        opt = make(model.parameters())
        x, y = next(iter(loaders()[0]))
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        graph = fxtaylor.trace(model, x[:1])
        g = graph.group_of("block.0", "out")
        old_w = model.block[0].weight.detach().clone()
        old_state = {k: v.clone() for k, v in opt.state[model.block[0].weight].items()}
        old_in = opt.state[model.block[3].weight]
        old_in = {k: v.clone() for k, v in old_in.items()}
        fxtaylor.optim.prune_keeping_state(graph, g, [1, 4], opt)
        keep = [i for i in range(16) if i not in (1, 4)]
        w = model.block[0].weight
        assert w.shape[0] == 14 and torch.equal(w.detach(), old_w[keep])
        assert any(p is w for pg in opt.param_groups for p in pg["params"])
        for k, v in old_state.items():
            if v.dim():
                assert torch.equal(opt.state[w][k], v[keep]), k
        w3 = model.block[3].weight  # its input channels were cut
        for k, v in old_in.items():
            if v.dim():
                assert torch.equal(opt.state[w3][k], v[:, keep]), k
        opt.step()  # the optimizer works on the new parameters
        assert sum(len(pg["params"]) for pg in opt.param_groups) == len(list(model.parameters()))


def _same_model(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_same_seed_twice_gives_the_same_model():
    runs = []
    for _ in range(2):
        model = fresh()
        train, val = loaders()
        runs.append(fxtaylor.prune(model, train, optimizer=sgd(model), **FAST))
    assert runs[0].layers == runs[1].layers
    assert runs[0].arch["removed_units"] == runs[1].arch["removed_units"]
    assert _same_model(runs[0].model, runs[1].model)


class Stop(Exception):
    pass


def test_resume_after_a_crash_equals_the_uninterrupted_run(tmp_path):
    model = fresh()
    train, val = loaders()
    full = fxtaylor.prune(model, train, val_loader=val, optimizer=sgd(model), checkpoint_dir=tmp_path / "a", **FAST)

    def crash(rec):
        if rec["step"] == 5:  # after 15 updates: in the second epoch
            raise Stop

    model = fresh()
    train, val = loaders()
    with pytest.raises(Stop):
        fxtaylor.prune(model, train, val_loader=val, optimizer=sgd(model), checkpoint_dir=tmp_path / "b", on_step=crash, **FAST)
    model = fresh()  # a new process would start from the unpruned model again
    train, val = loaders()
    resumed = fxtaylor.prune(model, train, val_loader=val, optimizer=sgd(model), checkpoint_dir=tmp_path / "b", resume=True, **FAST)
    assert len(full.history) > 6  # the crash was mid-run
    assert full.arch == resumed.arch
    assert _same_model(full.model, resumed.model)
    strip = lambda h: [{k: v for k, v in r.items() if k != "time_s"} for r in h]  # noqa: E731
    assert strip(full.history) == strip(resumed.history)


def test_resume_without_the_optimizer_recreates_it(tmp_path):
    """The paper's default optimizer is rebuilt and its momentum restored from the checkpoint."""
    stop = lambda rec: (_ for _ in ()).throw(Stop) if rec["step"] == 2 else None  # noqa: E731
    model = fresh()
    full = fxtaylor.prune(model, loaders()[0], checkpoint_dir=tmp_path / "a", **FAST)
    with pytest.raises(Stop):
        fxtaylor.prune(fresh(), loaders()[0], checkpoint_dir=tmp_path / "b", on_step=stop, **FAST)
    resumed = fxtaylor.prune(fresh(), loaders()[0], checkpoint_dir=tmp_path / "b", resume=True, **FAST)
    assert _same_model(full.model, resumed.model)


def test_accuracy_floor_undoes_the_breaking_step():
    model = fresh()
    train, val = loaders()
    floor = 0.9  # an untrained model is far below: the first step breaks it
    acc0 = fxtaylor.pruner.measure.accuracy(model, val)
    r = fxtaylor.prune(model, train, val_loader=val, optimizer=sgd(model), min_accuracy=max(floor, acc0 + 0.5), **FAST)
    assert not r.reached and r.stop_reason.startswith("accuracy floor")
    assert r.history[-1]["reverted"] is True
    assert r.after["flops"] == r.before["flops"]  # the breaking step was undone
    assert r.model is not model  # the input model was pruned in place; the result is the kept one


# -- safe save / load ----------------------------------------------------------------------------


def test_save_load_round_trip_with_weights_only(tmp_path):
    import torchvision

    model = torchvision.models.resnet18(weights=None, num_classes=10)
    x = torch.randn(2, 3, 32, 32)
    graph = fxtaylor.trace(model, x[:1])
    for g in graph.prunable_groups[:4]:
        graph.prune(g, range(0, g.size, 3))
    # rebuild the record the loop would write: the removed units of the original graph
    fresh_graph = fxtaylor.trace(torchvision.models.resnet18(weights=None, num_classes=10), x[:1])
    kept = set(torch.cat([g.units for g in graph.groups]).tolist())
    removed = [u for g in fresh_graph.groups for u in g.units.tolist() if u not in kept]
    arch = {"kind": "pruned", "base": {"kind": "torchvision", "name": "resnet18", "kwargs": {"num_classes": 10}},
            "input_shape": [1, 3, 32, 32], "trace": {}, "removed_units": removed}
    fxtaylor.save(model, tmp_path / "m.pt", arch)
    assert not list(tmp_path.glob(".*tmp"))  # atomic: no temporary left
    loaded = fxtaylor.load(tmp_path / "m.pt")
    model.eval(), loaded.eval()
    assert torch.equal(model(x), loaded(x))
    raw = torch.load(tmp_path / "m.pt", weights_only=True)  # plain data, loadable without fxtaylor
    assert raw["arch"] == arch


def test_load_refuses_pickled_code(tmp_path):
    torch.save(TinyResNet(), tmp_path / "module.pt")  # a pickled nn.Module: loading it runs code
    with pytest.raises(FxTaylorError, match=r"refusing to load .*module\.pt: it needs pickled code"):
        fxtaylor.load(tmp_path / "module.pt")


def test_load_custom_architecture_needs_the_base(tmp_path):
    model = fresh()
    r = fxtaylor.prune(model, loaders()[0], **FAST)
    r.save(tmp_path / "m.pt")
    with pytest.raises(FxTaylorError, match="pass the unpruned model as base="):
        fxtaylor.load(tmp_path / "m.pt")
    base = fresh()
    before = cloned_state(base)
    loaded = fxtaylor.load(tmp_path / "m.pt", base=base)
    assert _same_model(loaded, model)
    assert all(torch.equal(v, base.state_dict()[k]) for k, v in before.items())  # base not modified


@pytest.mark.parametrize("width, message", [
    (24, "the rebuilt architecture does not match the saved weights"),
    (4, "the architecture record names channels the base model does not have"),
])
def test_load_detects_a_mismatching_architecture(tmp_path, width, message):
    model = fresh()
    r = fxtaylor.prune(model, loaders()[0], **FAST)
    r.save(tmp_path / "m.pt")
    with pytest.raises(FxTaylorError, match=message):
        fxtaylor.load(tmp_path / "m.pt", base=TinyResNet(width=width))


# -- bad input: a one-line error, nothing modified -------------------------------------------------


def _unchanged(model, before, directory=None, files=None):
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert model.stem[0].out_channels == 16
    if directory is not None:
        now = {p.name: p.read_bytes() for p in directory.iterdir()}
        assert now == files


@pytest.mark.parametrize("kwargs, message", [
    (dict(target_flops=0.0), r"target_flops must be a fraction of the original FLOPs in \(0, 1\), got 0.0"),
    (dict(target_flops=1.0), r"target_flops must be .* got 1.0"),
    (dict(target_flops=1.5), r"target_flops must be .* got 1.5"),
    (dict(target_flops=-0.2), r"target_flops must be .* got -0.2"),
    (dict(flops_reg=-1e-3), r"flops_reg \(λ\) must be >= 0, got -0.001"),
    (dict(flops_reg=math.nan), r"flops_reg \(λ\) must be >= 0, got nan"),
    (dict(min_accuracy=0.5), r"min_accuracy needs val_loader or evaluate"),
    (dict(resume=True), r"resume=True needs the checkpoint_dir"),
])
def test_bad_arguments(kwargs, message):
    model = fresh()
    before = cloned_state(model)
    args = {**FAST, **kwargs}
    with pytest.raises(FxTaylorError, match=message) as e:
        fxtaylor.prune(model, loaders()[0], **args)
    assert "\n" not in str(e.value)
    _unchanged(model, before)


def test_unreachable_target_everything_frozen():
    model = fresh()
    before = cloned_state(model)
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    with pytest.raises(FxTaylorError, match="nothing to prune: every channel group is frozen") as e:
        fxtaylor.prune(model, loaders()[0], ignored_layers=convs, **FAST)
    assert "touches ignored layer" in str(e.value)
    _unchanged(model, before)


def test_unreachable_target_below_what_the_prunable_layers_hold():
    model = fresh()
    before = cloned_state(model)
    with pytest.raises(FxTaylorError, match=r"target_flops=0.001 cannot be reached: pruning every prunable channel leaves \d"):
        fxtaylor.prune(model, loaders()[0], **{**FAST, "target_flops": 0.001})
    _unchanged(model, before)


@pytest.mark.parametrize("loader, message", [
    (DataLoader(TensorDataset(torch.zeros(0, 1, 8, 8), torch.zeros(0, dtype=torch.long)), batch_size=4), "yields no batches"),
    ([], "yields no batches"),
    (DataLoader(TensorDataset(torch.zeros(8, 1, 8, 8)), batch_size=4), r"must yield \(inputs, labels\) tensor pairs; got a list of 1"),
    ([torch.zeros(4, 1, 8, 8)], r"got a single tensor of shape \(4, 1, 8, 8\) \(no labels\)"),
])
def test_empty_or_label_less_loader(loader, message):
    model = fresh()
    before = cloned_state(model)
    with pytest.raises(FxTaylorError, match=message):
        fxtaylor.prune(model, loader, **FAST)
    _unchanged(model, before)


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    calls = {"n": 0}

    def loss_fn(out, y):
        calls["n"] += 1
        loss = nn.functional.cross_entropy(out, y)
        # the first call is the up-front check on the first batch; then steps of 3 updates: NaN at step 2, update 2
        return loss * math.nan if calls["n"] > 1 + 3 + 1 else loss

    model = fresh()
    with pytest.raises(FxTaylorError, match=r"the loss became nan at step 2, update 2; stopped \(the last good checkpoint is .*checkpoint.pt\)"):
        fxtaylor.prune(model, loaders()[0], loss_fn=loss_fn, checkpoint_dir=tmp_path, **{**FAST, "updates_between_prunes": 3})
    ckpt = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert [h["step"] for h in ckpt["history"]] == [0, 1]
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values() if v.is_floating_point())
    # and the run resumes from it (with a finite loss)
    r = fxtaylor.prune(fresh(), loaders()[0], checkpoint_dir=tmp_path, resume=True, **FAST)
    assert r.reached


def test_missing_or_corrupt_checkpoint(tmp_path):
    model = fresh()
    before = cloned_state(model)
    with pytest.raises(FxTaylorError, match=r"no checkpoint at .*checkpoint\.pt"):
        fxtaylor.prune(model, loaders()[0], checkpoint_dir=tmp_path, resume=True, **FAST)
    good = tmp_path / "good"
    with pytest.raises(Stop):
        fxtaylor.prune(fresh(), loaders()[0], checkpoint_dir=good, on_step=_stop_at(1), **FAST)
    data = (good / "checkpoint.pt").read_bytes()
    (good / "checkpoint.pt").write_bytes(data[: len(data) // 2])
    files = {p.name: p.read_bytes() for p in good.iterdir()}
    with pytest.raises(FxTaylorError, match=r"checkpoint .*checkpoint\.pt is corrupt or truncated"):
        fxtaylor.prune(model, loaders()[0], checkpoint_dir=good, resume=True, **FAST)
    _unchanged(model, before, good, files)


def _stop_at(step):
    def on_step(rec):
        if rec["step"] == step:
            raise Stop
    return on_step


def test_checkpoint_is_plain_data(tmp_path):
    with pytest.raises(Stop):
        fxtaylor.prune(fresh(), loaders()[0], checkpoint_dir=tmp_path, on_step=_stop_at(2), **FAST)
    ckpt = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert ckpt["format"] == loop.CHECKPOINT_FORMAT and ckpt["arch"]["kind"] == "pruned"
    assert len(ckpt["arch"]["removed_units"]) == 2 * FAST["maps_per_prune"]
    model = fxtaylor.models.build(ckpt["arch"], base=fresh())
    fxtaylor.saving.load_state(model, ckpt["state_dict"], "checkpoint")  # shapes match exactly


def test_model_is_left_alone_when_tracing_fails():
    class Functional(nn.Module):
        """Nothing fx can trace and no module called: not even partial tracing helps."""

        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.randn(10, 1, 3, 3))

        def forward(self, x):
            if x.sum() > 0:  # data-dependent control flow: not traceable
                x = x * 2
            return nn.functional.conv2d(x, self.w).mean((2, 3))

    model = Functional()
    before = cloned_state(model)
    with pytest.raises(fxtaylor.TraceError):
        fxtaylor.prune(model, loaders()[0], **FAST)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


def test_a_model_fx_cannot_trace_whole_is_pruned_through_its_parts():
    class Dynamic(TinyResNet):
        def forward(self, x):
            if x.sum() > 0:  # data-dependent control flow on the input: the rest is traced in parts
                x = x * 2
            return super().forward(x)

    torch.manual_seed(0)
    model = Dynamic()
    r = fxtaylor.prune(model, loaders()[0], **FAST)
    assert r.reached and 0.5 * 0.99 <= r.after["flops"] / r.before["flops"] <= 0.5
    assert model(torch.randn(2, 1, 8, 8)).shape == (2, 10)



@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_prune_and_resume_on_cuda(tmp_path):
    """Everything follows the model's device: batches, criterion, optimizer state, checkpoint."""
    model = fresh().cuda()
    r = fxtaylor.prune(model, loaders()[0], optimizer=sgd(model), val_loader=loaders()[1],
                       checkpoint_dir=tmp_path, on_step=_stop_at(10**6), **{**FAST, "measure_latency": True})
    assert r.reached and next(r.model.parameters()).is_cuda and r.speedup > 0
    with pytest.raises(Stop):
        fxtaylor.prune(fresh().cuda(), loaders()[0], checkpoint_dir=tmp_path / "b", on_step=_stop_at(2), **FAST)
    resumed = fxtaylor.prune(fresh().cuda(), loaders()[0], checkpoint_dir=tmp_path / "b", resume=True, **FAST)
    assert resumed.reached and [h["step"] for h in resumed.history[:3]] == [0, 1, 2]
    assert len(resumed.arch["removed_units"]) > 2 * FAST["maps_per_prune"]  # continued past step 2


def test_final_fine_tune_and_custom_evaluation():
    calls = []

    def evaluate(m):
        calls.append(sum(c.out_channels for c in m.modules() if isinstance(c, nn.Conv2d)))
        return 0.5

    r = fxtaylor.prune(fresh(), loaders()[0], evaluate=evaluate, final_updates=5, eval_every=2, **FAST)
    steps = [h["step"] for h in r.history]
    assert steps[-1] == "final" and r.history[-1]["loss"] is not None and r.after["accuracy"] == 0.5
    # evaluated before pruning, every second step, at the step that reached the target, after the final fine-tune
    evaluated = [h["step"] for h in r.history if h["accuracy"] is not None]
    last = steps[-2]
    assert evaluated == [0] + [s for s in steps[1:-1] if s % 2 == 0 or s == last] + ["final"]
    assert len(calls) == len(evaluated) and calls == sorted(calls, reverse=True)


def test_round_to_keeps_channel_counts_multiples():
    model = fresh()
    r = fxtaylor.prune(model, loaders()[0], round_to=4, **{**FAST, "maps_per_prune": 8})
    assert 0.5 * 0.99 <= r.flops_ratio <= 0.5 * 1.01
    widths = [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert widths != [16, 16, 16, 32] and all(w % 4 == 0 for w in widths), widths
