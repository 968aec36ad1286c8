"""Real speed-up of a model pruned to half its FLOPs: CPU latency of the dense model ÷ the
pruned one, against the FLOP ratio.

Goal: ``ratio_speedup_over_flop_ratio_b1`` and ``_b32`` ≥ 0.9, i.e. the measured speed-up is at
least 0.9 × the FLOPs saved (F0 / F1 ≈ 2), for ResNet-50 and MobileNetV2 at 224×224, batch 1
and 32.

A copy of the model is cut once to 50 % of its FLOPs with ``cut(RandomImportance(m, x,
normalize=None), 0.5·F0)`` (one-shot, the same selection and surgery as the loop; FLOPs by fvcore,
asserted to land in the loop's band [0.495, 0.5] × F0). Weights are torchvision's random
initialisation (no download), so no criterion has anything to find in them: random scores
thin every group by about the same fraction (~30 % of the channels halves the FLOPs), the shape
of a typically pruned network. (Weight magnitudes on random weights, ℓ2-normalised, rank whole
wide groups lowest — n similar scores normalise to ≈1/√n each — and the cut empties ResNet-50's
layer3/layer4 residual streams to one channel: a degenerate architecture that times nothing
real.)

Parametrised by ``round_to`` (1: any channel count; 8: every group kept at a multiple of 8,
which oneDNN's vectorised kernels prefer).

Latency: :func:`fxtaylor.latency.measure` (torch.utils.benchmark; eval mode, inference mode,
warm-up, dense and pruned alternating round by round, medians) on the CPU deployment in
float32 with the CPU's default memory format; torch's default thread count.
The raw speed-up, the FLOP ratio and both latencies are in ``extra_info``.
"""
import copy
import functools

import pytest
import torch
import torchvision

import fxtaylor
from fxtaylor.latency import Deployment, measure
from fxtaylor.pruner.select import cut
from ratios import report

SIDE = 224
TARGET = 0.5
# Seconds of timing per model (÷ 10): a dense ResNet-50 forward at batch 32 takes seconds on
# 2 cores, so little time there keeps the enabled run of this file within a few minutes.
ROUNDS = {1: 30, 32: 5}
CI_BATCH = 2  # disabled mode (CI): one forward at this batch instead of 32


@functools.lru_cache(maxsize=None)
def dense_and_pruned(name, round_to):
    """(dense, pruned, F0, F1): the model, and a copy cut to half its FLOPs; shared by the batch
    sizes (the FLOPs of one 224×224 image; the ratio is the same at any batch)."""
    torch.manual_seed(0)
    dense = torchvision.models.get_model(name, weights=None).eval()
    pruned = copy.deepcopy(dense)
    imp = fxtaylor.RandomImportance(pruned, torch.randn(1, 3, SIDE, SIDE), normalize=None, seed=0)
    f0 = imp.total_flops()
    cut(imp, TARGET * f0, round_to=round_to)
    return dense, pruned.eval(), f0, imp.total_flops()  # the second count is fvcore's on the pruned model


def forward(model, x):
    with torch.inference_mode():
        return model(x)


@pytest.mark.parametrize("round_to", [1, 8])
@pytest.mark.parametrize("batch", [1, 32])
@pytest.mark.parametrize("name", ["resnet50", "mobilenet_v2"])
def test_speedup_at_half_flops(benchmark, name, batch, round_to):
    dense, pruned, f0, f1 = dense_and_pruned(name, round_to)
    if round_to > 1:
        assert all(m.out_channels % round_to == 0 for m in pruned.modules() if isinstance(m, torch.nn.Conv2d))
    assert 0.495 <= f1 / f0 <= 0.5, f1 / f0
    # CI runs one forward: a batch of 32 ResNet-50 images costs seconds and exercises nothing more
    x = torch.randn(batch if not benchmark.disabled else min(batch, CI_BATCH), 3, SIDE, SIDE)
    out = benchmark.pedantic(forward, args=(pruned, x), rounds=3, warmup_rounds=1)
    assert out.shape == (x.shape[0], 1000) and torch.isfinite(out).all()
    assert sum(p.numel() for p in pruned.parameters()) < sum(p.numel() for p in dense.parameters())
    if benchmark.disabled:
        return
    timings = measure([dense, pruned], x, Deployment(device="cpu", batch_size=batch), min_run_time=ROUNDS[batch] * 0.1,
                      rounds=ROUNDS[batch] if batch == 1 else 5)
    t_dense, t_pruned = (t.median_ms for t in timings)
    speedup, flop_ratio = t_dense / t_pruned, f0 / f1
    benchmark.extra_info.update(
        latency_ms={"dense": round(t_dense, 3), "pruned": round(t_pruned, 3)},
        speedup=round(speedup, 4), flop_ratio=round(flop_ratio, 4), flops={"dense": f0, "pruned": f1},
    )
    report(benchmark, f"ratio_speedup_over_flop_ratio_b{batch}_round{round_to}", speedup / flop_ratio, 0.9, better="higher")
