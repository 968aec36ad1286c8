"""What fxtaylor knows about a module type, in one place: one :class:`OpSpec` row per op kind.

In the style of fvcore's ``nn/jit_handles.py``: a table, and adding support for a module =
adding a row to :data:`SPECS`. A row says everything the rest of fxtaylor asks about the module:

- ``rule``: its channel rule (:mod:`.rules`), ``rule(c: Call) -> Ann``;
- ``prune``: its surgery, ``prune(module, removed)`` with ``removed`` mapping a space role
  ('out', 'in', 'norm') to sorted positions (:mod:`.surgery`); or ``channel_buffers``: the
  names of its per-channel parameters/buffers, which :func:`.surgery.slice_channels` cuts;
- ``reads``: for a module whose weight reads its input channels (conv, linear), the dim of its
  input it reads: where the Taylor criterion observes feature maps;
- ``cost``: how its cost scales when pruned: ``"dense"`` (∝ cin·cout: a conv with one group, a
  linear), ``"single"`` (∝ its one width: norms, pools, depthwise and grouped convs whose groups
  go whole), or None; a function of the module where it depends on it (``groups``);
- ``widths``: its (input, output) channel counts, for modules that have both (conv, linear);
- ``same_shape``: its output has its input's shape (shape-only runs skip executing it);
- ``meta_out``: a fast shape function for shape-only runs (a conv's meta kernel is slow);
- ``when``: a check on the instance; the row applies only where it holds;
- ``out_axis`` / ``in_axis``: the dims of its ``weight`` that hold its output and input
  channels — 0 and 1 for a conv or linear, 1 and 0 for a transposed conv (weight
  ``[in, out/groups, ...]``), 1 for an embedding's output (``[num, dim]``). Zeroing a channel
  (the dead-channel test), the weight criterion and the width checks read them here;
- ``out_dim``: the dim of its output that carries its output channels (1 for a batched conv,
  the last for a linear), where the Taylor criterion finds a producer's maps;
- ``weight``: for a module whose ``forward`` transforms its stored weight before using it
  (weight standardisation), the weight it really applies, as a function of the module.

:func:`spec_of` finds a module's row through its class hierarchy. A subclass that does not
override ``forward`` is, channel for channel, its base: it takes the base's row (torchvision's
``Conv3DSimple`` is an ``nn.Conv3d``). A subclass that overrides ``forward`` gets no row unless
it has one itself: fx traces into it (or, where fx cannot, it is frozen with a reason). Every
module with a row is traced as a leaf. Rows keyed by a qualified class name (a string) cover
libraries that are optional (timm) without importing them.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.ops import MultiScaleRoIAlign, RoIAlign, RoIPool
from torchvision.ops.misc import FrozenBatchNorm2d

from . import rules, surgery, timm_rules, vision_rules
from .rules import Rule

DENSE, SINGLE = "dense", "single"


@dataclass(frozen=True)
class OpSpec:
    """Everything fxtaylor knows about one kind of module (see the module docstring)."""

    rule: Rule
    prune: Callable[[nn.Module, dict[str, list[int]]], None] | None = None
    reads: Callable[[nn.Module, torch.Tensor], int] | None = None
    cost: Union[str, Callable[[nn.Module], str], None] = None
    widths: Callable[[nn.Module], tuple[int, int]] | None = None
    same_shape: bool = False
    meta_out: Callable[[nn.Module, torch.Tensor], torch.Tensor] | None = None
    channel_buffers: tuple[str, ...] = ()
    when: Callable[[nn.Module], bool] | None = None
    out_axis: int = 0
    in_axis: int = 1
    out_dim: Callable[[nn.Module, torch.Tensor], int] | None = None
    weight: Callable[[nn.Module], torch.Tensor] | None = None


# ---------------------------------------------------------------------------------------------
# Facts shared by several rows


def conv_meta_out(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Meta output of a conv (the meta kernel spends ~0.4 ms per call in argument checks); the
    two checks that matter are kept — channels and dtype — so a wrong example fails the meta
    run (and the real run that follows names the layer), not the analysis."""
    k, s, d = m.kernel_size, m.stride, m.dilation
    if x.shape[-len(k) - 1] != m.in_channels or x.dtype != m.weight.dtype:
        raise RuntimeError(f"input {tuple(x.shape)} {x.dtype} for a conv of {m.in_channels} channels, {m.weight.dtype}")
    spatial = x.shape[-len(k):]
    if m.padding == "same":
        size = list(spatial)
    else:
        p = (0,) * len(k) if m.padding == "valid" else m.padding
        size = [(n + 2 * p[i] - d[i] * (k[i] - 1) - 1) // s[i] + 1 for i, n in enumerate(spatial)]
    return torch.empty((*x.shape[: -len(k) - 1], m.out_channels, *size), dtype=x.dtype, device="meta")


def conv_transpose_meta_out(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Meta output of a transposed conv called without ``output_size`` (with it, the meta run
    calls the module itself)."""
    k, s, d, p, op = m.kernel_size, m.stride, m.dilation, m.padding, m.output_padding
    if x.shape[-len(k) - 1] != m.in_channels or x.dtype != m.weight.dtype:
        raise RuntimeError(f"input {tuple(x.shape)} {x.dtype} for a transposed conv of {m.in_channels} channels, {m.weight.dtype}")
    size = [(n - 1) * s[i] - 2 * p[i] + d[i] * (k[i] - 1) + op[i] + 1 for i, n in enumerate(x.shape[-len(k):])]
    return torch.empty((*x.shape[: -len(k) - 1], m.out_channels, *size), dtype=x.dtype, device="meta")


def _last_dim(m: nn.Module, out: torch.Tensor) -> int:
    return out.dim() - 1


def standardized_weight(m: nn.Module) -> torch.Tensor:
    """The weight timm's ``StdConv2d``/``ScaledStdConv2d`` apply: each output row standardised
    to zero mean and unit variance over its inputs, times ``gain · scale`` where they exist."""
    w = m.weight
    gain = getattr(m, "gain", None)
    affine = (gain * m.scale).view(-1) if isinstance(gain, torch.Tensor) else None
    return F.batch_norm(w.reshape(1, m.out_channels, -1), None, None, weight=affine, training=True, momentum=0.0,
                        eps=m.eps).reshape_as(w)


def _conv_cost(m: nn.Module) -> str:
    return DENSE if m.groups == 1 else SINGLE


def _conv_widths(m: nn.Module) -> tuple[int, int]:
    return m.in_channels, m.out_channels


def _linear_widths(m: nn.Module) -> tuple[int, int]:
    return m.in_features, m.out_features


ACTIVATIONS = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish,
    nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.Sigmoid, nn.Tanh, nn.Softplus, nn.Identity,
)
POOLS = (
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
    nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d, nn.Upsample,
)
DROPOUTS = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout)
# padding modules (``padding``: two sizes per padded dim, the last dims; NASNet's ZeroPad2d)
PADS = (nn.ZeroPad1d, nn.ZeroPad2d, nn.ZeroPad3d, nn.ConstantPad1d, nn.ConstantPad2d, nn.ConstantPad3d,
        nn.ReflectionPad1d, nn.ReflectionPad2d, nn.ReflectionPad3d, nn.ReplicationPad1d, nn.ReplicationPad2d,
        nn.ReplicationPad3d, nn.CircularPad1d, nn.CircularPad2d, nn.CircularPad3d)


def _channelwise_parts(m: nn.Module) -> bool:
    """Every submodule is an activation or dropout that treats channels alike."""
    return all(isinstance(c, ACTIVATIONS + DROPOUTS) for c in m.children())


CONV = OpSpec(rules.conv, surgery.conv, reads=rules.conv_read_dim, cost=_conv_cost, widths=_conv_widths,
              meta_out=conv_meta_out, out_dim=rules.conv_read_dim)
LINEAR = OpSpec(rules.linear, surgery.linear, reads=rules.linear_read_dim, cost=DENSE, widths=_linear_widths,
                out_dim=_last_dim)
BATCHNORM = OpSpec(rules.batchnorm, surgery.batchnorm, cost=SINGLE, same_shape=True)
INSTANCENORM = OpSpec(rules.instancenorm, surgery.instancenorm, cost=SINGLE, same_shape=True)
# A transposed conv reads its input channels and makes new output channels like a conv (a
# grouped one ties input block k to output block k); only its weight is the other way round.
CONV_TRANSPOSE = replace(CONV, meta_out=conv_transpose_meta_out, out_axis=1, in_axis=0)
# timm's weight-standardised convs (NFNets, BiT): a conv whose forward standardises each output
# row of its weight over its inputs, so its inputs are tied through those statistics.
STD_CONV = replace(CONV, rule=rules.standardized_conv, prune=surgery.standardized_conv, weight=standardized_weight)

# ---------------------------------------------------------------------------------------------
# The table. Keys: a class (matched through the class hierarchy, see spec_of), or the qualified
# name of a class of an optional library.

SPECS: dict[type | str, OpSpec]


class _Table(dict):
    """The spec table: any change (``SPECS[T] = ...``, monkeypatch) empties the lookup cache."""

    def __setitem__(self, key, value):
        super().__setitem__(key, value)
        _cache.clear()

    def __delitem__(self, key):
        super().__delitem__(key)
        _cache.clear()

    def update(self, *args, **kwargs):
        super().update(*args, **kwargs)
        _cache.clear()

    def pop(self, *args):
        _cache.clear()
        return super().pop(*args)

    def setdefault(self, key, default=None):
        _cache.clear()
        return super().setdefault(key, default)

    def clear(self):
        super().clear()
        _cache.clear()


_cache: dict[type, tuple[OpSpec | None, type | None]] = {}

SPECS = _Table({
    **{t: OpSpec(rules.passthrough, cost=SINGLE, same_shape=True) for t in ACTIVATIONS},
    **{t: OpSpec(rules.passthrough, same_shape=True) for t in DROPOUTS},
    **{t: OpSpec(rules.passthrough, cost=SINGLE) for t in POOLS},
    **{t: OpSpec(rules.pad, cost=SINGLE) for t in PADS},
    nn.Conv1d: CONV,
    nn.Conv2d: CONV,
    nn.Conv3d: CONV,
    nn.ConvTranspose1d: CONV_TRANSPOSE,
    nn.ConvTranspose2d: CONV_TRANSPOSE,
    nn.ConvTranspose3d: CONV_TRANSPOSE,
    nn.Linear: LINEAR,
    nn.Embedding: OpSpec(rules.embedding, surgery.embedding, cost=SINGLE, out_axis=1, out_dim=_last_dim),
    nn.BatchNorm1d: BATCHNORM,
    nn.BatchNorm2d: BATCHNORM,
    nn.BatchNorm3d: BATCHNORM,
    nn.SyncBatchNorm: BATCHNORM,
    # torchvision's detection backbones: BatchNorm2d with fixed statistics and affine, all four
    # per-channel buffers (no num_features attribute).
    FrozenBatchNorm2d: OpSpec(rules.batchnorm, cost=SINGLE, same_shape=True,
                              channel_buffers=("weight", "bias", "running_mean", "running_var")),
    nn.InstanceNorm1d: INSTANCENORM,
    nn.InstanceNorm2d: INSTANCENORM,
    nn.InstanceNorm3d: INSTANCENORM,
    nn.LayerNorm: OpSpec(rules.layernorm, surgery.layernorm, cost=SINGLE, same_shape=True),
    nn.RMSNorm: OpSpec(rules.layernorm, surgery.layernorm, cost=SINGLE, same_shape=True),
    nn.PReLU: OpSpec(rules.prelu, surgery.prelu, cost=SINGLE, same_shape=True),
    nn.GroupNorm: OpSpec(rules.groupnorm, surgery.groupnorm, cost=SINGLE, same_shape=True),
    nn.LocalResponseNorm: OpSpec(rules.frozen("LocalResponseNorm mixes neighbouring channels"), cost=SINGLE),
    nn.Flatten: OpSpec(rules.shape_op),
    nn.Unflatten: OpSpec(rules.shape_op),
    nn.ChannelShuffle: OpSpec(rules.channel_shuffle),
    nn.Softmax: OpSpec(rules.along_dim),
    nn.LogSoftmax: OpSpec(rules.along_dim),
    # timm (optional), keyed by name. BatchNormAct2d is BatchNorm2d followed by a drop and an
    # activation: a batch norm only when those are channel-agnostic (a PReLU has weights per
    # channel: then it is traced into). timm's Linear casts dtypes around F.linear.
    "timm.layers.norm_act.BatchNormAct2d": replace(BATCHNORM, when=_channelwise_parts),
    "timm.layers.linear.Linear": LINEAR,
    # timm's TensorFlow-"SAME" conv (tf_* models) pads on every call: a conv with its own
    # output size. As a leaf, fx no longer fails on its padding arithmetic.
    "timm.layers.conv2d_same.Conv2dSame": replace(CONV, meta_out=timm_rules.conv2d_same_meta_out),
    "timm.layers.std_conv.StdConv2d": STD_CONV,
    "timm.layers.std_conv.ScaledStdConv2d": STD_CONV,
    # the "SAME" variants pad on every call where the padding is dynamic: shapes from the meta copy
    "timm.layers.std_conv.StdConv2dSame": replace(STD_CONV, meta_out=None),
    "timm.layers.std_conv.ScaledStdConv2dSame": replace(STD_CONV, meta_out=None),
    # torchvision detection: RoI pooling pools channel by channel, so the maps a box head reads
    # through it keep prunable channels (:mod:`.vision_rules`). No parameters, no surgery.
    MultiScaleRoIAlign: OpSpec(vision_rules.multiscale_roi_pool),
    RoIAlign: OpSpec(vision_rules.roi_pool),
    RoIPool: OpSpec(vision_rules.roi_pool),
})


@dataclass(frozen=True)
class SplitOwner:
    """A module whose ``forward`` splits a tensor along its channels by sizes it holds in its
    own attributes: :func:`.rules.split` then prunes through the split (instead of freezing
    it) and ``prune(module, removed)`` updates those attributes (``removed["split"]``: the
    split tensor's positions). ``equal``: one size for every piece (the pieces are tied)."""

    prune: Callable[[nn.Module, dict[str, list[int]]], None]
    equal: bool
    check: Callable[[nn.Module, dict[str, list[int]]], None] | None = None  # raises before any cut


SPLIT_OWNERS: dict[type | str, SplitOwner] = {
    "timm.layers.mixed_conv2d.MixedConv2d": SplitOwner(timm_rules.mixed_conv_split, equal=False, check=timm_rules.mixed_conv_check),
    "timm.layers.selective_kernel.SelectiveKernel": SplitOwner(timm_rules.selective_kernel_split, equal=True),
    "timm.models.res2net.Bottle2neck": SplitOwner(timm_rules.res2net_split, equal=True),
}


def split_owner_of(t: type) -> SplitOwner | None:
    """The split-owner row of class ``t`` (or of a base whose ``forward`` it keeps)."""
    for base in t.__mro__:
        row = SPLIT_OWNERS.get(base) or SPLIT_OWNERS.get(_qualname(base))
        if row is not None:
            return row if getattr(t, "forward", None) is getattr(base, "forward", None) else None
    return None


def _qualname(t: type) -> str:
    return f"{t.__module__}.{t.__qualname__}"


def _find(t: type) -> tuple[OpSpec | None, type | None]:
    """The row of class ``t`` and the class it is registered for (see :func:`spec_of`)."""
    for base in t.__mro__:
        spec = SPECS.get(base) or SPECS.get(_qualname(base))
        if spec is None:
            continue
        if base is t or getattr(t, "forward", None) is getattr(base, "forward", None):
            return spec, base
        return None, None  # overrides the registered base's forward: not that op any more
    return None, None


def _lookup(module: nn.Module) -> tuple[OpSpec | None, type | None]:
    t = type(module)
    found = _cache.get(t)
    if found is None:
        found = _cache[t] = _find(t)
    spec = found[0]
    if spec is not None and spec.when is not None and not spec.when(module):
        return None, None
    return found


def spec_of(module: nn.Module) -> OpSpec | None:
    """What fxtaylor knows about ``module``, or None (it is traced into, or frozen).

    The row of the nearest registered class in ``type(module).__mro__``, if ``module``'s class
    is that class or does not override its ``forward``; a row's ``when`` must also hold.
    Cached by type.
    """
    return _lookup(module)[0]


def registered_type(module: nn.Module) -> type | None:
    """The class whose row :func:`spec_of` found (``nn.Conv3d`` for a ``Conv3DSimple``):
    its constructor takes the standard arguments, so it can rebuild the module at other widths."""
    return _lookup(module)[1]


def register(key: type | str, spec: OpSpec) -> None:
    """Add (or replace) a row: ``register(MyGain, OpSpec(rule=..., prune=...))``."""
    SPECS[key] = spec


def cost_kind(module: nn.Module) -> str | None:
    """``"dense"``, ``"single"`` or None: how ``module``'s cost scales with its channels."""
    spec = spec_of(module)
    if spec is None:
        return None
    return spec.cost(module) if callable(spec.cost) else spec.cost


def weight_of(module: nn.Module) -> torch.Tensor:
    """The weight ``module`` applies (its spec's ``weight``, else its stored ``weight``)."""
    spec = spec_of(module)
    return spec.weight(module) if spec is not None and spec.weight is not None else module.weight


__all__ = ["DENSE", "SINGLE", "OpSpec", "SPECS", "SPLIT_OWNERS", "SplitOwner", "cost_kind", "register", "registered_type",
           "spec_of", "split_owner_of", "weight_of"]
