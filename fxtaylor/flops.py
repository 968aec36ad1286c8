"""Counting FLOPs: per-module counts from fvcore, with fxtaylor's counting conventions.

fvcore's ``FlopCountAnalysis(...).by_module()`` counts each leaf module's operations (one fused
multiply-add = one flop). :class:`fxtaylor.cost.FlopsCost` turns these counts into what each
layer costs at other widths and what each channel costs; counts are taken from a fresh analysis
after every pruning step (fvcore caches per analysis object).

Counting conventions (``HANDLES``): conv/linear/matmul/einsum/SDPA multiply-adds, batch/layer
norm and pooling as fvcore counts them (one per input element for pooling); elementwise
activations, residual adds and SE scalings count 0 — memory-bound and fused in deployment. At
one op per output element they would add 0.37 % to resnet50, 0.55 % to densenet121, 2.0 % to
mobilenet_v2 and 2.2 % to efficientnet_b0 (224×224; docs/criterion.md).
"""
from __future__ import annotations

import logging
import warnings
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn as nn
from fvcore.nn import FlopCountAnalysis
from fvcore.nn.jit_handles import elementwise_flop_counter, get_shape

from .devices import device_of
from .modes import in_eval

MISSING = "–"  # printed for a value a run did not record (en dash: reads as "none", not as minus)


_ZERO = [
    "aten::add", "aten::add_", "aten::sub", "aten::sub_", "aten::mul", "aten::mul_", "aten::div",
    "aten::div_", "aten::relu", "aten::relu_", "aten::relu6", "aten::hardtanh", "aten::hardtanh_",
    "aten::sigmoid", "aten::sigmoid_", "aten::silu", "aten::silu_", "aten::hardswish",
    "aten::hardswish_", "aten::hardsigmoid", "aten::hardsigmoid_", "aten::gelu", "aten::tanh",
    "aten::leaky_relu", "aten::leaky_relu_", "aten::elu", "aten::softmax", "aten::log_softmax",
    "aten::neg", "aten::exp", "aten::sqrt", "aten::rsqrt", "aten::pow", "aten::abs",
    "aten::dropout_", "aten::feature_dropout", "aten::alpha_dropout", "aten::bernoulli_",
    "aten::div_", "aten::transpose", "aten::permute", "aten::view", "aten::reshape",
    "aten::select", "aten::slice", "aten::size", "aten::numel", "aten::unsqueeze", "aten::squeeze",
    "aten::stack", "aten::roll", "aten::pad", "aten::channel_shuffle", "aten::clone",
    "aten::masked_fill", "aten::new_zeros", "aten::zeros", "aten::ones", "aten::index",
    "aten::sum", "aten::split", "aten::split_with_sizes", "aten::unbind", "aten::to",
]


def _sdpa_flop_jit(inputs: list, outputs: list) -> int:
    """scaled_dot_product_attention: q·kᵀ and attn·v, one multiply-add per term each."""
    q, k = get_shape(inputs[0]), get_shape(inputs[1])
    return 2 * int(torch.tensor(q[:-1]).prod()) * k[-2] * q[-1]


HANDLES = {
    **{op: None for op in _ZERO},
    "aten::max_pool1d": elementwise_flop_counter(1, 0),
    "aten::max_pool2d": elementwise_flop_counter(1, 0),
    "aten::max_pool3d": elementwise_flop_counter(1, 0),
    "aten::avg_pool1d": elementwise_flop_counter(1, 0),
    "aten::avg_pool2d": elementwise_flop_counter(1, 0),
    "aten::avg_pool3d": elementwise_flop_counter(1, 0),
    "aten::adaptive_max_pool2d": elementwise_flop_counter(1, 0),
    "aten::adaptive_avg_pool1d": elementwise_flop_counter(1, 0),
    "aten::adaptive_avg_pool3d": elementwise_flop_counter(1, 0),
    "aten::mean": elementwise_flop_counter(1, 0),
    "aten::scaled_dot_product_attention": _sdpa_flop_jit,
}


@contextmanager
def _quiet():
    """fvcore traces with torch.jit and logs per-op warnings: keep both out of the user's log."""
    log = logging.getLogger("fvcore")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        log.setLevel(level)


def _inputs_on(model: nn.Module, example_inputs: Any) -> tuple:
    inputs = example_inputs if isinstance(example_inputs, (tuple, list)) else (example_inputs,)
    device = device_of(model)
    return tuple(x.to(device) if isinstance(x, torch.Tensor) else x for x in inputs)


def count(model: nn.Module, example_inputs: Any) -> tuple[int, dict[str, int]]:
    """Total FLOPs of one forward pass and each module's own FLOPs (ops under it, not under a
    child), from a new fvcore analysis in eval mode on the model's device."""
    inputs = _inputs_on(model, example_inputs)
    with in_eval(model), _quiet(), torch.no_grad():
        fca = FlopCountAnalysis(model, inputs).set_op_handle(**HANDLES)
        fca.unsupported_ops_warnings(False).uncalled_modules_warnings(False).tracer_warnings("none")
        by_module = dict(fca.by_module())
    own = dict(by_module)
    for name in by_module:
        if name:
            parent = name.rpartition(".")[0]
            if parent in own:
                own[parent] -= by_module[name]
    return by_module.get("", 0), own


def flops_unit(flops: float) -> tuple[float, str]:
    """The divisor and unit that show ``flops`` with one to three integer digits."""
    for scale, unit in ((1e9, "GFLOPs"), (1e6, "MFLOPs"), (1e3, "KFLOPs")):
        if abs(flops) >= scale:
            return scale, unit
    return 1.0, "FLOPs"


def format_flops(flops: float | None, like: float | None = None) -> str:
    """``1823572992`` → ``"1.82 GFLOPs"``, ``40960`` → ``"40.96 KFLOPs"``.

    ``like``: pick the unit for this value instead, so that numbers compared side by side share
    one unit (``"1.82 GFLOPs"`` next to ``"0.91 GFLOPs"``, not ``"911.79 MFLOPs"``).
    """
    if flops is None:
        return MISSING
    scale, unit = flops_unit(flops if like is None else like)
    return f"{flops / scale:.2f} {unit}" if scale > 1 else f"{flops:.0f} {unit}"
