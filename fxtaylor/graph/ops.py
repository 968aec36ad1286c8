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

This module is the one op registry: module rows (:data:`SPECS`), split owners
(:data:`SPLIT_OWNERS`), the rules of functions and methods (:data:`FUNCTION_RULES`,
:data:`METHOD_RULES`), and the dispatch: a :class:`Registry` answers, for a module, a function
or a method, which rule runs it, whether the tracer keeps it one node, the shape shortcuts of
the meta run, and which surgery cuts it. :mod:`.rules` and :mod:`.surgery` hold only the
functions the rows point to and import nothing from here (no import circle).

:data:`REGISTRY` reads the global rows. ``REGISTRY.with_specs({MyConv: spec})`` is a registry
for one trace (``fxtaylor.trace(model, x, specs=...)``): its rows win over the global ones and
nothing global changes, as torch-pruning registers a custom pruner per ``DependencyGraph``. The
channel graph keeps the registry it was traced with and asks it everything afterwards
(``graph.spec_of(module)``). The module-level :func:`spec_of`, :func:`cost_kind`, ... ask
:data:`REGISTRY`; :func:`register` adds a global row.
"""
from __future__ import annotations

import operator
from dataclasses import dataclass, replace
from typing import Any, Callable, Mapping, Union

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F
from torchvision.ops import MultiScaleRoIAlign, RoIAlign, RoIPool, stochastic_depth
from torchvision.ops.misc import FrozenBatchNorm2d

from ..errors import FxTaylorError, PruneError
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
    """A table of rows that counts its changes (``SPECS[T] = ...``, monkeypatch): a
    :class:`Registry` caches its lookups by type and starts afresh when a count moves."""

    version = 0

    def _changed(self) -> None:
        self.version += 1

    def __setitem__(self, key, value):
        super().__setitem__(key, value)
        self._changed()

    def __delitem__(self, key):
        super().__delitem__(key)
        self._changed()

    def update(self, *args, **kwargs):
        super().update(*args, **kwargs)
        self._changed()

    def pop(self, *args):
        self._changed()
        return super().pop(*args)

    def setdefault(self, key, default=None):
        self._changed()
        return super().setdefault(key, default)

    def clear(self):
        super().clear()
        self._changed()


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


# ---------------------------------------------------------------------------------------------
# Functions and methods: one rule per function object or method name.

_SAME_SHAPE_FUNCS = (
    F.relu, F.relu_, F.relu6, F.leaky_relu, F.elu, F.selu, F.gelu, F.silu, F.mish, F.hardswish,
    F.hardsigmoid, F.hardtanh, F.sigmoid, F.tanh, F.softplus, torch.relu, torch.relu_,
    torch.sigmoid, torch.tanh, torch.exp, torch.abs, torch.sqrt, torch.clamp, operator.neg,
    F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout, torch.clone,
    stochastic_depth,
)
# stochastic_depth: torchvision wraps it for fx; it scales whole samples, never single channels.
_UNARY_FUNCS = _SAME_SHAPE_FUNCS + (
    F.max_pool1d, F.max_pool2d, F.max_pool3d, F.avg_pool1d, F.avg_pool2d, F.avg_pool3d,
    F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d,
    F.adaptive_max_pool1d, F.adaptive_max_pool2d, F.adaptive_max_pool3d, F.interpolate,
)
_TIE_FUNCS = (
    operator.add, operator.sub, operator.mul, operator.truediv, operator.iadd, operator.isub,
    operator.imul, operator.itruediv, torch.add, torch.sub, torch.mul, torch.div,
    torch.maximum, torch.minimum, operator.pow, torch.pow, torch.addcmul, torch.addcdiv,
)
_SHAPE_FUNCS = (
    torch.flatten, torch.reshape, torch.permute, torch.transpose, torch.swapaxes, torch.swapdims, torch.t, torch.unsqueeze,
    torch.squeeze, torch.movedim, torch.unflatten, torch.roll, torch.flip, torch.narrow,
)

FUNCTION_RULES: dict[Callable, Rule] = {
    **{f: rules.passthrough for f in _UNARY_FUNCS},
    **{f: rules.elementwise for f in _TIE_FUNCS},
    **{f: rules.shape_op for f in _SHAPE_FUNCS},
    operator.getitem: rules.getitem,
    torch.cat: rules.cat,
    torch.concat: rules.cat,
    torch.concatenate: rules.cat,
    torch.stack: rules.stack,
    operator.matmul: rules.matmul,
    torch.matmul: rules.matmul,
    torch.bmm: rules.matmul,
    torch.chunk: rules.chunk,
    torch.split: rules.split,
    torch.unbind: rules.split,
    torch.mean: rules.reduce,
    torch.sum: rules.reduce,
    torch.amax: rules.reduce,
    torch.amin: rules.reduce,
    torch.var: rules.reduce,
    torch.std: rules.reduce,
    torch.norm: rules.reduce,
    torch.linalg.vector_norm: rules.reduce,
    F.softmax: rules.along_dim,
    F.log_softmax: rules.along_dim,
    torch.softmax: rules.along_dim,
    torch.log_softmax: rules.along_dim,
    F.layer_norm: rules.layernorm,
    F.rms_norm: rules.layernorm,  # (x, shape, weight, eps): a dead channel still counts in the mean square
    F.group_norm: rules.groupnorm,
    # An L2 (any p-norm) normalisation: a dead channel adds 0 to the norm, so removing it leaves
    # the others unchanged (unlike layer norm, whose mean it would shift): channels pass.
    F.normalize: rules.passthrough,
    F.pad: rules.pad,
    F.channel_shuffle: rules.channel_shuffle,
    getattr: rules.no_channels,
    operator.floordiv: rules.no_channels,
}

_SAME_SHAPE_METHODS = (
    "relu", "relu_", "sigmoid", "sigmoid_", "tanh", "exp", "abs", "sqrt", "clamp", "clamp_",
    "contiguous", "clone", "detach", "neg",
)
_TIE_METHODS = ("add", "add_", "sub", "sub_", "mul", "mul_", "div", "div_", "pow", "addcmul", "addcdiv")

METHOD_RULES: dict[str, Rule] = {
    **{m: rules.passthrough for m in _SAME_SHAPE_METHODS + (
        "to", "type", "float", "half", "double", "bfloat16", "cuda", "cpu", "type_as",
    )},
    **{m: rules.elementwise for m in _TIE_METHODS},
    **{m: rules.shape_op for m in (
        "view", "reshape", "flatten", "permute", "transpose", "swapaxes", "swapdims", "t", "unsqueeze", "squeeze",
        "expand", "expand_as", "view_as", "reshape_as", "movedim", "unflatten", "roll", "flip", "narrow", "repeat",
    )},
    "unfold": rules.unfold,
    "chunk": rules.chunk,
    "split": rules.split,
    "unbind": rules.split,
    "mean": rules.reduce,
    "sum": rules.reduce,
    "amax": rules.reduce,
    "amin": rules.reduce,
    "var": rules.reduce,
    "std": rules.reduce,
    "norm": rules.reduce,
    "softmax": rules.along_dim,
    "log_softmax": rules.along_dim,
    "matmul": rules.matmul,
    "bmm": rules.matmul,
    "size": rules.no_channels,
    "dim": rules.no_channels,
}


# Ops whose output has the shape of their first input (or of the broadcast of their inputs):
# on meta tensors propagate.py skips running them, as their meta kernels are slow Python.
# (Modules: OpSpec.same_shape.)
SAME_SHAPE_FUNCS = frozenset(_SAME_SHAPE_FUNCS)
SAME_SHAPE_METHODS = frozenset(_SAME_SHAPE_METHODS)
BROADCAST_FUNCS = frozenset(_TIE_FUNCS)
BROADCAST_METHODS = frozenset(_TIE_METHODS)


# ---------------------------------------------------------------------------------------------
# The dispatch


class Registry:
    """Where the channel graph asks what it knows about an op (see the module docstring).

    ``rows``: module rows of this registry; ``parent``: the registry asked for a class these
    rows do not name (None for :data:`REGISTRY`). Function and method rules and split owners are
    global. Lookups are cached by type, and the cache starts afresh when any table on the way
    up changes.
    """

    def __init__(self, rows: Mapping[type | str, OpSpec], parent: "Registry | None" = None):
        self.rows = rows if isinstance(rows, _Table) else _Table(rows)
        self.parent = parent
        self._cache: dict[type, tuple[OpSpec | None, type | None]] = {}
        self._stamp: tuple = ()

    def with_specs(self, specs: Mapping[type | str, OpSpec] | None) -> "Registry":
        """A registry whose own rows are ``specs`` (checked: :func:`check_specs`), over this one.
        No rows: this registry itself."""
        check_specs(specs)
        return Registry(dict(specs), parent=self) if specs else self

    # -- modules -------------------------------------------------------------------------------

    def _row(self, t: type) -> OpSpec | None:
        """The row registered for exactly class ``t`` (by class, then qualified name): this
        registry's, else its parent's."""
        row = self.rows.get(t) or self.rows.get(_qualname(t))
        return row if row is not None or self.parent is None else self.parent._row(t)

    def _version(self) -> tuple:
        return (self.rows.version,) + (self.parent._version() if self.parent is not None else ())

    def _lookup(self, module: nn.Module) -> tuple[OpSpec | None, type | None]:
        stamp = self._version()
        if stamp != self._stamp:
            self._cache.clear()
            self._stamp = stamp
        t = type(module)
        found = self._cache.get(t)
        if found is None:
            found = self._cache[t] = self._find(t)
        spec = found[0]
        if spec is not None and spec.when is not None and not spec.when(module):
            return None, None
        return found

    def _find(self, t: type) -> tuple[OpSpec | None, type | None]:
        """The row of class ``t`` and the class it is registered for (see :meth:`spec_of`)."""
        for base in t.__mro__:
            spec = self._row(base)
            if spec is None:
                continue
            if base is t or getattr(t, "forward", None) is getattr(base, "forward", None):
                return spec, base
            return None, None  # overrides the registered base's forward: not that op any more
        return None, None

    def spec_of(self, module: nn.Module) -> OpSpec | None:
        """What fxtaylor knows about ``module``, or None (it is traced into, or frozen).

        The row of the nearest registered class in ``type(module).__mro__`` (a class this
        registry names before its parent's row for the same class), if ``module``'s class is
        that class or does not override its ``forward``; a row's ``when`` must also hold.
        """
        return self._lookup(module)[0]

    def registered_type(self, module: nn.Module) -> type | None:
        """The class whose row :meth:`spec_of` found (``nn.Conv3d`` for a ``Conv3DSimple``): its
        constructor takes the standard arguments, so it can rebuild the module at other widths."""
        return self._lookup(module)[1]

    def cost_kind(self, module: nn.Module) -> str | None:
        """``"dense"``, ``"single"`` or None: how ``module``'s cost scales with its channels."""
        spec = self.spec_of(module)
        if spec is None:
            return None
        return spec.cost(module) if callable(spec.cost) else spec.cost

    def weight_of(self, module: nn.Module) -> torch.Tensor:
        """The weight ``module`` applies (its spec's ``weight``, else its stored ``weight``)."""
        spec = self.spec_of(module)
        return spec.weight(module) if spec is not None and spec.weight is not None else module.weight

    def known_leaf(self, module: nn.Module) -> bool:
        """fxtaylor knows ``module`` (it has a row), so fx calls it as one node, not traced into
        (a library subclass of a torch.nn layer such as timm's BatchNormAct2d or torchvision's
        Conv3DSimple)."""
        return self.spec_of(module) is not None

    def split_owner_of(self, t: type) -> SplitOwner | None:
        """The split-owner row of class ``t`` (global: :func:`split_owner_of`)."""
        return split_owner_of(t)

    # -- rules ---------------------------------------------------------------------------------

    def lookup_module(self, module: nn.Module) -> Rule | None:
        """The channel rule of a module, from its row."""
        spec = self.spec_of(module)
        return spec.rule if spec is not None else None

    def lookup(self, node: fx.Node, module: nn.Module | None) -> Rule | None:
        """The rule for a node, or None when fxtaylor has none (the caller freezes around it)."""
        if node.op == "call_module":
            return self.lookup_module(module)
        if node.op == "call_function":
            return FUNCTION_RULES.get(node.target)
        if node.op == "call_method":
            return METHOD_RULES.get(node.target)
        return None

    # -- surgery -------------------------------------------------------------------------------

    def check_module(self, m: nn.Module, removed: dict[str, list[int]]) -> None:
        """Raise :class:`PruneError` where ``m``'s surgery could not apply ``removed`` (a split
        piece left empty), before any module of the cut is touched."""
        owner = split_owner_of(type(m)) if self.spec_of(m) is None else None
        if owner is not None and owner.check is not None and "split" in removed:
            owner.check(m, removed)

    def prune_module(self, m: nn.Module, removed: dict[str, list[int]]) -> None:
        """Cut ``m`` by its row: its ``prune`` handler, else its ``channel_buffers``; or, for a
        module that splits by its own attributes (:data:`SPLIT_OWNERS`), update them."""
        spec = self.spec_of(m)
        owner = split_owner_of(type(m)) if spec is None else None
        if spec is not None and spec.prune is not None:
            spec.prune(m, removed)
        elif spec is not None and spec.channel_buffers and len(removed) == 1:
            surgery.slice_channels(m, next(iter(removed.values())), spec.channel_buffers)  # its one space
        elif owner is not None and set(removed) == {"split"}:
            owner.prune(m, removed)
        else:
            raise PruneError(f"no prune handler for {type(m).__name__}")


def check_specs(specs: Any) -> None:
    """Raise :class:`FxTaylorError` (one line) unless ``specs`` is None or a dict of module class
    or qualified class name (``"pkg.module.Class"``) -> :class:`OpSpec`."""
    if specs is None:
        return
    if not isinstance(specs, Mapping):
        raise FxTaylorError(f"specs must be a dict of module type (or qualified class name) -> OpSpec, got "
                            f"{type(specs).__name__}")
    for key, spec in specs.items():
        if not (isinstance(key, type) and issubclass(key, nn.Module)) and not (isinstance(key, str) and "." in key):
            raise FxTaylorError(f"specs: a key must be a module class or a qualified class name such as "
                                f"'timm.layers.linear.Linear', got {key!r}")
        if not isinstance(spec, OpSpec):
            raise FxTaylorError(f"specs[{getattr(key, '__name__', key)!r}] must be an fxtaylor.graph.ops.OpSpec, got "
                                f"{type(spec).__name__}")


#: The global registry: :data:`SPECS` (and the function, method and split-owner tables).
REGISTRY = Registry(SPECS)


def spec_of(module: nn.Module) -> OpSpec | None:
    """:meth:`Registry.spec_of` of the global registry (a graph traced with its own rows:
    ``graph.spec_of``)."""
    return REGISTRY.spec_of(module)


def registered_type(module: nn.Module) -> type | None:
    """:meth:`Registry.registered_type` of the global registry."""
    return REGISTRY.registered_type(module)


def cost_kind(module: nn.Module) -> str | None:
    """:meth:`Registry.cost_kind` of the global registry."""
    return REGISTRY.cost_kind(module)


def weight_of(module: nn.Module) -> torch.Tensor:
    """:meth:`Registry.weight_of` of the global registry."""
    return REGISTRY.weight_of(module)


def known_leaf(module: nn.Module) -> bool:
    """:meth:`Registry.known_leaf` of the global registry."""
    return REGISTRY.known_leaf(module)


def lookup_module(module: nn.Module) -> Rule | None:
    """:meth:`Registry.lookup_module` of the global registry."""
    return REGISTRY.lookup_module(module)


def register(key: type | str, spec: OpSpec) -> None:
    """Add (or replace) a global row: ``register(MyGain, OpSpec(rule=..., prune=...))``. For
    one trace only: ``fxtaylor.trace(model, x, specs={MyGain: OpSpec(...)})``."""
    check_specs({key: spec})
    SPECS[key] = spec


__all__ = ["BROADCAST_FUNCS", "BROADCAST_METHODS", "DENSE", "FUNCTION_RULES", "METHOD_RULES", "OpSpec", "REGISTRY",
           "Registry", "SAME_SHAPE_FUNCS", "SAME_SHAPE_METHODS", "SINGLE", "SPECS", "SPLIT_OWNERS", "SplitOwner",
           "check_specs", "cost_kind", "known_leaf", "lookup_module", "register", "registered_type", "spec_of",
           "split_owner_of", "weight_of"]
