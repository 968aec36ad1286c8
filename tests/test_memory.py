"""Peak activation memory: the liveness count against real measurements, its predictions for a
cut against the re-count, and the cost model the pruner uses (fxtaylor.memory, docs/memory.md)."""
import pytest
import torch
import torch.nn as nn
import torchvision

import fxtaylor
from fxtaylor import memory
from fxtaylor.cost.memory_cost import MemoryCost

CL = torch.channels_last


def _model(name):
    torch.manual_seed(0)
    return getattr(torchvision.models, name)(weights=None).eval()


def _cuts(graph, share=0.3, seed=0):
    """``share`` of every prunable group, chosen at random (what the prediction must follow)."""
    g = torch.Generator().manual_seed(seed)
    cuts = []
    for gr in graph.prunable_groups:
        k = min(int(gr.size * share), gr.size - max(gr.min_keep, 1))
        if k > 0:
            cuts.append((gr, torch.randperm(gr.size, generator=g)[:k].sort().values))
    return cuts


def test_counts_what_is_allocated_and_frees_after_last_use():
    """Views and in-place ops allocate nothing; a tensor dies after its last use."""
    m = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(8, 4, 1), nn.Flatten())
    run = memory.estimate(m, torch.randn(1, 3, 8, 8))
    a, b = 8 * 64 * 4, 4 * 64 * 4  # the conv outputs; relu_ and flatten add nothing
    assert run.nbytes == [a, b]
    assert run.peak == a + b  # conv2's output is made while conv1's is still read
    assert run.on_meta


def test_batch_size_scales_the_peak():
    m = _model("mobilenet_v2")
    one = memory.estimate(m, torch.randn(1, 3, 64, 64)).peak
    four = memory.estimate(m, torch.randn(1, 3, 64, 64), batch_size=4).peak
    assert four == pytest.approx(4 * one, rel=1e-3)
    half = memory.estimate(m, torch.randn(1, 3, 64, 64), batch_size=4, dtype=torch.float16).peak
    assert half == pytest.approx(four / 2, rel=1e-3)


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2", "shufflenet_v2_x0_5"])
def test_estimate_matches_the_cpu_profiler(name):
    """Channels-last at batch 8, where activations dominate: measured agreement is within 0.1 %
    (oneDNN's per-call weight copies are the rest; docs/memory.md); 10 % leaves any CPU room."""
    m, x = _model(name), torch.randn(1, 3, 96, 96)
    est = memory.estimate(m, x, batch_size=8, memory_format=CL).peak
    got = memory.measure(m, x, batch_size=8, memory_format=CL)
    assert est == pytest.approx(got, rel=0.10)


def test_measure_does_not_change_the_model():
    m = _model("resnet18").train()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    memory.measure(m, torch.randn(1, 3, 32, 32), batch_size=2, memory_format=CL)
    memory.estimate(m, torch.randn(1, 3, 32, 32), batch_size=2)
    assert m.training and all(torch.equal(before[k], v) for k, v in m.state_dict().items())
    assert not m._forward_hooks and not m._forward_pre_hooks
    assert m.conv1.weight.is_contiguous()


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2"])
def test_prediction_after_a_cut_matches_the_recount(name):
    m, x = _model(name), torch.randn(1, 3, 64, 64)
    graph = fxtaylor.trace(m, x)
    cost = MemoryCost().sync(graph, graph.example_args)
    L = cost.layers
    now = cost.total()
    # the additive model is the count at the current widths
    assert cost.predict() == pytest.approx(now, rel=1e-9)
    assert cost.remainder() + sum(cost.layer_cost(n, ci, co) for n, ci, co in zip(L.names, L.cin, L.cout)) \
        == pytest.approx(now, rel=1e-9)
    cuts = _cuts(graph)
    units = torch.cat([g.units[c] for g, c in cuts])
    predicted = cost.predict_after(units)
    graph.prune_many(cuts)
    counted = cost.sync(graph, graph.example_args).total()
    assert counted < now
    assert predicted == pytest.approx(counted, rel=0.01)


def test_layer_costs_feed_selection_and_lambda():
    m, x = _model("resnet18"), torch.randn(1, 3, 64, 64)
    graph = fxtaylor.trace(m, x)
    cost = MemoryCost().sync(graph, graph.example_args)
    # one small chunk of the group holding the stem's channels (live at the peak at 64 px):
    # the greedy selection's additive saving is the prediction's
    g = graph.group_of("conv1")
    units = g.units[:4]
    L = cost.layers
    saved = cost.saving({i: L.delta(i, units) for i in L.of_group[g.index]})
    assert saved > 0
    assert cost.total() - saved == pytest.approx(cost.predict_after(units), rel=1e-6)
    uc = cost.unit_costs()
    assert uc.shape == graph.group_of_unit.shape and float(uc[units].min()) > 0
    assert 0 < cost.reachable() < 1


def test_describe_and_format():
    m, x = _model("resnet18"), torch.randn(1, 3, 32, 32)
    graph = fxtaylor.trace(m, x)
    cost = MemoryCost().sync(graph, graph.example_args)
    d = cost.describe()
    assert d["resource"] == "memory" and d["unit"] == "bytes" and d["method"].startswith("liveness")
    assert d["estimate_bytes"] == cost.total() and d["measured_bytes"] is None
    assert MemoryCost.format(3 * 2**20) == "3.0 MiB" and MemoryCost.format(512) == "512 B"
    assert MemoryCost.name == "memory" and MemoryCost.key == "peak_memory_bytes"


def test_real_tensors_when_meta_cannot_run():
    class ReadsValues(nn.Module):  # .item(): no value on meta
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3, padding=1)

        def forward(self, x):
            y = self.conv(x)
            return y * float(y.abs().max().item() > -1)

    run = memory.estimate(ReadsValues(), torch.randn(1, 3, 8, 8))
    assert not run.on_meta and run.peak >= 2 * 8 * 64 * 4


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_measurement_close_to_the_count():
    m, x = _model("resnet18").cuda(), torch.randn(1, 3, 224, 224, device="cuda")
    got = memory.measure(m, x, batch_size=8, memory_format=CL)
    est = memory.estimate(m, x, batch_size=8, memory_format=CL).peak
    assert got >= est * 0.95 and got == pytest.approx(est, rel=0.25)  # + cuDNN workspaces
    from fxtaylor.latency import Deployment

    graph = fxtaylor.trace(m, x)
    cost = MemoryCost(Deployment(device="cuda", batch_size=8)).sync(graph, graph.example_args)
    assert cost.total() == cost.measured_bytes and cost.describe()["method"] == "cuda max_memory_allocated"
