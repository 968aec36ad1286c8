"""FLOPs counting: fvcore's per-module analysis (``fxtaylor.flops.count``, what the loop and the
FLOPs regulariser re-run after every pruning step) vs torch's ``FlopCounterMode`` with its
per-module counts, on ResNet-50, DenseNet-121 and MobileNetV2 at 224×224, eval mode, no_grad.

Informational: the issue sets no goal, so ``ratio_fvcore_vs_flopcounter`` is reported without
one; the absolute medians in seconds (what a step pays) are in ``extra_info`` with both totals.

The two agree: FlopCounterMode counts only convolutions and matrix products, at 2 flops per
multiply-add; fvcore counts 1 per multiply-add and, with fxtaylor's handles, batch norm and
pooling too. So fvcore's conv + linear modules must equal FlopCounterMode's total / 2 exactly,
and fvcore's total may exceed it only by its batch-norm and pooling share, measured (torch 2.14,
fvcore 0.1.5, 224×224 and 64×64 alike) at 0.57 % for ResNet-50, 1.16 % for DenseNet-121 and
4.46 % for MobileNetV2 (whose depthwise convs are cheap next to their batch norms);
``EXTRA_BOUND`` allows a little over that.
"""
import pytest
import torch
import torch.nn as nn
import torchvision
from torch.utils.flop_counter import FlopCounterMode

import fxtaylor.flops
from ratios import interleaved_medians, report

EXTRA_BOUND = {"resnet50": 0.01, "densenet121": 0.02, "mobilenet_v2": 0.05}
MATMUL_OPS = {"convolution", "addmm", "mm"}  # what FlopCounterMode finds in these models


def flop_counter_mode(model, x):
    """FlopCounterMode's total and per-module counts of one forward pass."""
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        model(x)
    return fc.get_total_flops(), fc.get_flop_counts()


@pytest.mark.parametrize("name", ["resnet50", "densenet121", "mobilenet_v2"])
def test_fvcore_vs_flopcounter(benchmark, name):
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None).eval()
    x = torch.randn(1, 3, 224, 224)
    total, own = benchmark.pedantic(fxtaylor.flops.count, args=(model, x), rounds=5, warmup_rounds=1)
    fc_total, fc_modules = flop_counter_mode(model, x)

    # FlopCounterMode saw only conv/matmul ops, so conv + linear are what both count, module by
    # module (its module names are prefixed with the model's class name)
    assert {op.__name__.split(".")[0] for op in fc_modules["Global"]} <= MATMUL_OPS, fc_modules["Global"]
    prefix = type(model).__name__ + "."
    layers = [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    for n in layers:
        assert sum(fc_modules[prefix + n].values()) == 2 * own[n], n
    conv_linear = sum(own[n] for n in layers)
    assert 2 * conv_linear == fc_total
    extra = total / conv_linear - 1  # fvcore's batch-norm and pooling share
    assert 0 <= extra <= EXTRA_BOUND[name], extra
    if benchmark.disabled:
        return
    fv, fcm = interleaved_medians([lambda: fxtaylor.flops.count(model, x), lambda: flop_counter_mode(model, x)], rounds=7)
    benchmark.extra_info.update(
        median_s={"fvcore": round(fv, 4), "flop_counter_mode": round(fcm, 4)},
        total_flops={"fvcore": total, "flop_counter_mode": fc_total, "fvcore_conv_linear": conv_linear},
        fvcore_extra_over_conv_linear=round(extra, 5),
    )
    report(benchmark, "ratio_fvcore_vs_flopcounter", fv / fcm, None)
