"""Cross-check fxtaylor's channel groups against torch-pruning's DependencyGraph.

Both tools answer the same question (which parameter slices must be removed together), so
their answers are brought into one canonical form and compared as sets:

* a *group* is a ``frozenset`` of entries ``(module_name, axis, frozenset(indices))``, one entry
  per parameter-holding module axis the group touches;
* ``axis`` is ``'out'`` for output channels (conv/linear weight dim 0) and for per-feature
  modules (BatchNorm, LayerNorm, PReLU, ...: fxtaylor's role ``'norm'``, torch-pruning's
  ``prune_*_out_channels``), ``'in'`` for conv/linear input channels
  (``prune_*_in_channels``) and ``'param<d>'`` for axis ``d`` of a free ``nn.Parameter``
  (torch-pruning's "unwrapped parameters", named by their parameter path);
* torch-pruning's parameter-free pseudo ops (``_ElementWiseOp``, ``_ConcatOp``, ``_SplitOp``,
  ``_ReshapeOp``, ...) are dropped: only modules of the model that own parameters or buffers,
  and free parameters, are kept.

**Depthwise convs** (``groups == in_channels == out_channels > 1``) have one channel axis: input
channel ``c`` only feeds output channel ``c``, so removing one means removing the other.
fxtaylor records both an ``'in'`` and an ``'out'`` member for them (tied to each other, same
indices); torch-pruning records the producer-side dependency with
``prune_depthwise_conv_in_channels``, which *is* ``prune_depthwise_conv_out_channels`` (it
counts as an out-channel function), so its members look like ``'out'`` only. The canonical form
keeps **only** ``'out'`` for a depthwise conv on both sides: an ``'in'`` entry of a depthwise
conv is dropped. Nothing is lost because the two axes are the same channels.

**Grouped convs** (``1 < groups``, not depthwise) are *not* canonicalised: fxtaylor ties input
block ``k``, output block ``k`` and the producer feeding block ``k`` into one unit (a whole conv
group), torch-pruning keeps input and output channels of the grouped conv in separate groups.
The two differ there on purpose and :func:`resolve` settles each difference with the
dead-channel test (:func:`fx_dead`, :func:`tp_dead`).

Besides group membership, :attr:`Comparison.unit_mismatch` lists matching groups whose
*unit partition* differs: fxtaylor's unit ``k`` = the positions with group-local channel ``k``,
torch-pruning's unit ``k`` = the positions whose ``root_idx`` is ``k``. Two tools that agree on a
group but pair its positions differently (a wrong index map through a concat/shuffle) show up
there.

**Dead-channel tests** (:func:`fx_dead`, :func:`tp_dead`): zero a channel at every source of
the group, run, prune it through the tool, run again. A right group changes nothing beyond
rounding. The bar is relative to the output's size (:data:`TOL`): 1e-5 in float32, 1e-9 in
float64; run models in float64 where memory allows, or effects of ~1e-6 (a LayerNorm over
channels that sees one channel fewer) pass for noise. :func:`resolve` runs fxtaylor's test on
fxtaylor-only groups (must pass) and tp's on tp-only groups (a correct fxtaylor predicts
they fail).
"""
from __future__ import annotations

import contextlib
import copy
import gc
import math
import random
import signal
import threading
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import torch
import torch.nn as nn
import torch_pruning as tp

import fxtaylor
from fxtaylor.graph.check import dead_channel_diff

Entry = tuple  # (module_name, axis, frozenset[int])
Canon = frozenset  # frozenset[Entry]
Units = frozenset  # frozenset[frozenset[(module_name, axis, int)]]

#: Dead-channel tolerance on ``max|before - after| / max(1, max|output|)``, by dtype. 1e-5 is
#: the float32 bar; in float64 the rounding noise of a right group is ~1e-13, while the smallest
#: real effects seen in the zoo (a LayerNorm over channels that sees one channel fewer, with
#: ConvNeXt's 1e-6 layer scale) are ~1e-6, which float32 at 1e-5 cannot tell from noise.
#: Relative to the output's size because some randomly initialised models blow up (Inception-v3
#: outputs ~1e14 with init_weights=True: float32 noise alone is then ~1e7 in absolute terms).
TOL = {torch.float32: 1e-5, torch.float64: 1e-9}


# -- helpers ---------------------------------------------------------------------------------


def is_depthwise(m: Any) -> bool:
    """A conv whose input channel c only feeds output channel c."""
    return (
        isinstance(m, nn.modules.conv._ConvNd)
        and m.groups > 1
        and m.groups == m.in_channels == m.out_channels
    )


def is_grouped(m: Any) -> bool:
    return isinstance(m, nn.modules.conv._ConvNd) and m.groups > 1 and not is_depthwise(m)


def _holds_state(m: nn.Module) -> bool:
    return any(True for _ in m.parameters(recurse=False)) or any(True for _ in m.buffers(recurse=False))


def randomize_norms(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial batch-norm statistics and affine (default init is the identity map, under
    which a wrong group may not show in the output). Returns the model in eval mode."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                if m.running_mean is not None:
                    m.running_mean.copy_(torch.rand(m.num_features, generator=g) * 2 - 1)
                    m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                if m.weight is not None:
                    m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                    m.bias.copy_(torch.rand(m.num_features, generator=g) * 2 - 1)
    return model.eval()


def _output(y: Any) -> torch.Tensor:
    """The tensor of a model output (torchvision's GoogLeNet/Inception may return namedtuples)."""
    if isinstance(y, torch.Tensor):
        return y
    if hasattr(y, "logits"):
        return y.logits
    if isinstance(y, (tuple, list)):
        return y[0]
    if isinstance(y, dict):
        return next(iter(y.values()))
    raise TypeError(f"unsupported model output {type(y)}")


def classifier_layers(model: nn.Module, x: torch.Tensor) -> list[nn.Module]:
    """The final classifier(s): conv/linear modules whose output width is the model's output
    width (``num_classes``). This is what a torch-pruning user passes as ``ignored_layers``."""
    with torch.no_grad():
        n = _output(model(x)).shape[1]
    out = []
    for m in model.modules():
        if isinstance(m, nn.Linear) and m.out_features == n:
            out.append(m)
        elif isinstance(m, nn.modules.conv._ConvNd) and m.out_channels == n:
            out.append(m)
    return out


def _entries(raw: dict[tuple[str, str], set[int]]) -> Canon:
    return frozenset((name, axis, frozenset(idx)) for (name, axis), idx in raw.items() if idx)


# -- fxtaylor side ---------------------------------------------------------------------------


@dataclass
class FxSide:
    prunable: dict  # Canon -> fx group index (groups with no freeze reason)
    frozen: dict  # Canon -> (fx group index, reasons)
    units: dict  # Canon -> Units
    graph: Any = None


def fx_canonical(model: nn.Module, graph: fxtaylor.ChannelGraph) -> FxSide:
    """fxtaylor's groups in canonical form; non-frozen and frozen apart."""
    mods = dict(model.named_modules())
    prunable, frozen, units = {}, {}, {}
    for g in graph.groups:
        raw: dict[tuple[str, str], set[int]] = defaultdict(set)
        unit: dict[int, set] = defaultdict(set)
        for m in g.members:
            axis = "out" if m.role == "norm" else m.role
            mod = mods.get(m.name)
            if axis == "in" and mod is not None and is_depthwise(mod):
                continue
            pos, ch = m.positions.tolist(), m.channels.tolist()
            raw[(m.name, axis)].update(pos)
            for p, c in zip(pos, ch):
                unit[c].add((m.name, axis, p))
        canon = _entries(raw)
        if not canon:
            continue
        units[canon] = frozenset(frozenset(u) for u in unit.values())
        if g.frozen:
            frozen[canon] = (g.index, list(g.frozen))
        else:
            prunable[canon] = g.index
    return FxSide(prunable, frozen, units, graph)


# -- torch-pruning side ----------------------------------------------------------------------


@dataclass
class TpSide:
    groups: dict  # Canon -> root module name (the group is rooted at its output channels)
    units: dict  # Canon -> Units
    DG: Any = None


def tp_axis(DG: tp.DependencyGraph, dep: Any) -> str | None:
    if dep.target.type == tp.ops.OPTYPE.PARAMETER:
        return f"param{dep.target.pruning_dim}"
    if DG.is_out_channel_pruning_fn(dep.handler):
        return "out"
    if DG.is_in_channel_pruning_fn(dep.handler):
        return "in"
    return None


def tp_group_raw(model: nn.Module, DG: tp.DependencyGraph, group: Any) -> tuple[Canon, Units]:
    names = {id(m): n for n, m in model.named_modules()}
    pnames = {id(p): n for n, p in model.named_parameters()}
    raw: dict[tuple[str, str], set[int]] = defaultdict(set)
    unit: dict[int, set] = defaultdict(set)
    for item in group.items:
        dep, idxs = item.dep, item.idxs
        mod = dep.target.module
        if isinstance(mod, nn.Parameter):
            name = pnames.get(id(mod)) or DG._param_to_name.get(mod)
        else:
            name = names.get(id(mod))
            if name is None or not _holds_state(mod):
                continue  # pseudo op (_ElementWiseOp, _ConcatOp, ...) or parameter-free module
        axis = tp_axis(DG, dep)
        if axis is None or name is None:
            continue
        if axis == "in" and is_depthwise(mod):
            axis = "out"  # cannot happen with tp's function table; kept for clarity
        idxs = [int(i) for i in idxs]
        roots = getattr(item, "root_idxs", None) or idxs
        raw[(name, axis)].update(idxs)
        for i, r in zip(idxs, roots):
            unit[int(r)].add((name, axis, i))
    return _entries(raw), frozenset(frozenset(u) for u in unit.values())


def tp_canonical(model: nn.Module, x: Any, ignored: Sequence[nn.Module]) -> TpSide:
    DG = tp.DependencyGraph().build_dependency(model, example_inputs=x)
    names = {id(m): n for n, m in model.named_modules()}
    groups, units = {}, {}
    for group in DG.get_all_groups(ignored_layers=list(ignored)):
        canon, unit = tp_group_raw(model, DG, group)
        if canon:
            groups.setdefault(canon, names[id(group[0].dep.target.module)])
            units.setdefault(canon, unit)
    return TpSide(groups, units, DG)


# -- comparison ------------------------------------------------------------------------------


@dataclass
class Comparison:
    matching: set  # Canon groups both tools report (fxtaylor: not frozen)
    only_fx: dict  # Canon -> fx group index
    only_tp: dict  # Canon -> tp root module name
    tp_frozen_by_fx: dict  # Canon (tp group) -> (fx index, reasons): fxtaylor has it, frozen
    unit_mismatch: list  # Canon groups that match but pair their positions differently
    fx: FxSide = None
    tp: TpSide = None

    @property
    def equal(self) -> bool:
        return not (self.only_fx or self.only_tp or self.unit_mismatch)


class ToolError(Exception):
    """fxtaylor or torch-pruning failed on a model; ``tool`` says which."""

    def __init__(self, tool: str, error: BaseException):
        super().__init__(f"{tool}: {type(error).__name__}: {str(error)[:300]}")
        self.tool, self.error = tool, error


@contextlib.contextmanager
def time_limit(seconds: float | None):
    """Raise TimeoutError in the main thread after ``seconds`` (tp loops forever on some models,
    eating ~60 MB/s). No-op when None, off the main thread or without SIGALRM."""
    if not seconds or threading.current_thread() is not threading.main_thread() or not hasattr(signal, "SIGALRM"):
        yield
        return

    def _raise(*_):
        raise TimeoutError(f"no answer after {seconds:g} s")

    old = signal.signal(signal.SIGALRM, _raise)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def compare(
    model: nn.Module, x: Any, ignored: Sequence[nn.Module] | None = None, tp_timeout: float | None = None
) -> Comparison:
    """Compare fxtaylor's non-frozen groups with torch-pruning's groups for ``model``.

    ``ignored`` (default: :func:`classifier_layers`) is passed to tp's ``get_all_groups``;
    fxtaylor gets nothing: it must find on its own that the classifier's output is frozen.
    tp groups that fxtaylor also has but frozen land in ``tp_frozen_by_fx``, not ``only_tp``.
    Raises :class:`ToolError` naming the tool that failed (``tp_timeout``: seconds tp gets).
    """
    model.eval()
    if ignored is None:
        ignored = classifier_layers(model, x)
    try:
        fx = fx_canonical(model, fxtaylor.trace(model, x))
    except Exception as e:
        raise ToolError("fxtaylor", e) from e
    try:
        with time_limit(tp_timeout):
            tps = tp_canonical(model, x, ignored)
    except Exception as e:
        raise ToolError("tp", e) from e
    f, t = set(fx.prunable), set(tps.groups)
    matching = f & t
    only_tp, frozen_by_fx = {}, {}
    for c in t - f:
        if c in fx.frozen:
            frozen_by_fx[c] = fx.frozen[c]
        else:
            only_tp[c] = tps.groups[c]
    unit_mismatch = [c for c in matching if fx.units[c] != tps.units[c]]
    return Comparison(
        matching, {c: fx.prunable[c] for c in f - t}, only_tp, frozen_by_fx, unit_mismatch, fx, tps
    )


def _fmt_idx(idx: frozenset) -> str:
    s = sorted(idx)
    if s == list(range(s[0], s[-1] + 1)):
        return f"[{s[0]}..{s[-1]}]" if len(s) > 1 else f"[{s[0]}]"
    head = ",".join(map(str, s[:6]))
    return f"{{{head}{',...' if len(s) > 6 else ''}}}({len(s)})"


def describe_group(c: Canon, limit: int = 12) -> str:
    items = sorted(c, key=lambda e: (e[0], e[1]))
    parts = [f"{n}.{a}{_fmt_idx(i)}" for n, a, i in items[:limit]]
    more = f" ... +{len(items) - limit}" if len(items) > limit else ""
    return "{" + ", ".join(parts) + more + "}"


def describe(cmp: Comparison, limit: int = 20) -> str:
    """Readable summary; for each differing group, its closest counterpart on the other side."""
    lines = [
        f"matching: {len(cmp.matching)}, only fxtaylor: {len(cmp.only_fx)}, only tp: {len(cmp.only_tp)}, "
        f"tp groups fxtaylor freezes: {len(cmp.tp_frozen_by_fx)}, unit-pairing mismatches: {len(cmp.unit_mismatch)}"
    ]
    tp_all = list(cmp.tp.groups) if cmp.tp else []
    fx_all = list(cmp.fx.prunable) + list(cmp.fx.frozen) if cmp.fx else []

    def closest(c: Canon, pool: list) -> str:
        keys = {(n, a) for n, a, _ in c}
        best = max(pool, key=lambda o: len(keys & {(n, a) for n, a, _ in o}), default=None)
        if best is None or not keys & {(n, a) for n, a, _ in best}:
            return "none"
        extra, missing = best - c, c - best
        return f"+{describe_group(frozenset(extra), 6)} -{describe_group(frozenset(missing), 6)}"

    for c, gi in list(cmp.only_fx.items())[:limit]:
        lines.append(f"  only fxtaylor (group {gi}): {describe_group(c)}\n      closest tp: {closest(c, tp_all)}")
    for c, root in list(cmp.only_tp.items())[:limit]:
        lines.append(f"  only tp (root {root}): {describe_group(c)}\n      closest fxtaylor: {closest(c, fx_all)}")
    for c, (gi, why) in list(cmp.tp_frozen_by_fx.items())[:limit]:
        lines.append(f"  tp group frozen by fxtaylor (group {gi}: {'; '.join(why[:2])}): {describe_group(c)}")
    for c in cmp.unit_mismatch[:limit]:
        lines.append(f"  unit pairing differs: {describe_group(c)}")
    return "\n".join(lines)


# -- dead-channel tests ----------------------------------------------------------------------


@dataclass
class Dead:
    diff: float  # max |output with dead channels - output after pruning them|
    same_shape: bool
    error: str | None = None
    scale: float = 1.0  # max |output| of the intact model
    tol: float = 1e-5

    @property
    def rel(self) -> float:
        return self.diff / max(1.0, self.scale)

    @property
    def passed(self) -> bool:
        return self.error is None and self.same_shape and self.rel <= self.tol

    def __str__(self) -> str:
        if self.error:
            return f"raised {self.error}"
        return f"diff={self.diff:.3g} (rel {self.rel:.2g}, tol {self.tol:g}) same_shape={self.same_shape}"


def output_scale(model: nn.Module, x: Any) -> float:
    inputs = x if isinstance(x, (tuple, list)) else (x,)
    with torch.no_grad():
        return float(_output(model.eval()(*inputs)).abs().max())


def _tol(x: Any) -> float:
    t = x[0] if isinstance(x, (tuple, list)) else x
    return TOL.get(t.dtype, 1e-5)


def error_line(e: BaseException) -> str:
    return f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"


def _collect(model: nn.Module) -> None:
    """The deep copies of the dead-channel tests sit in reference cycles (fx graphs, tp's
    graph) and pile up between collections; free them at once for big models (a full
    collection costs ~0.2 s, too much to pay for every small model)."""
    if sum(p.numel() for p in model.parameters()) > 20_000_000:
        gc.collect()


def fx_dead(model: nn.Module, x: Any, group_index: int, channels: Sequence[int], scale: float = 1.0) -> Dead:
    """fxtaylor's dead-channel test (:func:`fxtaylor.graph.check.dead_channel_diff`) for
    ``channels`` of group ``group_index``. ``scale``: :func:`output_scale` of the model."""
    try:
        diff, same = dead_channel_diff(model, x, group_index, list(channels))
        return Dead(diff, same, None, scale, _tol(x))
    except Exception as e:  # a wrong group may break the pruned model
        return Dead(math.inf, False, error_line(e), scale, _tol(x))
    finally:
        _collect(model)


def _zero(p: torch.Tensor | None, dim: int, idxs: list[int]) -> None:
    if isinstance(p, torch.Tensor) and p.dim() > dim:
        p.index_fill_(dim, torch.as_tensor(idxs, dtype=torch.long, device=p.device), 0)


def tp_kill(model: nn.Module, DG: tp.DependencyGraph, group: Any) -> None:
    """Zero a tp pruning group's output-side slices: conv/linear output rows and bias, norm
    affine, free-parameter slices, i.e. every member pruned with an out-channel function."""
    with torch.no_grad():
        for item in group.items:
            dep, idxs = item.dep, [int(i) for i in item.idxs]
            mod = dep.target.module
            if dep.target.type == tp.ops.OPTYPE.PARAMETER:
                _zero(mod, dep.target.pruning_dim, idxs)
                continue
            if not isinstance(mod, nn.Module) or not DG.is_out_channel_pruning_fn(dep.handler):
                continue
            if isinstance(mod, nn.modules.conv._ConvNd) and mod.transposed:
                _zero(mod.weight, 1, idxs)
                _zero(mod.bias, 0, idxs)
                continue
            if isinstance(mod, nn.LayerNorm):  # tp prunes its last normalized dim
                for p in (mod.weight, mod.bias):
                    if p is not None:
                        _zero(p, p.dim() - 1, idxs)
                continue
            axis = 1 if isinstance(mod, nn.Embedding) else 0
            _zero(getattr(mod, "weight", None), axis, idxs)
            _zero(getattr(mod, "bias", None), 0, idxs)


def tp_dead(model: nn.Module, x: Any, root: str, channels: Sequence[int], scale: float = 1.0) -> Dead:
    """tp's dead-channel test: on a deep copy, zero ``channels`` of the group rooted at the
    output channels of module ``root`` at every source (:func:`tp_kill`), run, prune the group
    through tp (``DG.get_pruning_group(root, prune_out_channels, channels).prune()``), run
    again. A right group leaves the output unchanged; a wrong one raises or changes it."""
    try:
        return _tp_dead(model, x, root, channels, scale)
    finally:
        _collect(model)


def _tp_dead(model: nn.Module, x: Any, root: str, channels: Sequence[int], scale: float) -> Dead:
    inputs = x if isinstance(x, (tuple, list)) else (x,)
    tol = _tol(x)
    m = copy.deepcopy(model).eval()
    try:
        DG = tp.DependencyGraph().build_dependency(m, example_inputs=x)
        mod = m.get_submodule(root)
        fn = DG.get_pruner_of_module(mod).prune_out_channels
        group = DG.get_pruning_group(mod, fn, list(channels))
        tp_kill(m, DG, group)
        with torch.no_grad():
            before = _output(m(*inputs))
        group.prune()
    except Exception as e:
        return Dead(math.inf, False, "before pruning finished: " + error_line(e), scale, tol)
    try:
        with torch.no_grad():
            after = _output(m(*inputs))
    except Exception as e:
        return Dead(math.inf, False, error_line(e), scale, tol)
    if before.shape != after.shape:
        return Dead(math.inf, False, None, scale, tol)
    return Dead(float((before - after).abs().max()), True, None, scale, tol)


# -- settling differences --------------------------------------------------------------------


@dataclass
class Verdict:
    side: str  # 'fxtaylor' | 'tp'
    group: Canon
    handle: Any  # fx group index or tp root module name
    channels: list
    dead: Dead
    frozen_by_fx: bool = False  # tp group whose output slices fxtaylor knows are all frozen there

    @property
    def ok(self) -> bool:
        """Whether this verdict is what a correct fxtaylor predicts: fxtaylor-only groups pass
        their dead-channel test, tp-only groups fail theirs."""
        return self.dead.passed if self.side == "fxtaylor" else not self.dead.passed

    def __str__(self) -> str:
        what = "passes" if self.dead.passed else "FAILS"
        tag = "" if self.ok else "   <-- unexpected"
        who = f"fxtaylor group {self.handle}" if self.side == "fxtaylor" else f"tp group rooted at {self.handle}.out"
        if self.frozen_by_fx:
            who += " (fxtaylor freezes its channels)"
        return f"{who}, channels {self.channels}: dead-channel test {what} ({self.dead}){tag}"


def resolve(
    model: nn.Module, x: Any, cmp: Comparison, seed: int = 0, n_channels: int = 1, max_groups: int | None = None
) -> list[Verdict]:
    """Dead-channel test for every differing group: fxtaylor-only groups through fxtaylor,
    tp-only groups through tp (and tp groups fxtaylor freezes, through tp), on ``n_channels``
    random channels each. ``max_groups``: test at most that many random groups per side."""
    rng = random.Random(seed)
    out = []
    scale = output_scale(model, x)
    frozen_slices = _slices(cmp.fx.frozen)
    known_slices = frozen_slices | _slices(cmp.fx.prunable)

    def pick(items: dict, key) -> list:
        items = sorted(items.items(), key=key)
        if max_groups is not None and len(items) > max_groups:
            items = sorted(rng.sample(items, max_groups), key=key)
        return items

    tp_side = {**cmp.only_tp, **{c: cmp.tp.groups[c] for c in cmp.tp_frozen_by_fx}}
    for c, gi in pick(cmp.only_fx, lambda kv: kv[1]):
        g = cmp.fx.graph.groups[gi]
        ch = sorted(rng.sample(range(g.size), min(n_channels, max(g.size - g.min_keep, 1))))
        out.append(Verdict("fxtaylor", c, gi, ch, fx_dead(model, x, gi, ch, scale)))
    mods = dict(model.named_modules())
    for c, root in pick(tp_side, lambda kv: kv[1]):
        width = mods[root].out_channels if hasattr(mods[root], "out_channels") else mods[root].out_features
        ch = sorted(rng.sample(range(width), min(n_channels, width - 1)))
        outs = _slices([_outs(c)]) & known_slices  # (fxtaylor may not know a module at all)
        frozen = c in cmp.tp_frozen_by_fx or (bool(outs) and outs <= frozen_slices)
        out.append(Verdict("tp", c, root, ch, tp_dead(model, x, root, ch, scale), frozen))
    return out


def _outs(c: Canon) -> Canon:
    """The output-side entries of a group (what its channels are made by)."""
    return frozenset(e for e in c if e[1] != "in")


def _slices(groups: Iterable[Canon]) -> set:
    return {(n, a, i) for c in groups for n, a, idx in c for i in idx}


def grouped_conv_difference(model: nn.Module, cmp: Comparison) -> str | None:
    """``None`` if every difference is the documented grouped-conv one: each differing group
    (either side) touches a grouped conv, and both sides' differing groups cover exactly the
    same parameter slices (they only partition them differently). Else: what is off."""
    mods = dict(model.named_modules())
    problems = []
    for side, groups in (("fxtaylor", cmp.only_fx), ("tp", cmp.only_tp)):
        for c in groups:
            if not any(is_grouped(mods.get(n)) for n, _, _ in c):
                problems.append(f"{side}-only group without a grouped conv: {describe_group(c)}")
    a, b = _slices(cmp.only_fx), _slices(cmp.only_tp)
    if a != b:
        problems.append(
            f"differing groups cover different slices: {len(a - b)} only in fxtaylor's "
            f"(e.g. {sorted(a - b)[:3]}), {len(b - a)} only in tp's (e.g. {sorted(b - a)[:3]})"
        )
    if cmp.tp_frozen_by_fx or cmp.unit_mismatch:
        problems.append("frozen-by-fxtaylor groups or unit-pairing mismatches present")
    return "\n".join(problems) or None


__all__ = [
    "Comparison", "Dead", "ToolError", "Verdict", "classifier_layers", "compare", "describe", "describe_group",
    "fx_canonical", "fx_dead", "grouped_conv_difference", "is_depthwise", "output_scale", "is_grouped", "randomize_norms", "resolve",
    "time_limit", "tp_canonical", "tp_dead", "tp_kill",
]
