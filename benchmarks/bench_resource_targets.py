"""Pruning to a parameter-bytes or a peak-memory target: does the run end where it was asked to?

Goal: ``ratio_measured_over_target`` ≤ 1.01 for both resources —

- parameter bytes: the bytes of the pruned model's saved state dict (``torch.save`` of it,
  counted from the file) ÷ (target × the dense model's);
- peak activation memory: the pruned model's peak *measured* by a real forward at the
  deployment's batch size (:func:`fxtaylor.memory.measure`: the profiler's allocations on this
  CPU, ``max_memory_allocated`` on CUDA) ÷ (target × the dense model's, measured alike) — so the
  figure also carries the count's error against the measurement (docs/memory.md).

torchvision ResNet-18 and MobileNetV2 at 64×64 for bytes, 224×224 for memory (10 classes, random weights and images, learning
rate 0: what is measured is where the control loop stops, not accuracy), target 0.5, batch 8
for memory (where the count matches the measurement: docs/memory.md). ``extra_info`` also keeps
the FLOPs and parameter ratios each target left, and the steps it took.

CI (``--benchmark-disable``) runs ResNet-18 only.
"""
import io

import pytest
import torch
import torchvision
from torch.utils.data import DataLoader, TensorDataset

import fxtaylor
from fxtaylor import memory
from ratios import report

TARGET, BATCH, CLASSES = 0.5, 8, 10
SIDE = {"params": 64, "memory": 224}  # at 64 px oneDNN's per-call weight copies, which no count models, outweigh the maps


def saved_bytes(model):
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return buf.getbuffer().nbytes


def peak(model, x):
    return memory.measure(model, x, batch_size=BATCH, memory_format=torch.channels_last)


MEASURED = {"params": lambda m, x: saved_bytes(m), "memory": peak}


def run(name, resource):
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None, num_classes=CLASSES).eval()
    side = SIDE[resource]
    x = torch.randn(1, 3, side, side)
    dense = MEASURED[resource](model, x)
    data = TensorDataset(torch.randn(16, 3, side, side), torch.randint(0, CLASSES, (16,)))
    res = fxtaylor.prune(model, DataLoader(data, batch_size=4), **{f"target_{resource}": TARGET}, updates_between_prunes=1,
                         optimizer=torch.optim.SGD(model.parameters(), lr=0.0), deployment=fxtaylor.Deployment(batch_size=BATCH),
                         measure_latency=False, progress=False, seed=0)
    return res, MEASURED[resource](res.model.eval(), x) / dense


@pytest.mark.parametrize("resource", list(MEASURED))
@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2"])
def test_resource_target(benchmark, name, resource):
    if benchmark.disabled and name != "resnet18":
        pytest.skip("CI runs the smallest case only")
    res, ratio = benchmark.pedantic(run, args=(name, resource), rounds=1, iterations=1)
    assert res.reached, res.stop_reason
    report(benchmark, "ratio_measured_over_target", ratio / TARGET, 1.01)
    report(benchmark, "ratio_flops_left", res.flops_ratio, None)
    report(benchmark, "ratio_params_left", res.after["params"] / res.before["params"], None)
    benchmark.extra_info["steps"] = len(res.history) - 1
    assert ratio / TARGET <= 1.01


def test_memory_selection_orders(benchmark):
    """Why peak memory defaults to the knapsack order: the peak is a few tensors, and the rank
    order removes channels everywhere until those narrow (informational: steps and what is left)."""
    if benchmark.disabled:
        pytest.skip("informational: run with --benchmark-enable")

    def both():
        out = {}
        for order in ("rank", "knapsack"):
            torch.manual_seed(0)
            model = torchvision.models.resnet18(weights=None, num_classes=CLASSES)
            data = TensorDataset(torch.randn(16, 3, 64, 64), torch.randint(0, CLASSES, (16,)))
            out[order] = fxtaylor.prune(model, DataLoader(data, batch_size=4), target_memory=TARGET, selection=order,
                                        updates_between_prunes=1, optimizer=torch.optim.SGD(model.parameters(), lr=0.0),
                                        deployment=fxtaylor.Deployment(batch_size=BATCH), measure_latency=False,
                                        progress=False, seed=0)
        return out

    out = benchmark.pedantic(both, rounds=1, iterations=1)
    for order, res in out.items():
        assert res.reached, res.stop_reason
        benchmark.extra_info[f"{order}_steps"] = len(res.history) - 1
        report(benchmark, f"ratio_flops_left_{order}", res.flops_ratio, None)
        report(benchmark, f"ratio_params_left_{order}", res.after["params"] / res.before["params"], None)
