"""Pruning to a measured latency target on this CPU: does the run end where it was asked to?

Goal: ``ratio_measured_over_target`` ≤ 1.05 — the pruned model's latency, measured side by side
with the dense model at the end of the run (per-round ratio, :func:`fxtaylor.pruner.compare`),
÷ the target 0.5 — for torchvision ResNet-50 and MobileNetV2 at 224×224 and the digits
ResNet-18 (10 classes, 32×32), batch 1 and 32; and ``ratio_steps_slower`` = 0: no accepted step
measured slower than the model before it (beyond the check's noise).

The run is ``fxtaylor.prune(target_latency=0.5, flops_per_prune=0.05)`` — 5 % of the dense
latency per step, so about ten steps — on random images with the weights' random
initialisation and learning rate 0 (no download; what is measured here is the control loop,
not accuracy: docs/results.md compares accuracy at equal latency on digits). The latency tables
are built into a temporary cache, so their build time is part of every enabled run
(``extra_info["table"]``).

CI (``--benchmark-disable``) runs the digits ResNet-18 at batch 1 only, to a 0.8 target.
"""
import os
import tempfile

import pytest
import torch
import torchvision
from torch.utils.data import DataLoader, TensorDataset

import fxtaylor
from ratios import report

TARGET = 0.5
CASES = {"resnet50": (1000, 224), "mobilenet_v2": (1000, 224), "resnet18": (10, 32)}


def run(name, batch, target, per_prune, deployment=None):
    """One latency-targeted run; ``deployment``: more :class:`fxtaylor.Deployment` fields (the
    model trains on that device; ``benchmarks/gpu.py`` runs this on CUDA in float16)."""
    classes, side = CASES[name]
    torch.manual_seed(0)
    dep = fxtaylor.Deployment(batch_size=batch, **(deployment or {}))
    model = torchvision.models.get_model(name, weights=None, num_classes=classes).to(dep.device or "cpu")
    data = TensorDataset(torch.randn(16, 3, side, side), torch.randint(0, classes, (16,)))
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    with tempfile.TemporaryDirectory() as cache:
        old = os.environ.get("FXTAYLOR_CACHE")
        os.environ["FXTAYLOR_CACHE"] = cache
        try:
            return fxtaylor.prune(model, DataLoader(data, batch_size=4), target_latency=target, flops_per_prune=per_prune,
                                  updates_between_prunes=1, optimizer=opt, deployment=dep,
                                  progress=False, seed=0)
        finally:
            if old is None:
                del os.environ["FXTAYLOR_CACHE"]
            else:
                os.environ["FXTAYLOR_CACHE"] = old


def check(benchmark, res, name, batch, target):
    """Record a latency-targeted run and report its two goals: measured ÷ target ≤ 1.05, and no
    accepted step slower than the model before it (beyond 10 %, any check's noise here)."""
    ratios = [h["latency_ratio"] for h in res.history if "latency_ratio" in h]
    assert ratios[0] == 1.0 and res.after["latency_ms"] > 0
    # every accepted step was checked against the model before it; the history records its ratio
    slower = sum(b > a * 1.10 for a, b in zip(ratios, ratios[1:]))
    benchmark.extra_info.update(
        reached=res.reached, stop_reason=res.stop_reason, steps=len(ratios) - 1, history_ratios=[round(r, 4) for r in ratios],
        final_ratio=round(res.after["latency_ratio"], 4), final_noise=round(res.after["latency_ratio_noise"], 4),
        flops_ratio=round(res.flops_ratio, 4), rejected=res.config["rejected_cuts"], table=res.config["cost_model"]["table"],
        latency_ms={"dense": res.before["latency_ms"], "pruned": res.after["latency_ms"]},
        deployment=res.config["deployment"],
    )
    if benchmark.disabled:
        return
    report(benchmark, f"ratio_measured_over_target_{name}_b{batch}", res.after["latency_ratio"] / target, 1.05)
    report(benchmark, f"ratio_steps_slower_{name}_b{batch}", float(slower), 0.0)


@pytest.mark.parametrize("batch", [1, 32])
@pytest.mark.parametrize("name", list(CASES))
def test_latency_target(benchmark, name, batch):
    if benchmark.disabled and (name != "resnet18" or batch != 1):
        pytest.skip("CI runs the smallest case only")
    target = TARGET if not benchmark.disabled else 0.8
    res = benchmark.pedantic(run, args=(name, batch, target, 0.05 if not benchmark.disabled else 0.1), rounds=1, iterations=1)
    check(benchmark, res, name, batch, target)
