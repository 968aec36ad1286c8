"""Channel rules: one small function per kind of op (in the manner of fvcore's ``jit_handles.py``).

Every rule has the same signature, ``rule(c: Call) -> Ann`` (or ``Multi`` for ops with several
outputs): it reads the annotations of the op's inputs (``c.ann(i)``), records what the op ties
or freezes in ``c.atoms``, and returns the annotation of the op's output. Rules never look at
other nodes. Which rule runs which op is not decided here: the op registry
(:mod:`fxtaylor.graph.ops`) maps modules (``SPECS``), functions (``FUNCTION_RULES``) and
methods (``METHOD_RULES``) to these functions. Adding support for an op = writing (or
reusing) a rule here and adding a row there. This module imports nothing of the registry: a
rule that needs to ask it something (a split asks for its module's split owner) asks
``c.registry``.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn
import torch.fx as fx

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
    """Same channels in and out (activations, pooling, dropout, dtype/device moves). Pooling
    and interpolation resize the dims they act on: a factor on such a dim (a position
    embedding's spatial axes, SAM2-Hiera's) has positions mixed or made anew there: frozen."""
    x = c.args[0] if c.args else None
    if not (isinstance(x, torch.Tensor) and isinstance(c.out, torch.Tensor)):
        return c.ann(0)
    if x.dim() != c.out.dim():
        _freeze_inputs(c, f"{c.name} changed the number of dims")
        return ()
    out = []
    for f in c.ann(0):
        if all(x.shape[d] == c.out.shape[d] for d in f.dims):
            out.append(f)
        else:
            c.atoms.freeze(f.atoms, f"{c.name}: resizes a channel dim")
    return tuple(out)


def elementwise(c: Call) -> Ann:
    """Broadcasting ops (add, mul, SE scaling, where): operands tie position by position.

    A non-broadcast operand that carries no channel on a dim where another one does (a
    constant, an input image) pins those channels: they are frozen rather than mis-pruned.
    """
    out = c.out
    if not isinstance(out, torch.Tensor):
        return ()
    return _broadcast_join(c, [(v.shape, ann) for v, ann in c.tensor_args()], out.shape)


def _broadcast_join(c: Call, operands: list[tuple[torch.Size, Ann]], shape: torch.Size) -> Ann:
    """The channels of operands broadcast together to ``shape``, tied position by position.

    Factors are aligned from the right, as broadcasting does. Factors over overlapping dims are
    joined over the union of their dims: a factor is constant along the dims it lacks, so
    ResNeSt's attention (one channel per column) ties with its ``[B, radix, C/radix]`` view of
    a conv's output (one channel per position) at every radix row. What cannot follow pruning
    is frozen: a channel axis broadcast from size 1, channels combined with an operand that
    spans their dims without carrying channels there (a constant, the image), or with positions
    of no channel.
    """
    nd = len(shape)
    found: list[tuple[tuple[int, ...], torch.Tensor]] = []
    for s, ann in operands:
        off = nd - len(s)
        for f in ann:
            if all(s[d] == shape[d + off] for d in f.dims):
                found.append((tuple(d + off for d in f.dims), f.atoms))
            else:
                c.atoms.freeze(f.atoms, f"{c.name}: channels broadcast or mixed with other dims")
    result = []
    for dims in _components([d for d, _ in found]):
        lists = [_expand(a, d, dims, shape) for d, a in found if set(d) <= set(dims)]
        if any(_bare(s, ann, tuple(d - (nd - len(s)) for d in dims), [shape[d] for d in dims]) for s, ann in operands):
            for a in lists:
                c.atoms.freeze(a, f"{c.name}: combined with a tensor that carries no prunable channels")
            continue
        for a in lists[1:]:
            c.atoms.tie(lists[0], a)
        stacked = torch.stack(lists)
        holes = (stacked < 0).any(0) & (stacked >= 0).any(0)
        if bool(holes.any()):
            c.atoms.freeze(stacked[:, holes], f"{c.name}: combined with positions that carry no channel")
        result.append(Factor(dims, stacked.max(0).values))
    return tuple(result)


def _components(dim_sets: list[tuple[int, ...]]) -> list[tuple[int, ...]]:
    """The unions of overlapping dim sets (sorted), in order of first appearance."""
    comps: list[set[int]] = []
    for ds in dim_sets:
        hit = [k for k in comps if k & set(ds)]
        merged = set(ds).union(*hit)
        comps = [k for k in comps if k not in hit] + [merged]
    return [tuple(sorted(k)) for k in comps]


def _expand(atoms: torch.Tensor, dims: tuple[int, ...], to: tuple[int, ...], shape: torch.Size) -> torch.Tensor:
    """Atoms over ``dims`` as atoms over ``to`` (ascending, ⊇ dims): constant along the others."""
    order = sorted(range(len(dims)), key=dims.__getitem__)
    atoms = atoms.permute(order)
    view = [shape[d] if d in dims else 1 for d in to]
    return atoms.reshape(view).expand([shape[d] for d in to])


def _bare(s: torch.Size, ann: Ann, dims: tuple[int, ...], sizes: list[int]) -> bool:
    """An operand of shape ``s`` spans one of ``dims`` at full size but carries no channels
    there."""
    spans = any(0 <= d < len(s) and s[d] == n and n > 1 for d, n in zip(dims, sizes))
    return spans and not any(set(f.dims) <= set(dims) for f in ann)


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


def _list_anns(c: Call) -> list[Ann]:
    """Annotations of the tensors of a list argument (``torch.cat``/``torch.stack``)."""
    raws = c.node.args[0] if c.node.args else c.node.kwargs["tensors"]
    if isinstance(raws, fx.Node):  # the list is one value: a model input, or a split's pieces
        n = len(c.args[0] if c.args else c.kwargs["tensors"])
        ann = c.anns.get(raws, ())
        if isinstance(ann, Multi) and len(ann) == n:
            return list(ann)
        c.atoms.freeze_ann(ann, f"{c.name}: a list whose tensors are not traced one by one")
        return [()] * n
    return [c.anns.get(r, ()) if isinstance(r, fx.Node) else () for r in raws]


def cat(c: Call) -> Ann:
    """``torch.cat``: positions along ``dim`` are concatenated, the other dims tie like an add."""
    xs = c.arg(0, "tensors")
    anns = _list_anns(c)
    nd = c.out.dim()
    dim = _norm_dim(c.arg(1, "dim", 0), nd)
    if not any(anns) or not _single_dims(c, anns):
        return ()
    along = [factor_on(a, dim) for a in anns]
    out: list[Factor] = []
    if any(along):
        pieces = [f.atoms if f else torch.full((x.shape[dim],), NO_ATOM) for f, x in zip(along, xs)]
        out.append(Factor((dim,), torch.cat(pieces)))
    return tuple(out) + _tie_alike(c, anns, exclude=dim)


def stack(c: Call) -> Ann:
    """``torch.stack(xs, dim)``: a new dim of size len(xs); every input's channels pass through
    (renumbered past the new dim), and the inputs tie position by position like an add: they
    must keep equal shapes (SelectiveKernel stacks its paths' outputs)."""
    dim = _norm_dim(c.arg(1, "dim", 0), c.out.dim())
    anns = [tuple(Factor(tuple(d + (d >= dim) for d in f.dims), f.atoms) for f in a) for a in _list_anns(c)]
    if not any(anns) or not _single_dims(c, anns):
        return ()
    return _tie_alike(c, anns, exclude=dim)


def _single_dims(c: Call, anns: list[Ann]) -> bool:
    """Whether every factor is on one dim; else all are frozen (joining multi-dim layouts of
    several tensors is not supported)."""
    if all(f.single for a in anns for f in a):
        return True
    for a in anns:
        c.atoms.freeze_ann(a, f"{c.name}: multi-dim channel factor")
    return False


def _tie_alike(c: Call, anns: list[Ann], exclude: int) -> Ann:
    """Tensors joined along ``exclude`` keep equal sizes on every other dim: their channels
    there tie position by position. A tensor without channels on such a dim, or a position
    with a channel in one tensor and none in another, pins them: frozen."""
    out = []
    for d in sorted({d for a in anns for f in a for d in f.dims if d != exclude}):
        fs = [factor_on(a, d) for a in anns]
        if not all(fs):
            for f in fs:
                if f is not None:
                    c.atoms.freeze(f.atoms, f"{c.name}: joined with a tensor that carries no channels")
            continue
        for f in fs[1:]:
            c.atoms.tie(fs[0].atoms, f.atoms)
        stacked = torch.stack([f.atoms for f in fs])
        holes = (stacked < 0).any(0) & (stacked >= 0).any(0)
        if bool(holes.any()):
            c.atoms.freeze(stacked[:, holes], f"{c.name}: joined with positions that carry no channel")
        out.append(Factor((d,), stacked.max(0).values))
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
    """``split``/``unbind`` along a channel dim use fixed sizes: those channels are frozen...

    ...unless the split runs in the forward of a module the registry knows as a split owner
    (:data:`fxtaylor.graph.ops.SPLIT_OWNERS`): its sizes are attributes of that module (timm's
    ``MixedConv2d.splits``, ``Bottle2neck.width``), which its surgery updates. Then each piece
    carries its own slice of the channels; where the module keeps one size for all pieces,
    position j of every piece is tied (as for ``chunk``), so the pieces stay equal. The module
    gets a ``split`` space aliasing the split tensor's channels: pruning them calls its surgery.
    """
    x = c.args[0]
    name = c.node.target if c.node.op == "call_method" else c.node.target.__name__
    dim = _norm_dim(c.arg(1 if name == "unbind" else 2, "dim", 0), x.dim())
    f = factor_on(c.ann(0), dim)
    rest = without(c.ann(0), dim)
    path, typ, owner = _split_owner(c) if name == "split" else (None, None, None)
    if f is not None and f.single and owner is not None:
        sizes = [o.shape[dim] for o in c.out]
        if not owner.equal or len(set(sizes)) == 1:
            c.atoms.alias(path, "split", CONSUMER, f.atoms, typ.__name__)
            pieces = torch.split(f.atoms, sizes)
            if owner.equal:
                rows = torch.stack(pieces)
                c.atoms.tie(rows[:1].expand_as(rows), rows)
            return Multi(rest + (Factor((dim,), p),) for p in pieces)
    if f is not None:
        c.atoms.freeze(f.atoms, f"{c.name}: fixed-size split of a channel dim")
    if name == "unbind":  # the dim disappears
        rest = tuple(Factor(tuple(d - (d > dim) for d in g.dims), g.atoms) for g in rest)
    return Multi(rest for _ in c.out)


def _split_owner(c: Call) -> tuple:
    """(path, class, :class:`~fxtaylor.graph.ops.SplitOwner`) of the module whose forward made
    this call, when its class is registered; fx records the module stack of every traced call
    (calls recorded by partial tracing have none: their splits stay frozen)."""
    stack = c.node.meta.get("nn_module_stack")
    if not stack:
        return None, None, None
    path, typ = list(stack.values())[-1]
    owner = c.registry.split_owner_of(typ) if isinstance(typ, type) and c.registry is not None else None
    return (path, typ, owner) if owner is not None else (None, None, None)


def getitem(c: Call) -> Ann:
    """Element of a multi-output op, or tensor indexing (replayed on a probe)."""
    src = c.node.args[0]
    if isinstance(c.args[0], torch.Tensor):
        return shape_op(c)
    a = c.anns.get(src, ())
    if isinstance(a, Multi):
        return a[c.args[1]] if not isinstance(c.args[1], slice) else Multi(a[c.args[1]])
    return ()


def _fold(c: Call, f: Factor, d: int) -> Factor:
    """``f`` (over ``d`` and other dims) without ``d``, its atoms along ``d`` tied.

    An op that mixes positions along ``d`` only (a softmax, a sum over that dim) stays exact
    under pruning when each fibre along ``d`` leaves whole: ResNeSt's ``[B, radix, C/radix]``
    view ties the radix rows already (a literal-size reshape), so this adds no constraint there.
    The atoms are then the same units at every index of ``d``: index 0 stands for all.
    """
    a = f.atoms.movedim(f.dims.index(d), 0)
    c.atoms.tie(a[:1].expand_as(a), a)
    return Factor(tuple(e for e in f.dims if e != d), a[0])


_NORM_TARGETS = ("norm", torch.norm, torch.linalg.vector_norm)


def reduce(c: Call) -> Ann:
    """mean/sum/amax/var/norm over dims: channels on reduced dims removable only inexactly (a
    dead channel still counts in a mean, can be a max; :meth:`.atoms.Atoms.relax`), the others
    renumbered. A factor over a reduced dim and
    other dims (a radix/path dim) is folded: see :func:`_fold`."""
    x = c.args[0]
    if not isinstance(x, torch.Tensor):
        return ()
    # norms take the order first: ``x.norm(p, dim)``, ``torch.norm(x, p, dim)``, ``vector_norm(x, ord, dim)``
    dims = c.arg(2 if c.node.target in _NORM_TARGETS else 1, "dim", None)
    # kept dims told by the result (var/std also take a positional ``unbiased`` before keepdim)
    keep = isinstance(c.out, torch.Tensor) and c.out.dim() == x.dim()
    if dims is None:
        dims = list(range(x.dim()))
    dims = {_norm_dim(d, x.dim()) for d in (dims if isinstance(dims, (list, tuple)) else [dims])}
    shift = (lambda d: d) if keep else (lambda d: d - sum(r < d for r in dims))
    out = []
    for f in c.ann(0):
        for d in sorted(set(f.dims) & dims):
            if len(f.dims) == 1:
                break
            f = _fold(c, f, d)
        if set(f.dims) & dims:
            # a statistic over channels (ConvNeXt-V2's GRN divides by the mean over them): a dead
            # channel still counts, so no removal is exact; allowed only by an inexact graph
            c.atoms.relax(f.atoms, f"{c.name}: a statistic over channels (removing one changes it)")
            continue
        out.append(Factor(tuple(shift(d) for d in f.dims), f.atoms))
    return tuple(out)


def along_dim(c: Call) -> Ann:
    """softmax / log_softmax over ``dim``. Channels on other dims pass through. Over a channel
    dim no removal is exact (relaxed: frozen unless the graph is inexact): a dead channel still
    adds exp(0) to the normaliser of the others, so removing it changes them. Over one dim of
    a multi-dim factor (SelectiveKernel's and ResNeSt's softmax over paths of ``[B, paths, C]``)
    the fibres are folded (:func:`_fold`): each softmax then runs within one unit, which leaves
    whole or not at all."""
    x = c.args[0]
    d = c.arg(1, "dim", None)
    if d is None and c.module is not None:
        d = getattr(c.module, "dim", None)
    if d is None:
        _freeze_inputs(c, f"{c.name}: no dim given")
        return ()
    d = _norm_dim(d, x.dim())
    f = factor_on(c.ann(0), d)
    if f is None:
        return c.ann(0)
    if f.single:
        c.atoms.relax(f.atoms, f"{c.name}: softmax over channels (a dead channel still counts in the sum)")
        return c.ann(0)  # channel k of the output is channel k of the input, but for the normaliser
    return without(c.ann(0), d) + (_fold(c, f, d),)


def matmul(c: Call) -> Ann:
    """``a @ b`` (``matmul``, ``bmm``) for operands of 2+ dims: ``[..., n, k] @ [..., k, m]``.

    Channels on ``n`` (of ``a``) and ``m`` (of ``b``) pass through to the output's last two
    dims; batch dims broadcast and tie like an add (GlobalContext pools ``[B, 1, C, HW] @
    [B, 1, HW, 1]``). Channels on the contracted ``k`` tie with ``b``'s there: the product sums
    over k like a conv reads its input channels, so a dead (zero) channel adds nothing and
    removing it from both operands is exact — also when both carry the same channels (``xᵀ x``
    over channels: each position's term is removed from both at once). Contracting channels
    against an operand that has none there (a weight, a constant) is frozen: that operand's
    size cannot follow pruning.
    """
    a, b = c.arg(0, "input"), c.arg(1, "other")
    A, B = (c.ann(i) if len(c.node.args) > i else c.ann(k) for i, k in ((0, "input"), (1, "other")))
    if not (A or B):
        return ()
    if a.dim() < 2 or b.dim() < 2:
        for ann in (A, B):
            c.atoms.freeze_ann(ann, f"{c.name}: product with a vector")
        return ()
    nd = c.out.dim()
    ka, kb = a.dim() - 1, b.dim() - 2
    for f in A + B:
        if not f.single:
            c.atoms.freeze(f.atoms, f"{c.name}: multi-dim channel factor")
    A, B = tuple(f for f in A if f.single), tuple(f for f in B if f.single)
    fa, fb = factor_on(A, ka), factor_on(B, kb)
    if fa is not None and fb is not None:
        c.atoms.tie(fa.atoms, fb.atoms)
        stacked = torch.stack([fa.atoms, fb.atoms])
        holes = (stacked < 0).any(0) & (stacked >= 0).any(0)
        if bool(holes.any()):
            c.atoms.freeze(stacked[:, holes], f"{c.name}: contracts channels with positions of no channel")
    elif fa is not None or fb is not None:
        c.atoms.freeze((fa or fb).atoms, f"{c.name}: contracts channels with a tensor that carries none")
    out = [Factor((nd - 2,), f.atoms) for f in A if f.dims == (a.dim() - 2,)]
    out += [Factor((nd - 1,), f.atoms) for f in B if f.dims == (b.dim() - 1,)]
    batch = [(a.shape[:-2], tuple(f for f in A if f.dims[0] < a.dim() - 2)),
             (b.shape[:-2], tuple(f for f in B if f.dims[0] < b.dim() - 2))]
    return tuple(out) + _broadcast_join(c, batch, c.out.shape[:-2])


def pad(c: Call) -> Ann:
    """``F.pad`` (and the padding modules) pad the last len(pad)//2 dims: a channel dim among
    them is frozen, the others pass."""
    x = c.args[0]
    sizes = c.module.padding if c.module is not None else c.arg(1, "pad")
    padded = range(x.dim() - len(sizes) // 2, x.dim())
    for f in c.ann(0):
        if set(f.dims) & set(padded):
            c.atoms.freeze(f.atoms, f"{c.name}: pads a channel dim")
    return tuple(f for f in c.ann(0) if not set(f.dims) & set(padded))


def unfold(c: Call) -> Ann:
    """``Tensor.unfold(dim, size, step)``: sliding windows along ``dim`` (HaloNet's blocks), a
    new last dim holding each window. Channels on other dims pass unchanged; windows over a
    channel dim have a fixed size: frozen."""
    x = c.args[0]
    d = _norm_dim(c.arg(1, "dimension"), x.dim())
    for f in c.ann(0):
        if d in f.dims:
            c.atoms.freeze(f.atoms, f"{c.name}: sliding windows of a fixed size over a channel dim")
    return tuple(f for f in c.ann(0) if d not in f.dims)


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
    """LayerNorm (``nn.LayerNorm`` or ``F.layer_norm``; RMSNorm alike) over the last dims.
    Removing a channel on a normalised dim is never exact: every output there depends on the
    mean and variance over all of them, so a dead channel still shifts the others (the
    dead-channel test fails; torch-pruning prunes them anyway). Over one channel dim (ConvNeXt's norms) the channels are
    relaxed — frozen in an exact graph, pruned in an inexact one, the affine parameters
    following them (the module's ``norm`` space, or ``F.layer_norm``'s weight and bias
    arguments). Over several dims, frozen. Channels on other dims pass."""
    x = c.args[0]
    shape = c.module.normalized_shape if c.module is not None else c.arg(1, "normalized_shape")
    k = 1 if isinstance(shape, int) else len(shape)
    normed = set(range(x.dim() - k, x.dim()))
    last = x.dim() - 1
    for f in c.ann(0):
        if not set(f.dims) & normed:
            continue
        params = [] if c.module is not None else _affine(c)
        if k == 1 and f.dims == (last,) and (c.module is not None or params[0] is not None):
            c.atoms.relax(f.atoms, f"{c.name}: layer norm over channels (removing one changes the statistics of the others)")
            if c.module is not None:
                _read(c, "norm", NORM, last, x.shape[last])
            # F.layer_norm(x, norm.normalized_shape, norm.weight, norm.bias), a LayerNorm
            # subclass's forward: free parameters that follow the channels, and the shape
            # follows them (surgery.prune_parameter) as long as it is read from the module
            for p in params:
                if p is not None:
                    c.atoms.tie(p.atoms, f.atoms)
        else:  # over several dims; or F.layer_norm without parameters: its shape is a constant
            c.atoms.freeze(f.atoms, f"{c.name}: layer norm over a fixed channel count")
    return tuple(f for f in c.ann(0) if not set(f.dims) & normed or (k == 1 and f.dims == (last,)))


def _affine(c: Call) -> list[Factor | None]:
    """The channels of a functional norm's ``weight`` and ``bias`` arguments (positions 2 and
    3 of ``F.layer_norm`` / ``F.group_norm`` / ``F.rms_norm``: free parameters), or None."""
    return [factor_on(c.ann(i) if len(c.node.args) > i else c.ann(key), 0) for i, key in ((2, "weight"), (3, "bias"))]


def groupnorm(c: Call) -> Ann:
    """GroupNorm (``nn.GroupNorm`` or ``F.group_norm``): statistics per group of ``C /
    num_groups`` channels. Removing every channel of a group leaves the other groups'
    statistics untouched, so whole groups prune exactly: the channels of a group are tied (one
    unit), ``num_groups`` and ``num_channels`` follow. With a single group (a layer norm over
    C, H, W) nothing can go exactly: relaxed, per channel. The function form's weight and bias
    (a GroupNorm subclass's own forward, timm's) are free parameters tied to the channels."""
    m, x = c.module, c.args[0]
    dim = 1 if x.dim() > 1 else 0
    groups = m.num_groups if m is not None else c.arg(1, "num_groups")
    if m is not None:
        atoms = _read(c, "norm", NORM, dim, m.num_channels)
    else:
        f = factor_on(c.ann(0), dim)
        if f is None or not f.single:
            return without(c.ann(0), dim)
        atoms = f.atoms
        for p in _affine(c):
            if p is not None:
                c.atoms.tie(p.atoms, atoms)
    if groups == 1:
        c.atoms.relax(atoms, f"{c.name}: GroupNorm with one group (statistics over all channels)")
    else:
        grid = atoms.view(groups, -1)
        c.atoms.tie(grid[:, :1].expand_as(grid), grid)
    f = factor_on(c.ann(0), dim)
    return c.ann(0) if f is not None and f.single else without(c.ann(0), dim)


def standardized_conv(c: Call) -> Ann:
    """A conv whose forward standardises its weight per output channel over its inputs
    (timm's ``StdConv2d``/``ScaledStdConv2d``, NFNets): its output channels prune exactly (each
    row is standardised alone), its input channels do not — removing one changes the mean and
    variance of every row — so with one group they are relaxed (frozen in an exact graph).
    With several groups whole groups go, each group's rows with its inputs: exact."""
    ann = conv(c)
    if c.module.groups == 1:
        atoms = c.atoms.spaces[(c.name, "in")].atoms
        c.atoms.relax(atoms, f"{c.name}: weight standardised over its input channels (removing one rescales the others)")
        if c.module.weight[0].numel() // max(c.module.in_channels, 1) == 1:
            # 1×1 kernel: one input channel left is one value per row, whose variance is undefined
            # (batch norm refuses it in training mode)
            c.atoms.at_least.append((atoms[atoms >= 0], 2))
    return ann


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
