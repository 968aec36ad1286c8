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
from typing import Any, Iterable, Sequence

import torch
import torch.fx as fx
import torch.nn as nn

from ..errors import PruneError, TraceError
from . import propagate, record, rules, selection, surgery
from .atoms import PARAM, PRODUCER, Atoms, Space


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
    min_keep: int = 1  # units that must remain
    _graph: "ChannelGraph | None" = field(default=None, repr=False)

    @property
    def size(self) -> int:
        """Number of channels (units) the group has now."""
        return int(self.units.numel())

    @property
    def prunable(self) -> bool:
        return not self.frozen and self.size > self.min_keep

    @property
    def num_prunable(self) -> int:
        return max(self.size - self.min_keep, 0) if not self.frozen else 0

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
        state = "prunable" if self.prunable else ("frozen: " + "; ".join(self.frozen[:2]) if self.frozen else "at minimum")
        return f"ChannelGroup({self.index}, size={self.size}, producers={prod[:4]}{'...' if len(prod) > 4 else ''}, {state})"


class ChannelGraph:
    """Channel groups of a model, built by :func:`trace`; prunes the model through them."""

    def __init__(self, model: nn.Module, fx_graph: fx.Graph, prop: propagate.ChannelProp, ignored: set[str], opaque: set[str]):
        self.model = model
        self.fx_graph = fx_graph
        self.partial: record.Partial | None = None  # set when the model was traced in parts
        self.modes: tuple[str, ...] = ("eval",)  # modes whose graphs were joined
        # user leaves the rule table does not know: black boxes whose channels are frozen
        self.opaque = sorted(n for n in opaque if rules.lookup_module(model.get_submodule(n)) is None)
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
        for atoms_frozen, reason in atoms.freezes:
            u = unit_of_atom[atoms_frozen]
            for gi in torch.unique(group_of_unit[u[u >= 0]]).tolist():
                if reason not in self.groups[gi].frozen:
                    self.groups[gi].frozen.append(reason)
        # Per-space unit maps: the only state pruning has to keep in sync with the model.
        self.spaces: dict[tuple[str, str], Space] = atoms.spaces
        self.unit_maps: dict[tuple[str, str], torch.Tensor] = dict(
            zip(atoms.spaces, _units_of([sp.atoms for sp in atoms.spaces.values()], unit_of_atom))
        )
        self.group_of_unit = group_of_unit
        self.node_maps = _feature_map_nodes(prop, unit_of_atom)
        io = [((name, side), a) for name, (i, o) in prop.module_io.items() for side, a in (("in", i), ("out", o)) if a is not None]
        self.io_maps: dict[tuple[str, str], torch.Tensor] = dict(
            zip((k for k, _ in io), _units_of([a for _, a in io], unit_of_atom))
        )

    # -- reading -----------------------------------------------------------------------------

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
        for key, units in self.unit_maps.items():
            pos, local = _locate(units, g.units)
            if pos.numel():
                sp = self.spaces[key]
                out.append(Member(key[0], key[1], sp.kind, sp.module_type, pos, local))
        return out

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

    def prune(self, group: ChannelGroup, channels: Sequence[int] | torch.Tensor) -> None:
        """Remove group-local ``channels`` of ``group`` from every member of the model.

        The surgery is torch-pruning's per-layer functions; afterwards the graph describes the
        pruned model (channel k of a group is again ``group.units[k]``), so it can be reused.
        """
        if group._graph is not self:
            raise PruneError("this group belongs to another channel graph")
        idx = torch.as_tensor(list(channels) if not isinstance(channels, torch.Tensor) else channels, dtype=torch.long).flatten()
        if group.frozen:
            raise PruneError(f"group {group.index} is frozen: {'; '.join(group.frozen)}")
        if idx.numel() == 0:
            return
        if idx.unique().numel() != idx.numel() or int(idx.min()) < 0 or int(idx.max()) >= group.size:
            raise PruneError(f"group {group.index}: channel indices must be distinct and in [0, {group.size})")
        if group.size - idx.numel() < group.min_keep:
            raise PruneError(f"group {group.index}: must keep at least {group.min_keep} of {group.size} channels")
        self.check_current()  # a stale graph would cut the wrong positions, or none, while renaming widths
        gone = group.units[idx]
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
            surgery.prune_module(self.model.get_submodule(name), removed)
        for path, dim, pos in params:
            surgery.prune_parameter(self.model, path, dim, pos)
        self.unit_maps.update(kept)
        for maps in (self.node_maps, self.io_maps):
            for key, units in maps.items():
                maps[key] = units[~torch.isin(units, gone)]
        group.units = group.units[~torch.isin(group.units, gone)]

    def check_current(self) -> None:
        """Raise :class:`PruneError` unless every module (and free parameter) still has the
        widths this graph recorded. A model changed since it was traced — pruned by
        torch-pruning or by hand, a layer replaced — makes the graph stale: its positions no
        longer name the model's channels, and pruning through it would cut the wrong ones (or
        none, while the modules' width attributes shrink). Nothing is modified."""
        modules = dict(self.model.named_modules())
        for key, units in self.unit_maps.items():
            name, role = key
            have = _widths(self.model, modules, name, role, self.spaces[key].kind)
            if have is None:
                raise PruneError(f"the channel graph is stale: the model has no {name} any more (it was changed since it "
                                 "was traced); trace it again (fxtaylor.trace)")
            want = int(units.numel())
            if any(w != want for w in have):
                raise PruneError(
                    f"the channel graph is stale: {name} ({role}) has {next(w for w in have if w != want)} "
                    f"channels, the graph recorded {want}; the model was changed outside this graph since it was traced "
                    "(e.g. by another pruner): trace it again (fxtaylor.trace) and prune through the new graph")


_WIDTH_ATTRS = {"out": ("out_channels", "out_features", "embedding_dim"), "in": ("in_channels", "in_features"),
                "norm": ("num_features", "num_parameters")}
_KINDS: dict[type, str] = {}  # module class -> "dense" (conv, linear), "embedding" or "other"


def _widths(model: nn.Module, modules: dict[str, nn.Module], name: str, role: str, kind: str) -> list[int] | None:
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
    cls = type(m)
    mk = _KINDS.get(cls)
    if mk is None:
        dense = issubclass(cls, (nn.Linear, nn.modules.conv._ConvNd))
        mk = _KINDS[cls] = "dense" if dense else "embedding" if issubclass(cls, nn.Embedding) else "other"
    attrs, params = m.__dict__, m._parameters
    out = [v for v in (attrs.get(a) for a in _WIDTH_ATTRS.get(role, ())) if type(v) is int]
    w = params.get("weight")
    if mk == "dense" and not attrs.get("transposed", False) and w is not None and w.dim() >= 2:
        if role == "out":
            out.append(w.shape[0])
            b = params.get("bias")
            if b is not None:
                out.append(b.shape[0])
        elif role == "in":
            out.append(w.shape[1] * attrs.get("groups", 1))
    elif mk == "embedding" and role == "out" and w is not None and w.dim() == 2:
        out.append(w.shape[1])
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
) -> ChannelGraph:
    """Build the :class:`ChannelGraph` of ``model``.

    ``example_inputs``: a tensor or tuple of tensors on the model's device (batch size 1 is
    enough; only shapes matter). ``ignored_layers``: modules (or their names) whose channels
    must not change; every group touching them is frozen. ``leaf_modules``: module types,
    names or instances fx should not trace into (e.g. ones with data-dependent control flow);
    their channels are frozen and listed in ``graph.opaque``.

    The model is traced in eval and in train mode; where the graphs differ (auxiliary heads),
    the groups are their union (``graph.modes``). A model fx cannot trace whole is traced in
    parts, the code between them recorded op by op (``graph.partial``; docs/graph.md).
    ``example_inputs`` may then be any arguments the model takes (a list of images).
    """
    # one resolution for trace() and prune(): containers expanded, leaf types by isinstance
    ignored, leaf_names = selection.resolve(model, ignored_layers, leaf_modules)
    leaves = tuple(sorted(leaf_names))  # the tracer matches leaves by name
    partial = None
    try:
        fx_graph, train_graph, opaque = propagate.symbolic_trace_modes(model, leaves)
    except TraceError as whole:
        fx_graph, example_inputs, partial = record.record(model, example_inputs, leaves)
        if not partial.traced and not any(n.op == "call_module" for n in fx_graph.nodes):
            raise whole
        train_graph = None  # recorded in eval mode only
        opaque = {n.target for n in fx_graph.nodes if n.op == "call_module" and n.target in leaf_names}
    prop = propagate.run(model, fx_graph, example_inputs, opaque, train_graph)
    graph = ChannelGraph(model, fx_graph, prop, ignored, opaque)
    graph.partial = partial
    graph.modes = ("eval", "train") if train_graph is not None else ("eval",)
    return graph
