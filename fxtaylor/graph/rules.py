"""Channel rules: one small function per kind of op, and the table that maps ops to them.

Every rule has the same signature, ``rule(c: Call) -> Ann`` (or ``Multi`` for ops with several
outputs): it reads the annotations of the op's inputs (``c.ann(i)``), records what the op ties
or freezes in ``c.atoms``, and returns the annotation of the op's output. Rules never look at
other nodes. Adding support for an op = writing (or reusing) a rule and adding a row: for a
function or a method to :data:`FUNCTION_RULES` / :data:`METHOD_RULES` at the bottom, for a module
to the op-spec table :data:`fxtaylor.graph.ops.SPECS` (everything fxtaylor knows about a module
type: rule, surgery, read dim, cost).

"""
from __future__ import annotations

import operator
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.fx as fx
from torchvision.ops import stochastic_depth

from .atoms import CONSUMER, NO_ATOM, NORM, PRODUCER, Ann, Factor
from .call import Call, Multi, factor_on, without

Rule = Callable[[Call], Ann]


# ---------------------------------------------------------------------------------------------
# Helpers shared by the rules


def _probe(f: Factor, shape: torch.Size) -> torch.Tensor:
    """An int64 tensor of ``shape`` whose value at each position is the atom there."""
    order = sorted(range(len(f.dims)), key=lambda i: f.dims[i])
    view = [1] * len(shape)
    for d in f.dims:
        view[d] = shape[d]
    return f.atoms.permute(order).reshape(view).expand(shape).contiguous()


def _unprobe(p: torch.Tensor) -> Factor | None:
    """Inverse of :func:`_probe`: the dims the atoms vary along, and the atoms there."""
    if p.numel() == 0:
        return None
    dims = tuple(d for d in range(p.dim()) if p.shape[d] > 1 and not bool((p == p.narrow(d, 0, 1)).all()))
    if not dims:
        return None
    index = tuple(slice(None) if d in dims else 0 for d in range(p.dim()))
    return Factor(dims, p[index])


def _same_atoms(a: torch.Tensor, b: torch.Tensor) -> bool:
    ua, ub = torch.unique(a), torch.unique(b)
    return torch.equal(ua[ua >= 0], ub[ub >= 0])


def _norm_dim(d: int, ndim: int) -> int:
    return d + ndim if d < 0 else d


def _freeze_inputs(c: Call, reason: str) -> None:
    for a in c.all_input_anns():
        c.atoms.freeze_ann(a, reason)


# ---------------------------------------------------------------------------------------------
# Rules


def passthrough(c: Call) -> Ann:
    """Same channels in and out (activations, pooling, dropout, dtype/device moves)."""
    x = c.args[0] if c.args else None
    if isinstance(x, torch.Tensor) and isinstance(c.out, torch.Tensor) and x.dim() != c.out.dim():
        _freeze_inputs(c, f"{c.name} changed the number of dims")
        return ()
    return c.ann(0)


def elementwise(c: Call) -> Ann:
    """Broadcasting ops (add, mul, SE scaling, where): operands tie position by position.

    A non-broadcast operand that carries no channel on a dim where another one does (a
    constant, an input image) pins those channels: they are frozen rather than mis-pruned.
    """
    out = c.out
    if not isinstance(out, torch.Tensor):
        return ()
    nd = out.dim()
    operands = c.tensor_args()
    on_dim: dict[int, list[torch.Tensor]] = {}
    for v, ann in operands:
        off = nd - v.dim()
        for f in ann:
            if f.single and v.shape[f.dims[0]] == out.shape[f.dims[0] + off]:
                on_dim.setdefault(f.dims[0] + off, []).append(f.atoms)
            else:
                c.atoms.freeze(f.atoms, f"{c.name}: channels broadcast or mixed with other dims")
    result = []
    for d, lists in on_dim.items():
        if any(_bare(v, ann, d - (nd - v.dim()), out.shape[d]) for v, ann in operands):
            for a in lists:
                c.atoms.freeze(a, f"{c.name}: combined with a tensor that carries no prunable channels")
            continue
        for a in lists[1:]:
            c.atoms.tie(lists[0], a)
        stacked = torch.stack(lists)
        holes = (stacked < 0).any(0) & (stacked >= 0).any(0)
        if bool(holes.any()):
            c.atoms.freeze(stacked[:, holes], f"{c.name}: combined with positions that carry no channel")
        result.append(Factor((d,), stacked.max(0).values))
    return tuple(result)


def _bare(v: torch.Tensor, ann: Ann, d: int, size: int) -> bool:
    """Operand ``v`` spans dim ``d`` at full size but carries no (single-dim) channels there."""
    if not 0 <= d < v.dim() or v.shape[d] != size or size == 1:
        return False
    f = factor_on(ann, d)
    return f is None or not f.single


def shape_op(c: Call) -> Ann:
    """Views, reshapes, permutes, flatten, getitem, roll...: replay the op on an index probe.

    Whatever the op does to positions, it does to the probe, so the output's atoms are exact
    (a flatten expands one channel to H·W features; a channel shuffle becomes a permutation).
    Two things the probe cannot see are decided from the call itself:

    - a channel dim selected by a constant index or slice cannot follow pruning: frozen;
    - a reshape that splits a channel dim into a constant-size dim and a computed one (the
      ``view(n, groups, c // groups, h, w)`` of a channel shuffle) keeps working after pruning
      only if every constant-size slice loses the same positions: those are tied.
    """
    x = c.args[0]
    if not isinstance(x, torch.Tensor) or not c.ann(0):
        return ()
    outs = []
    for f in c.ann(0):
        p = c.call_on()(_probe(f, x.shape))
        g = _unprobe(p) if isinstance(p, torch.Tensor) else None
        if g is None or not _same_atoms(g.atoms, f.atoms):
            c.atoms.freeze(f.atoms, f"{c.name}: selects channels by a fixed index")
            continue
        fixed = _constant_size_dims(c, g.dims)
        if fixed:
            free = [d for d in g.dims if d not in fixed]
            if len(free) != 1:
                c.atoms.freeze(f.atoms, f"{c.name}: reshapes channels to a fixed size")
                continue
            for d in fixed:
                a = g.atoms.movedim(g.dims.index(d), 0)
                c.atoms.tie(a[:1].expand_as(a), a)
        outs.append(g)
    seen = [d for g in outs for d in g.dims]
    if len(seen) != len(set(seen)):
        for g in outs:
            c.atoms.freeze(g.atoms, f"{c.name}: merges channels of different spaces")
        return ()
    return tuple(outs)


def _constant_size_dims(c: Call, dims: tuple[int, ...]) -> list[int]:
    """Output dims among ``dims`` whose size is a literal in a view/reshape call."""
    n = c.node
    name = n.target if n.op == "call_method" else getattr(n.target, "__name__", "")
    if name not in ("view", "reshape"):
        return []
    sizes = n.args[1:]
    if len(sizes) == 1 and isinstance(sizes[0], (tuple, list)):
        sizes = sizes[0]
    if "shape" in n.kwargs or "size" in n.kwargs:
        sizes = n.kwargs.get("shape", n.kwargs.get("size"))
    return [d for d in dims if d < len(sizes) and isinstance(sizes[d], int) and sizes[d] != -1]


def cat(c: Call) -> Ann:
    """``torch.cat``: positions along ``dim`` are concatenated, the other dims tie like an add."""
    xs = c.arg(0, "tensors")
    raws = c.node.args[0] if c.node.args else c.node.kwargs["tensors"]
    anns = [c.anns.get(r, ()) if isinstance(r, fx.Node) else () for r in raws]
    nd = c.out.dim()
    dim = _norm_dim(c.arg(1, "dim", 0), nd)
    if not any(anns):
        return ()
    if any(not f.single for a in anns for f in a):
        for a in anns:
            c.atoms.freeze_ann(a, f"{c.name}: multi-dim channel factor")
        return ()
    along = [factor_on(a, dim) for a in anns]
    out: list[Factor] = []
    if any(along):
        pieces = [f.atoms if f else torch.full((x.shape[dim],), NO_ATOM) for f, x in zip(along, xs)]
        out.append(Factor((dim,), torch.cat(pieces)))
    others = sorted({d for a in anns for f in a for d in f.dims if d != dim})
    for d in others:
        fs = [factor_on(a, d) for a in anns]
        if not all(fs):
            for f in fs:
                if f is not None:
                    c.atoms.freeze(f.atoms, f"{c.name}: joined with a tensor that carries no channels")
            continue
        for f in fs[1:]:
            c.atoms.tie(fs[0].atoms, f.atoms)
        out.append(fs[0])
    return tuple(out)


def chunk(c: Call) -> Multi:
    """``chunk(k, dim)``: the pieces stay equal after pruning only if each loses the same
    positions, so position j of every piece is tied (ShuffleNetV2's split)."""
    x = c.args[0]
    dim = _norm_dim(c.arg(2, "dim", 0), x.dim())
    outs = list(c.out)
    f = factor_on(c.ann(0), dim)
    rest = without(c.ann(0), dim)
    if f is None:
        return Multi(rest for _ in outs)
    k = len(outs)
    if not f.single or x.shape[dim] % k:
        c.atoms.freeze(f.atoms, f"{c.name}: uneven chunks of a channel dim")
        return Multi(rest for _ in outs)
    rows = f.atoms.view(k, -1)
    c.atoms.tie(rows[:1].expand_as(rows), rows)
    return Multi(rest + (Factor((dim,), rows[i]),) for i in range(k))


def split(c: Call) -> Multi:
    """``split``/``unbind`` along a channel dim use fixed sizes: those channels are frozen."""
    x = c.args[0]
    name = c.node.target if c.node.op == "call_method" else c.node.target.__name__
    dim = _norm_dim(c.arg(1 if name == "unbind" else 2, "dim", 0), x.dim())
    f = factor_on(c.ann(0), dim)
    if f is not None:
        c.atoms.freeze(f.atoms, f"{c.name}: fixed-size split of a channel dim")
    rest = without(c.ann(0), dim)
    if name == "unbind":  # the dim disappears
        rest = tuple(Factor(tuple(d - (d > dim) for d in g.dims), g.atoms) for g in rest)
    return Multi(rest for _ in c.out)


def getitem(c: Call) -> Ann:
    """Element of a multi-output op, or tensor indexing (replayed on a probe)."""
    src = c.node.args[0]
    if isinstance(c.args[0], torch.Tensor):
        return shape_op(c)
    a = c.anns.get(src, ())
    if isinstance(a, Multi):
        return a[c.args[1]] if not isinstance(c.args[1], slice) else Multi(a[c.args[1]])
    return ()


def reduce(c: Call) -> Ann:
    """mean/sum/amax over dims: channels on reduced dims are frozen, the others renumbered."""
    x = c.args[0]
    if not isinstance(x, torch.Tensor):
        return ()
    dims = c.arg(1, "dim", None)
    keep = bool(c.arg(2, "keepdim", False))
    if dims is None:
        dims = list(range(x.dim()))
    dims = {_norm_dim(d, x.dim()) for d in (dims if isinstance(dims, (list, tuple)) else [dims])}
    out = []
    for f in c.ann(0):
        if set(f.dims) & dims:
            c.atoms.freeze(f.atoms, f"{c.name}: reduces over a channel dim")
            continue
        shift = (lambda d: d) if keep else (lambda d: d - sum(r < d for r in dims))
        out.append(Factor(tuple(shift(d) for d in f.dims), f.atoms))
    return tuple(out)


def along_dim(c: Call) -> Ann:
    """softmax-like ops mix positions along ``dim``: channels there are frozen, others pass."""
    x = c.args[0]
    d = c.arg(1, "dim", None)
    if d is None and c.module is not None:
        d = getattr(c.module, "dim", None)
    if d is None:
        _freeze_inputs(c, f"{c.name}: no dim given")
        return ()
    d = _norm_dim(d, x.dim())
    f = factor_on(c.ann(0), d)
    if f is not None:
        c.atoms.freeze(f.atoms, f"{c.name}: mixes channels along dim {d}")
    return without(c.ann(0), d)


def pad(c: Call) -> Ann:
    """``F.pad`` pads the last len(pad)//2 dims: a channel dim among them is frozen."""
    x = c.args[0]
    padded = range(x.dim() - len(c.arg(1, "pad")) // 2, x.dim())
    for f in c.ann(0):
        if set(f.dims) & set(padded):
            c.atoms.freeze(f.atoms, f"{c.name}: pads a channel dim")
    return tuple(f for f in c.ann(0) if not set(f.dims) & set(padded))


def channel_shuffle(c: Call) -> Ann:
    """``F.channel_shuffle`` / ``nn.ChannelShuffle``: a fixed permutation of (groups, C/groups)."""
    groups = c.module.groups if c.module is not None else c.arg(1, "groups")
    f = factor_on(c.ann(0), 1)
    if f is None:
        return c.ann(0)
    if not f.single or f.atoms.numel() % groups:
        c.atoms.freeze(f.atoms, f"{c.name}: uneven shuffle groups")
        return without(c.ann(0), 1)
    grid = f.atoms.view(groups, -1)
    c.atoms.tie(grid[:1].expand_as(grid), grid)
    return without(c.ann(0), 1) + (Factor((1,), grid.t().reshape(-1)),)


def _read(c: Call, role: str, kind: str, dim: int, size: int) -> torch.Tensor:
    """A module's input channels (or norm features): the atoms on ``dim`` of its input."""
    f = factor_on(c.ann(0), dim)
    if f is not None and not f.single:
        c.atoms.freeze(f.atoms, f"{c.name}: input channels mixed with other dims")
        f = None
    atoms = f.atoms if f is not None else torch.full((size,), NO_ATOM)
    return c.atoms.alias(c.name, role, kind, atoms, type(c.module).__name__)


def conv_read_dim(m: nn.Module, x: torch.Tensor) -> int:
    """The dim of its input a conv reads: 1, or 0 for an unbatched input."""
    return 1 if x.dim() == len(m.kernel_size) + 2 else 0


def linear_read_dim(m: nn.Module, x: torch.Tensor) -> int:
    """A linear reads the last dim of its input."""
    return x.dim() - 1


def conv(c: Call) -> Ann:
    """Conv: consumes channels on dim 1, produces ``out_channels`` new ones. A grouped conv
    (depthwise included) ties input block k to output block k: whole groups go, or none."""
    m, typ = c.module, type(c.module).__name__
    dim = conv_read_dim(m, c.args[0])
    for f in c.ann(0):
        if dim not in f.dims:
            c.atoms.freeze(f.atoms, f"{c.name}: channels on a spatial dim")
    cin = _read(c, "in", CONSUMER, dim, m.in_channels)
    cout = c.atoms.space(c.name, "out", PRODUCER, m.out_channels, typ).atoms
    if m.groups > 1:
        ins, outs = cin.view(m.groups, -1), cout.view(m.groups, -1)
        c.atoms.tie(ins[:, :1].expand_as(ins), ins)
        c.atoms.tie(ins[:, :1].expand_as(outs), outs)
        # a group whose inputs cannot be removed cannot be removed at all
        c.atoms.freeze(outs[(ins < 0).any(1)], f"{c.name}: group reads channels that cannot be pruned")
    return (Factor((dim,), cout),)


def linear(c: Call) -> Ann:
    """Linear: consumes the last dim, produces ``out_features``; other dims pass through."""
    m, typ = c.module, type(c.module).__name__
    d = linear_read_dim(m, c.args[0])
    _read(c, "in", CONSUMER, d, m.in_features)
    cout = c.atoms.space(c.name, "out", PRODUCER, m.out_features, typ).atoms
    return without(c.ann(0), d) + (Factor((d,), cout),)


def embedding(c: Call) -> Ann:
    """Embedding: indices in, ``embedding_dim`` new channels on a new last dim."""
    m = c.module
    cout = c.atoms.space(c.name, "out", PRODUCER, m.embedding_dim, type(m).__name__).atoms
    return c.ann(0) + (Factor((c.out.dim() - 1,), cout),)


def _norm_on(c: Call, dim: int, size: int) -> Ann:
    """A per-channel parameter set (BN, affine IN, PReLU) follows the channels on ``dim``."""
    _read(c, "norm", NORM, dim, size)
    f = factor_on(c.ann(0), dim)
    return c.ann(0) if f is not None and f.single else without(c.ann(0), dim)


def batchnorm(c: Call) -> Ann:
    """Batch norm (and torchvision's FrozenBatchNorm2d, which has no ``num_features``)."""
    m = c.module
    size = m.num_features if hasattr(m, "num_features") else m.running_mean.numel()
    return _norm_on(c, 1 if c.args[0].dim() > 1 else 0, size)


def instancenorm(c: Call) -> Ann:
    m = c.module  # affine or not: num_features must follow the channels (torch warns otherwise)
    unbatched = c.args[0].dim() == m._get_no_batch_dim()
    return _norm_on(c, 0 if unbatched else 1, m.num_features)


def prelu(c: Call) -> Ann:
    if c.module.num_parameters == 1:
        return passthrough(c)
    return _norm_on(c, 1, c.module.num_parameters)


def layernorm(c: Call) -> Ann:
    """LayerNorm (``nn.LayerNorm`` or ``F.layer_norm``) over the last dims. Channels on a
    normalised dim are frozen: every output there depends on the mean and variance over all of
    them, so a dead channel still shifts the others and removing it changes the model (the
    dead-channel test fails; torch-pruning prunes them anyway). Channels on other dims pass."""
    x = c.args[0]
    shape = c.module.normalized_shape if c.module is not None else c.arg(1, "normalized_shape")
    k = 1 if isinstance(shape, int) else len(shape)
    normed = set(range(x.dim() - k, x.dim()))
    for f in c.ann(0):
        if set(f.dims) & normed:
            c.atoms.freeze(f.atoms, f"{c.name}: layer norm over these channels (removing one changes the statistics of the others)")
    return tuple(f for f in c.ann(0) if not set(f.dims) & normed)


def frozen(reason: str) -> Callable[[Call], Ann]:
    """For ops whose channel semantics fxtaylor chooses not to prune through (GroupNorm...)."""

    def rule(c: Call) -> Ann:
        _freeze_inputs(c, f"{c.name}: {reason}")
        return ()

    rule.__name__ = "frozen"
    return rule


def no_channels(c: Call) -> Ann:
    """Ops whose result carries no channels and that constrain none (size, dim, shape)."""
    return ()


# ---------------------------------------------------------------------------------------------
# The tables for functions and methods. Modules: see fxtaylor.graph.ops.SPECS.

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
    torch.maximum, torch.minimum,
)
_SHAPE_FUNCS = (
    torch.flatten, torch.reshape, torch.permute, torch.transpose, torch.swapaxes, torch.swapdims, torch.t, torch.unsqueeze,
    torch.squeeze, torch.movedim, torch.unflatten, torch.roll, torch.flip, torch.narrow,
)

FUNCTION_RULES: dict[Callable, Rule] = {
    **{f: passthrough for f in _UNARY_FUNCS},
    **{f: elementwise for f in _TIE_FUNCS},
    **{f: shape_op for f in _SHAPE_FUNCS},
    operator.getitem: getitem,
    torch.cat: cat,
    torch.concat: cat,
    torch.concatenate: cat,
    torch.chunk: chunk,
    torch.split: split,
    torch.unbind: split,
    torch.mean: reduce,
    torch.sum: reduce,
    torch.amax: reduce,
    torch.amin: reduce,
    F.softmax: along_dim,
    F.log_softmax: along_dim,
    F.layer_norm: layernorm,
    # An L2 (any p-norm) normalisation: a dead channel adds 0 to the norm, so removing it leaves
    # the others unchanged (unlike layer norm, whose mean it would shift): channels pass.
    F.normalize: passthrough,
    F.pad: pad,
    F.channel_shuffle: channel_shuffle,
    getattr: no_channels,
    operator.floordiv: no_channels,
}

_SAME_SHAPE_METHODS = (
    "relu", "relu_", "sigmoid", "sigmoid_", "tanh", "exp", "abs", "sqrt", "clamp", "clamp_",
    "contiguous", "clone", "detach", "neg",
)
_TIE_METHODS = ("add", "add_", "sub", "sub_", "mul", "mul_", "div", "div_")

METHOD_RULES: dict[str, Rule] = {
    **{m: passthrough for m in _SAME_SHAPE_METHODS + (
        "to", "type", "float", "half", "double", "bfloat16", "cuda", "cpu", "type_as",
    )},
    **{m: elementwise for m in _TIE_METHODS},
    **{m: shape_op for m in (
        "view", "reshape", "flatten", "permute", "transpose", "swapaxes", "swapdims", "t", "unsqueeze", "squeeze",
        "expand", "expand_as", "movedim", "unflatten", "roll", "flip", "narrow", "repeat",
    )},
    "chunk": chunk,
    "split": split,
    "unbind": split,
    "mean": reduce,
    "sum": reduce,
    "amax": reduce,
    "amin": reduce,
    "softmax": along_dim,
    "log_softmax": along_dim,
    "size": no_channels,
    "dim": no_channels,
}


# Ops whose output has the shape of their first input (or of the broadcast of their inputs):
# on meta tensors propagate.py skips running them, as their meta kernels are slow Python.
# (Modules: OpSpec.same_shape.)
SAME_SHAPE_FUNCS = frozenset(_SAME_SHAPE_FUNCS)
SAME_SHAPE_METHODS = frozenset(_SAME_SHAPE_METHODS)
BROADCAST_FUNCS = frozenset(_TIE_FUNCS)
BROADCAST_METHODS = frozenset(_TIE_METHODS)


def known_leaf(module: nn.Module) -> bool:
    """fxtaylor knows ``module`` (it has an op spec), so fx calls it as one node, not traced into
    (a library subclass of a torch.nn layer such as timm's BatchNormAct2d or torchvision's
    Conv3DSimple)."""
    return ops.spec_of(module) is not None


def lookup_module(module: nn.Module) -> Rule | None:
    """The channel rule of a module, from its op spec (:func:`fxtaylor.graph.ops.spec_of`)."""
    spec = ops.spec_of(module)
    return spec.rule if spec is not None else None


def lookup(node: fx.Node, module: nn.Module | None) -> Rule | None:
    """The rule for a node, or None when fxtaylor has none (the caller freezes around it)."""
    if node.op == "call_module":
        return lookup_module(module)
    if node.op == "call_function":
        return FUNCTION_RULES.get(node.target)
    if node.op == "call_method":
        return METHOD_RULES.get(node.target)
    return None


from . import ops  # last: ops builds its table from the rules above
