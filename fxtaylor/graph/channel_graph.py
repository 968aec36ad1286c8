"""The channel graph: which channels of a model must be removed together, and where they live.

>>> import torch, torchvision, fxtaylor
>>> model = torchvision.models.resnet18(weights=None)
>>> graph = fxtaylor.trace(model, torch.randn(1, 3, 224, 224))
>>> g = graph.groups[0]
>>> g.size, [m.name + "." + m.role for m in g.members][:3]  # doctest: +SKIP
(64, ['conv1.out', 'bn1.norm', 'layer1.0.conv1.in'])
>>> graph.prune(g, [0, 5])  # removes channel 0 and 5 of that group from every member

Vocabulary: a *space* is one prunable axis of one module (conv output channels, conv input
channels, batch-norm features, one axis of a free parameter). A *unit* is a set of positions in
spaces that must go together (channel i of every tensor a residual add ties; a whole group of a
grouped conv). A :class:`ChannelGroup` is a set of units that share their producers: the thing a
global ranking compares and a pruner cuts. Group-local channel ``k`` is ``group.units[k]``.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch
import torch.fx as fx
import torch.nn as nn

from .. import examples
from ..errors import FxTaylorError, PruneError, TraceError
from . import arch_record, ops, optimizer_state, propagate, record, selection, surgery
from .atoms import CONSUMER, PARAM, PRODUCER, Atoms, Space


@dataclass
class Member:
    """One module (or free parameter) axis touched by a group.

    ``positions[i]`` is an index along the member's axis; ``channels[i]`` is the group-local
    channel it belongs to (several positions can share one: flatten→linear, grouped convs).
    """

    name: str
    role: str  # 'out' | 'in' | 'norm' | 'param<d>'
    kind: str  # atoms.PRODUCER / CONSUMER / NORM / PARAM
    module_type: str
    positions: torch.Tensor
    channels: torch.Tensor


@dataclass
class FeatureMap:
    """A tensor in which the group's channels are *read*: the input of a conv or linear.

    Removing a channel is exactly making every reader see zero there, so these are the maps
    the Taylor criterion observes. They come after the producer's norm and activation (and
    after any residual add or concat). ``consumer`` is the reading module (a forward pre-hook
    there sees the tensor), ``call`` its fx node (a module called twice reads twice), ``node``
    the fx node of the tensor. Along ``dim``, ``channels[j]`` is the group-local channel at
    position j, or -1 (another group's channel, e.g. after a concat). ``shape`` is the tensor's
    shape for the example inputs (elements per position = product of the other non-batch dims).
    """

    consumer: str
    call: str
    node: str
    dim: int
    channels: torch.Tensor
    shape: torch.Size


@dataclass
class ChannelGroup:
    index: int
    units: torch.Tensor  # global unit ids, ascending; group-local channel k = units[k]
    frozen: list[str] = field(default_factory=list)  # why it cannot be pruned; empty = prunable
    # why removing its channels is not exact (a normaliser spans them): in an exact graph these
    # reasons are in ``frozen`` too; with ``trace(..., exact=False)`` the group prunes anyway
    inexact: list[str] = field(default_factory=list)
    min_keep: int = 1  # units that must remain
    # unit sets of which one must remain each: the channels one layer reads of this group, where
    # it reads only part of it (a piece of timm's MixedConv2d split feeds its own conv)
    keep: list[torch.Tensor] = field(default_factory=list)
    _graph: "ChannelGraph | None" = field(default=None, repr=False)

    @property
    def size(self) -> int:
        """Number of channels (units) the group has now."""
        return int(self.units.numel())

    @property
    def least(self) -> int:
        """Units that must remain: ``min_keep``, and one of each ``keep`` set."""
        return max(self.min_keep, int(self._stay(torch.zeros(self.size)).sum())) if self.keep else self.min_keep

    @property
    def prunable(self) -> bool:
        return not self.frozen and self.size > self.least

    @property
    def num_prunable(self) -> int:
        return max(self.size - self.least, 0) if not self.frozen else 0

    def removal_order(self, scores: torch.Tensor) -> tuple[torch.Tensor, int]:
        """Group-local channels in the order they may go, lowest ``scores`` first, and how many
        must stay (at the end of the order): ``min_keep``, and for the ``keep`` sets the units a
        greedy cover keeps — for each set not yet kept, smallest first, the unit that keeps the
        most such sets, the highest-scored among those. Taking channels from the front never
        leaves a layer without input channels."""
        order = torch.sort(scores, stable=True).indices
        if not self.keep:
            return order, self.min_keep
        stay = self._stay(scores)
        return torch.cat([order[~stay[order]], order[stay[order]]]), max(self.min_keep, int(stay.sum()))

    def _stay(self, scores: torch.Tensor) -> torch.Tensor:
        rank = torch.empty(self.size, dtype=torch.long)
        rank[torch.sort(scores, stable=True).indices] = torch.arange(self.size)
        local = sorted((torch.searchsorted(self.units, k) for k in self.keep), key=len)
        stay = torch.zeros(self.size, dtype=torch.bool)
        for piece in local:
            if bool(stay[piece].any()):
                continue
            hits = torch.zeros(self.size, dtype=torch.long)
            for other in local:
                if not bool(stay[other].any()):
                    hits[other] += 1
            stay[piece[torch.argmax(hits[piece] * self.size + rank[piece])]] = True
        return stay

    @property
    def graph(self) -> "ChannelGraph":
        """The channel graph this group belongs to (its rows: ``group.graph.spec_of``)."""
        return self._graph

    @property
    def members(self) -> list[Member]:
        return self._graph._members(self)

    @property
    def feature_maps(self) -> list[FeatureMap]:
        return self._graph._feature_maps(self)

    @property
    def width(self) -> int:
        """Output channels per unit in the producers (1, or a conv group's width)."""
        prod = [m for m in self.members if m.kind == PRODUCER]
        return prod[0].positions.numel() // max(self.size, 1) if prod else 1

    def __repr__(self) -> str:
        prod = [m.name for m in self.members if m.kind == PRODUCER]
        state = ("prunable" + (" (inexact)" if self.inexact else "") if self.prunable
                 else ("frozen: " + "; ".join(self.frozen[:2]) if self.frozen else "at minimum"))
        return f"ChannelGroup({self.index}, size={self.size}, producers={prod[:4]}{'...' if len(prod) > 4 else ''}, {state})"


class ChannelGraph:
    """Channel groups of a model, built by :func:`trace`; prunes the model through them."""

    def __init__(self, model: nn.Module, fx_graph: fx.Graph, prop: propagate.ChannelProp, ignored: set[str], opaque: set[str],
                 exact: bool = True, registry: ops.Registry = ops.REGISTRY):
        self.model = model
        # the op rows the graph was traced with (trace(..., specs=...) over the global ones):
        # pruning, checks and widths ask the same rows the channel rules came from
        self.registry = registry
        self._kinds: dict[type, tuple[str, int, int]] = {}  # see _kind_of
        self.exact = exact  # False: groups tied through a normaliser's statistics prune too (inexactly)
        self.fx_graph = fx_graph
        self.partial: record.Partial | None = None  # set when the model was traced in parts
        self.modes: tuple[str, ...] = ("eval",)  # modes whose graphs were joined
        self.example_args: examples.Args | None = None  # the example, as the model's arguments (set by trace)
        self.given_example: Any = None  # the object trace() was given (an example already decided: example_args)
        # the model's arch record as traced (set by trace); each cut extends it and sets it on the model
        self.pruning_record: arch_record.Pending | None = None
        # user leaves the rule table does not know: black boxes whose channels are frozen
        self.opaque = sorted(n for n in opaque if registry.lookup_module(model.get_submodule(n)) is None)
        atoms = prop.atoms
        for (name, _), sp in atoms.spaces.items():  # ignored: module names, containers expanded
            owner = name.rpartition(".")[0] if sp.kind == PARAM else name  # a free parameter's module
            if name in ignored or owner in ignored:
                atoms.freeze(sp.atoms, f"touches ignored layer {name}")
        root = atoms.classes()
        unit_of_atom, n_units = _units(atoms, root)
        group_of_unit = _groups(atoms, unit_of_atom, n_units)
        n_groups = int(group_of_unit.max()) + 1 if n_units else 0
        self.groups = [
            ChannelGroup(i, torch.nonzero(group_of_unit == i).flatten(), _graph=self) for i in range(n_groups)
        ]
        for records, field_name in ((atoms.freezes, "frozen"), (atoms.inexact, "inexact")):
            for atoms_noted, reason in records:
                u = unit_of_atom[atoms_noted]
                for gi in torch.unique(group_of_unit[u[u >= 0]]).tolist():
                    reasons = getattr(self.groups[gi], field_name)
                    if reason not in reasons:
                        reasons.append(reason)
        if exact:  # an exact graph freezes what only prunes inexactly
            for g in self.groups:
                g.frozen.extend(r for r in g.inexact if r not in g.frozen)
        for atoms_kept, n in atoms.at_least:
            u = unit_of_atom[atoms_kept]
            for gi in torch.unique(group_of_unit[u[u >= 0]]).tolist():
                self.groups[gi].min_keep = max(self.groups[gi].min_keep, n)
        # Per-space unit maps: the only state pruning has to keep in sync with the model.
        self.spaces: dict[tuple[str, str], Space] = atoms.spaces
        self.unit_maps: dict[tuple[str, str], torch.Tensor] = dict(
            zip(atoms.spaces, _units_of([sp.atoms for sp in atoms.spaces.values()], unit_of_atom))
        )
        self._keep_sets(self.spaces, list(self.unit_maps.values()), group_of_unit)
        self.group_of_unit = group_of_unit
        self._space_index: dict[int, list[tuple[str, str]]] | None = None  # see _spaces_of
        self.node_maps = _feature_map_nodes(prop, unit_of_atom)
        io = [((name, side), a) for name, (i, o) in prop.module_io.items() for side, a in (("in", i), ("out", o)) if a is not None]
        self.io_maps: dict[tuple[str, str], torch.Tensor] = dict(
            zip((k for k, _ in io), _units_of([a for _, a in io], unit_of_atom))
        )

    def _keep_sets(self, spaces: dict, units_of_space: list[torch.Tensor], group_of_unit: torch.Tensor) -> None:
        """A layer that reads only part of a group (a split piece feeding its own conv) must keep
        one of those channels: a conv cannot have none."""
        for (_, sp), units in zip(spaces.items(), units_of_space):
            u = units[units >= 0]
            if sp.kind != CONSUMER or not u.numel():
                continue
            gid = group_of_unit[u]
            for gi in torch.unique(gid).tolist():
                part = torch.unique(u[gid == gi])
                g = self.groups[gi]
                if part.numel() < g.size and not any(torch.equal(part, k) for k in g.keep):
                    g.keep.append(part)

    # -- reading -----------------------------------------------------------------------------

    def spec_of(self, module: nn.Module) -> ops.OpSpec | None:
        """What this graph knows about ``module``: the rows it was traced with
        (``trace(..., specs=...)``) first, then the global ones (:func:`fxtaylor.graph.ops.spec_of`).
        Code that reads a traced model's modules (costs, criteria, reports) asks here."""
        return self.registry.spec_of(module)

    @property
    def prunable_groups(self) -> list[ChannelGroup]:
        return [g for g in self.groups if g.prunable]

    def group_of(self, name: str, role: str = "out") -> ChannelGroup | None:
        """The group holding channel 0 of space (module name, role), e.g. ('layer1.0.conv1', 'out')."""
        units = self.unit_maps.get((name, role))
        if units is None or not (units >= 0).any():
            return None
        return self.groups[int(self.group_of_unit[units[units >= 0][0]])]

    def _members(self, g: ChannelGroup) -> list[Member]:
        out = []
        for key in self._spaces_of(g.index):
            units = self.unit_maps[key]
            pos, local = _locate(units, g.units)
            if pos.numel():
                sp = self.spaces[key]
                out.append(Member(key[0], key[1], sp.kind, sp.module_type, pos, local))
        return out

    def _spaces_of(self, gi: int) -> list[tuple[str, str]]:
        """The spaces holding units of group ``gi`` (an index built once, until the next cut):
        listing members scans those alone, not every space of the model."""
        if self._space_index is None:
            index: dict[int, list[tuple[str, str]]] = defaultdict(list)
            for key, units in self.unit_maps.items():
                for g in torch.unique(self.group_of_unit[units[units >= 0]]).tolist():
                    index[g].append(key)
            self._space_index = index
        return self._space_index.get(gi, [])

    def _feature_maps(self, g: ChannelGroup) -> list[FeatureMap]:
        out = []
        for (consumer, call, node, dim, shape), units in self.node_maps.items():
            pos, local = _locate(units, g.units)
            if pos.numel():
                channels = torch.full_like(units, -1)
                channels[pos] = local
                out.append(FeatureMap(consumer, call, node, dim, channels, shape))
        return out

    def module_io(self) -> dict[str, tuple[torch.Tensor | None, torch.Tensor | None]]:
        """For each module called in the forward pass: the unit (or -1) of each position of its
        input and output channel dims. What :mod:`fxtaylor.flops` spreads a module's FLOPs by."""
        names = dict.fromkeys(n for n, _ in self.io_maps)
        return {n: (self.io_maps.get((n, "in")), self.io_maps.get((n, "out"))) for n in names}

    def summary(self) -> str:
        """One line per group: size, producers, prunable or why not; then, for a model traced
        in parts, what was traced and what was not (and why)."""
        lines = [repr(g) for g in self.groups]
        if self.partial is not None:
            lines.append(self.partial.describe())
        return "\n".join(lines)

    # -- pruning -----------------------------------------------------------------------------

    def prune(self, group: ChannelGroup, channels: Sequence[int] | torch.Tensor,
              optimizer: torch.optim.Optimizer | None = None) -> None:
        """Remove group-local ``channels`` of ``group`` from every member of the model.

        The surgery is torch-pruning's per-layer functions; afterwards the graph describes the
        pruned model (channel k of a group is again ``group.units[k]``), so it can be reused.

        ``optimizer``: the optimizer training the model. The surgery replaces every cut
        parameter with a new one; given the optimizer, its parameters and state (momentum,
        Adam moments) follow the kept channels. Without it, an optimizer built before the cut
        keeps the old parameters, and stepping it warns
        (:class:`~fxtaylor.graph.optimizer_state.StaleOptimizerWarning`).
        The model's arch record follows every cut (``fxtaylor.save(model, path)``).
        """
        self.prune_many([(group, channels)], optimizer=optimizer)

    def prune_many(self, cuts: Iterable[tuple[ChannelGroup, Sequence[int] | torch.Tensor]],
                   optimizer: torch.optim.Optimizer | None = None) -> None:
        """:meth:`prune` for several groups at once: every cut is checked before anything is
        modified, and each module is cut once (a pruner step cuts ~100 groups of DenseNet-121:
        one pass over the graph instead of one per group, measured 20 s -> 0.3 s)."""
        optimizer_state.check_optimizer(optimizer)
        gone_parts, shrunk = [], []
        for group, channels in cuts:
            if group._graph is not self:
                raise PruneError("this group belongs to another channel graph")
            idx = torch.as_tensor(list(channels) if not isinstance(channels, torch.Tensor) else channels, dtype=torch.long).flatten()
            if group.frozen:
                raise PruneError(f"group {group.index} is frozen: {'; '.join(group.frozen)}")
            if idx.numel() == 0:
                continue
            if idx.unique().numel() != idx.numel() or int(idx.min()) < 0 or int(idx.max()) >= group.size:
                raise PruneError(f"group {group.index}: channel indices must be distinct and in [0, {group.size})")
            if group.size - idx.numel() < group.min_keep:
                raise PruneError(f"group {group.index}: must keep at least {group.min_keep} of {group.size} channels")
            for k in group.keep:
                if bool(torch.isin(k, group.units[idx]).all()):
                    raise PruneError(f"group {group.index}: channels {torch.searchsorted(group.units, k).tolist()[:8]} "
                                     "are all a layer reads of this group (a split piece); keep one of them")
            if any(g is group for g, _ in shrunk):
                raise PruneError(f"group {group.index} is cut twice in one call")
            gone_parts.append(group.units[idx])
            shrunk.append((group, idx))
        if not gone_parts:
            return
        self.check_current()  # a stale graph would cut the wrong positions, or none, while renaming widths
        gone = torch.cat(gone_parts)
        by_module: dict[str, dict[str, list[int]]] = defaultdict(dict)
        params: list[tuple[str, int, list[int]]] = []
        kept: dict[tuple[str, str], torch.Tensor] = {}
        for key, units in self.unit_maps.items():
            hit = torch.isin(units, gone)
            if not bool(hit.any()):
                continue
            pos = torch.nonzero(hit).flatten().tolist()
            if self.spaces[key].kind == PARAM:
                params.append((key[0], int(key[1][len("param"):]), pos))
            else:
                by_module[key[0]][key[1]] = pos
            kept[key] = units[~hit]
        for name, removed in by_module.items():
            self.registry.check_module(self.model.get_submodule(name), removed)  # before any module is cut
        touched = optimizer_state.touched(self.model, by_module, (path for path, _, _ in params))
        with optimizer_state.following(self.model, touched, optimizer):
            for name, removed in by_module.items():
                self.registry.prune_module(self.model.get_submodule(name), removed)
            for path, dim, pos in params:
                surgery.prune_parameter(self.model, path, dim, pos)
        self.unit_maps.update(kept)
        self._space_index = None
        for maps in (self.node_maps, self.io_maps):
            for key, units in maps.items():
                maps[key] = units[~torch.isin(units, gone)]
        for group, idx in shrunk:
            keep = torch.ones(group.size, dtype=torch.bool)
            keep[idx] = False
            group.units = group.units[keep]
            group.keep = [k[~torch.isin(k, gone)] for k in group.keep]
        if self.pruning_record is not None:  # the model's arch record says what went (fxtaylor.save reads it)
            arch_record.after_cut(self.model, self.pruning_record, gone.tolist())

    def check_current(self) -> None:
        """Raise :class:`PruneError` unless every module (and free parameter) still has the
        widths this graph recorded. A model changed since it was traced — pruned by
        torch-pruning or by hand, a layer replaced — makes the graph stale: its positions no
        longer name the model's channels, and pruning through it would cut the wrong ones (or
        none, while the modules' width attributes shrink). Nothing is modified."""
        modules = dict(self.model.named_modules())
        for key, units in self.unit_maps.items():
            name, role = key
            have = _widths(self.model, modules, name, role, self.spaces[key].kind, self._kind_of)
            if have is None:
                raise PruneError(f"the channel graph is stale: the model has no {name} any more (it was changed since it "
                                 "was traced); trace it again (fxtaylor.trace)")
            want = int(units.numel())
            if any(w != want for w in have):
                raise PruneError(
                    f"the channel graph is stale: {name} ({role}) has {next(w for w in have if w != want)} "
                    f"channels, the graph recorded {want}; the model was changed outside this graph since it was traced "
                    "(e.g. by another pruner): trace it again (fxtaylor.trace) and prune through the new graph")

    def _kind_of(self, m: nn.Module) -> tuple[str, int, int]:
        """("dense" | "embedding" | "other", its weight's out axis, in axis) for ``m``'s class,
        cached per class: a pruning step checks every space. The axes come from the op spec (a
        transposed conv's are swapped)."""
        cls = type(m)
        found = self._kinds.get(cls)
        if found is None:
            spec = self.registry.spec_of(m)
            axes = (spec.out_axis, spec.in_axis) if spec is not None else (0, 1)
            dense = issubclass(cls, (nn.Linear, nn.modules.conv._ConvNd))
            found = self._kinds[cls] = ("dense" if dense else "embedding" if issubclass(cls, nn.Embedding) else "other", *axes)
        return found


_WIDTH_ATTRS = {"out": ("out_channels", "out_features", "embedding_dim"), "in": ("in_channels", "in_features"),
                "norm": ("num_features", "num_parameters", "num_channels")}


def _widths(model: nn.Module, modules: dict[str, nn.Module], name: str, role: str, kind: str,
            kind_of: Callable[[nn.Module], tuple[str, int, int]]) -> list[int] | None:
    """The widths the module (or free parameter) at ``name`` has now along the axis of space
    ``role``, from its width attributes and from its tensors (they disagree when a model was
    changed by hand); empty when nothing tells, None when it is gone. Read from the modules'
    dicts: a pruning step checks every space, and ``nn.Module.__getattr__`` misses are slow."""
    if kind == PARAM:
        owner_path, _, attr = name.rpartition(".")
        owner = modules.get(owner_path)
        p = None if owner is None else owner._parameters.get(attr, owner.__dict__.get(attr))
        if not isinstance(p, torch.Tensor):
            return None
        d = int(role[len("param"):])
        return [int(p.shape[d])] if p.dim() > d else []
    m = modules.get(name)
    if m is None:
        return None
    mk, out_axis, in_axis = kind_of(m)
    attrs, params = m.__dict__, m._parameters
    out = [v for v in (attrs.get(a) for a in _WIDTH_ATTRS.get(role, ())) if type(v) is int]
    w = params.get("weight")
    if mk == "dense" and w is not None and w.dim() >= 2:
        groups = attrs.get("groups", 1)
        if role == "out":  # the grouped axis holds a group's width: times the groups
            out.append(w.shape[out_axis] * (groups if out_axis == 1 else 1))
            b = params.get("bias")
            if b is not None:
                out.append(b.shape[0])
        elif role == "in":
            out.append(w.shape[in_axis] * (groups if in_axis == 1 else 1))
    elif mk == "embedding" and role == "out" and w is not None and w.dim() == 2:
        out.append(w.shape[out_axis])
    elif role == "norm":
        bufs = m._buffers
        for t in (w, params.get("bias"), bufs.get("running_mean"), bufs.get("running_var")):
            if t is not None and t.dim() == 1 and t.numel() > 1:
                out.append(t.shape[0])
    return out


def _locate(units: torch.Tensor, group_units: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions of ``units`` that belong to the group, and their group-local channel."""
    hit = torch.isin(units, group_units)
    pos = torch.nonzero(hit).flatten()
    return pos, torch.searchsorted(group_units, units[pos])


def _units_of(atom_lists: list[torch.Tensor], unit_of_atom: torch.Tensor) -> list[torch.Tensor]:
    """Unit (or -1) of every atom of every list, in one gather (a call per list costs ~13 µs,
    and a DenseNet has over a thousand lists)."""
    if not atom_lists:
        return []
    flat = torch.cat(atom_lists)
    units = torch.where(flat >= 0, unit_of_atom[flat.clamp(min=0)], -1)
    return list(units.split([a.numel() for a in atom_lists]))


def _units(atoms: Atoms, root: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Number the tie classes that contain a producer channel; other atoms map to -1."""
    has_prod = torch.zeros(atoms.n, dtype=torch.bool)
    has_prod[root[atoms.is_producer()]] = True
    roots = torch.nonzero(has_prod).flatten()  # ascending = first allocated producer first
    number = torch.full((atoms.n,), -1, dtype=torch.long)
    number[roots] = torch.arange(roots.numel())
    return number[root], int(roots.numel())


def _groups(atoms: Atoms, unit_of_atom: torch.Tensor, n_units: int) -> torch.Tensor:
    """Group id of each unit: units reached from the same producer space share a group."""
    a, b = [], []
    for sp in atoms.spaces.values():
        if sp.kind == PRODUCER and sp.size > 1:
            u = unit_of_atom[sp.start : sp.start + sp.size]
            a.append(u[:1].expand(sp.size - 1))
            b.append(u[1:])
    if not n_units:
        return torch.zeros(0, dtype=torch.long)
    helper = Atoms(n=n_units)
    if a:
        helper.ties.append((torch.cat(a), torch.cat(b)))
    root = helper.classes()
    _, gid = torch.unique(root, return_inverse=True)  # roots are ascending -> groups in order
    return gid


def _feature_map_nodes(prop: propagate.ChannelProp, unit_of_atom: torch.Tensor) -> dict:
    """Unit of each position of every tensor a conv/linear reads, keyed by who reads what."""
    out = {}
    reads = list(prop.reads.items())
    for (call, (node, dim, _, shape)), units in zip(reads, _units_of([r[2] for _, r in reads], unit_of_atom)):
        if bool((units >= 0).any()):
            out[(str(call.target), call.name, node.name, dim, shape)] = units
    return out


def trace(
    model: nn.Module,
    example_inputs: Any,
    *,
    ignored_layers: Iterable[nn.Module | str] = (),
    leaf_modules: Iterable[type | str | nn.Module] = (),
    exact: bool = True,
    specs: Mapping[type | str, ops.OpSpec] | None = None,
) -> ChannelGraph:
    """Build the :class:`ChannelGraph` of ``model``.

    ``example_inputs``: what the model runs on, on its device (batch size 1 is enough): a
    tensor (``model(x)``), or a tuple or list of its arguments — ``model(*inputs)``, or where
    that fails ``model(inputs)`` (a detection model's list of images), as torch-pruning takes
    them. A tuple or list is run once to decide (eval mode, no gradients, nothing changed);
    the decision is ``graph.example_args`` (:mod:`fxtaylor.examples`); a lone tensor is checked
    on meta tensors while tracing. ``ignored_layers``:
    modules (or their names) whose channels must not change; every group touching them is
    frozen. ``leaf_modules``: module types, names or instances fx should not trace into (e.g.
    ones with data-dependent control flow); their channels are frozen and listed in
    ``graph.opaque``. ``exact=False``: also prune channels tied through a normaliser whose
    statistics span them (a layer norm over channels as in ConvNeXt, ConvNeXt-V2's global
    response norm, a softmax over channels, weight-standardised convs' inputs). No removal of
    those is exact — a dead channel still moves the others' statistics — so they are frozen by
    default; the groups this opens list why in ``group.inexact`` (docs/graph.md, "Exact and
    inexact"). ``specs``: op-spec rows for this trace only, ``{MyConv: OpSpec(...),
    "pkg.module.Class": spec}`` (keys as in :data:`fxtaylor.graph.ops.SPECS`); they win over the
    global rows, nothing global changes, and the graph keeps them (``graph.spec_of``, pruning).
    Rows are code, so arch records do not save them: rebuilding such a model traces it with
    the same ``specs`` again.

    The model is traced in eval and in train mode; where the graphs differ (auxiliary heads),
    the groups are their union (``graph.modes``). A model fx cannot trace whole is traced in
    parts, the code between them recorded op by op (``graph.partial``; docs/graph.md).
    """
    examples.check_model(model)
    if not isinstance(exact, bool):
        raise FxTaylorError(f"exact must be True or False, got {exact!r}")
    registry = ops.REGISTRY.with_specs(specs)  # checked before anything runs
    ignored_layers, leaf_modules = as_selection(ignored_layers, "ignored_layers"), as_selection(leaf_modules, "leaf_modules")
    # one resolution for trace() and prune(): containers expanded, leaf types by isinstance
    ignored, leaf_names = selection.resolve(model, ignored_layers, leaf_modules)
    # a list or tuple is run once to decide the convention; a lone tensor is checked by the
    # meta run below (channels, dtypes), which costs a few ms where a real run costs a forward
    args = examples.resolve(model, example_inputs, error=TraceError, run_tensor=False)
    leaves = tuple(sorted(leaf_names))  # the tracer matches leaves by name
    partial = None
    placeholders: tuple = args
    try:
        fx_graph, train_graph, opaque = propagate.symbolic_trace_modes(model, leaves, registry)
    except TraceError as whole:
        fx_graph, placeholders, partial = record.record(model, args, leaves, registry)
        if not partial.traced and not any(n.op == "call_module" for n in fx_graph.nodes):
            raise whole
        train_graph = None  # recorded in eval mode only
        opaque = {n.target for n in fx_graph.nodes if n.op == "call_module" and n.target in leaf_names}
    prop = propagate.run(model, fx_graph, placeholders, opaque, train_graph, registry)
    graph = ChannelGraph(model, fx_graph, prop, ignored, opaque, exact, registry)
    graph.partial = partial
    graph.modes = ("eval", "train") if train_graph is not None else ("eval",)
    graph.example_args, graph.given_example = args, example_inputs
    # as fxtaylor.prune's record writes them: names, so the record is plain data
    recorded = {"ignored_layers": selection.names(model, ignored_layers, "ignored_layers"),
                "leaf_modules": selection.names(model, leaf_modules, "leaf_modules", True), "exact": exact}
    graph.pruning_record = arch_record.start(model, args, recorded)
    return graph


def as_selection(items: Any, what: str) -> list:
    """``ignored_layers`` / ``leaf_modules`` as a list; a lone module, name or type (which
    would be iterated over: its children, or a name's letters) is refused with the fix."""
    if items is None:
        return []
    if isinstance(items, (str, nn.Module, type)):
        shown = repr(items) if isinstance(items, str) else type(items).__name__ if isinstance(items, nn.Module) else repr(items)
        raise FxTaylorError(f"{what} must be a list (or tuple, set) of modules, module names or types, got {shown}: "
                            f"wrap a single one in a list, e.g. [{shown}]")
    try:
        return list(items)
    except TypeError:
        raise FxTaylorError(f"{what} must be a list (or tuple, set) of modules, module names or types, got "
                            f"{type(items).__name__}") from None
