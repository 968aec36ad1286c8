"""The cost-model interface and the per-layer channel bookkeeping every cost model shares."""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections import defaultdict
from typing import Any, Iterable, Sequence

import torch
import torch.nn as nn

from ..flops import MISSING
from ..graph import ChannelGraph, ops

DENSE, SINGLE = ops.DENSE, ops.SINGLE
"""A *dense* layer's cost depends on its input and output widths separately (conv with one
group, linear); a *single*-width layer has one channel count that input and output share (batch
norm, activation, pooling, depthwise and grouped convs, whose groups go whole)."""


def _module_widths(graph: ChannelGraph, m: nn.Module) -> tuple[int | None, int | None]:
    spec = graph.spec_of(m)  # the graph's own rows (trace(specs=)) first
    return spec.widths(m) if spec is not None and spec.widths is not None else (None, None)


class Layers:
    """The layers of a channel graph whose width pruning changes, with their widths now and the
    units on each side — so a set of removed units becomes new (cin, cout) per layer.

    Built from :meth:`ChannelGraph.module_io`: a module appears if any position of its input or
    output channel dimension belongs to a unit. A side without units keeps the module's own
    width (the stem conv's 3 input channels).
    """

    def __init__(self, graph: ChannelGraph):
        self.graph = graph
        self.names: list[str] = []
        self.kind: list[str] = []
        self.cin: list[int] = []
        self.cout: list[int] = []
        self.ins: list[torch.Tensor | None] = []
        self.outs: list[torch.Tensor | None] = []
        touching: dict[int, set[int]] = defaultdict(set)  # group index -> layer indices
        for name, (ins, outs) in graph.module_io().items():
            m = graph.model.get_submodule(name)
            fin, fout = _module_widths(graph, m)
            cin = ins.numel() if ins is not None else (fin if fin is not None else outs.numel())
            cout = outs.numel() if outs is not None else (fout if fout is not None else cin)
            dense = graph.registry.cost_kind(m) == DENSE  # from the op spec: conv with one group, linear
            i = len(self.names)
            self.names.append(name)
            self.kind.append(DENSE if dense else SINGLE)
            self.cin.append(int(cin))
            self.cout.append(int(cout))
            self.ins.append(ins)
            self.outs.append(outs)
            for side in (ins, outs):
                if side is not None:
                    u = side[side >= 0]
                    for gi in graph.group_of_unit[u].unique().tolist() if u.numel() else ():
                        touching[gi].add(i)
        self._count_cache: dict[int, tuple[dict[int, int], dict[int, int]]] = {}
        self.of_group = {g: sorted(v) for g, v in touching.items()}
        self.of_layer: list[list[int]] = [[] for _ in self.names]  # layer index -> group indices
        for g, layers in self.of_group.items():
            for i in layers:
                self.of_layer[i].append(g)

    def widths(self) -> dict[str, tuple[int, int]]:
        return {n: (ci, co) for n, ci, co in zip(self.names, self.cin, self.cout)}

    def delta(self, layer: int, units: torch.Tensor) -> tuple[int, int]:
        """Input and output channels ``layer`` loses when ``units`` (distinct) go."""
        if units.numel() <= 32:  # a selection chunk: counts looked up (the isin below is ~40x slower)
            cin, cout = self._counts(layer)
            us = units.tolist()
            return sum(cin.get(u, 0) for u in us), sum(cout.get(u, 0) for u in us)
        return self._delta(layer, self._mask(units))

    def deltas(self, units: torch.Tensor) -> list[tuple[int, int]]:
        """:meth:`delta` of every layer (one mask of ``units`` for all)."""
        mask = self._mask(units)
        return [self._delta(i, mask) for i in range(len(self.names))]

    def _mask(self, units: torch.Tensor) -> torch.Tensor:
        mask = torch.zeros(int(self.graph.group_of_unit.numel()) + 1, dtype=torch.bool)  # last: position -1
        mask[units] = True
        mask[-1] = False
        return mask

    def _delta(self, layer: int, mask: torch.Tensor) -> tuple[int, int]:
        ins, outs = self.ins[layer], self.outs[layer]
        di = int(mask[ins].sum()) if ins is not None else 0
        do = int(mask[outs].sum()) if outs is not None else 0
        return di, do

    def _counts(self, layer: int) -> tuple[dict[int, int], dict[int, int]]:
        """Unit -> positions it holds in the layer's input and output channels (built once)."""
        c = self._count_cache.get(layer)
        if c is None:
            def count(side):
                if side is None:
                    return {}
                u, n = torch.unique(side[side >= 0], return_counts=True)
                return dict(zip(u.tolist(), n.tolist()))
            c = self._count_cache[layer] = (count(self.ins[layer]), count(self.outs[layer]))
        return c

    def per_unit_deltas(self, layer: int, n_units: int) -> tuple[torch.Tensor, torch.Tensor]:
        """For every unit of the graph: input and output channels ``layer`` loses if it goes alone."""
        def count(side):
            if side is None:
                return torch.zeros(n_units, dtype=torch.long)
            return torch.bincount(side[side >= 0], minlength=n_units)
        return count(self.ins[layer]), count(self.outs[layer])


class CostModel(ABC):
    """A resource the pruner spends: FLOPs, latency, parameter bytes, peak memory, ...

    The pruner, loop, result, report and command line know a resource only through this class
    (docs/resources.md, "Adding a resource"). Five things a resource says:

    1. **what it is now** — :meth:`total`: counted exactly for a counted resource; for a
       measured one, what its model predicts (the pruner measures the real thing);
    2. **what a candidate cut would leave** — :meth:`predict_after`, built from one function
       per layer, ``layer_cost(name, cin, cout)``, plus a constant :meth:`remainder`; the same
       function gives each unit's marginal cost (:meth:`unit_costs`, λ's regulariser in eq. 9);
    3. **how a cut is checked** — ``measured = False``: the cut is made and the resource
       counted again (exact and cheap: FLOPs, bytes); ``measured = True``: the cut is tried on
       a copy and measured side by side (:meth:`measure`) with the model as it is, and applied only
       if it did not make things worse (latency, whose noise and non-additivity need it);
    4. **when the target is reached** — :meth:`done` (stop pruning) and :meth:`reached` (the
       run's verdict);
    5. **how it is reported** — ``label``, ``unit``, ``key`` (its field in a run's
       before/after), :meth:`format` and :meth:`describe`.

    Lifecycle: :meth:`sync` with the model's channel graph whenever the architecture may have
    changed (cheap when it did not); then :meth:`total`, :meth:`predict`, :meth:`unit_costs`.
    The pruner makes one for a ``Target(name, fraction)`` with :meth:`for_run`.
    """

    name: str = ""  # the target's key: Target(name, f), prune(target_<name>=f), --target-<name> f
    label: str = ""  # how sentences and tables name it
    of: str = ""  # what a target's fraction is of: "the original FLOPs"
    unit: str = ""
    key: str = ""  # the field of a run's before/after dicts that holds it
    help: str = ""  # the command-line flag's help
    measured: bool = False  # a cut is checked by measuring a trial copy side by side (True) or by re-counting (False)
    selection: str = "rank"  # the selection order by default (Schedule.selection): the paper's rank
    per_deployment: bool = False  # depends on where the model runs: a resumed run must keep its Deployment
    unremovable: str = ""  # what of it no channel cut removes, besides frozen groups and unpruned layers

    @property
    def measured_elsewhere(self) -> Any:
        """The :class:`~fxtaylor.Deployment` this cost model was measured on when that is not
        this machine (its predictions then stand in for measurements), else None."""
        return None

    @classmethod
    def for_run(cls, deployment: Any, *, progress: bool = True) -> "CostModel":
        """The cost model a run with a target of this resource uses, on the resolved
        ``deployment`` (:class:`fxtaylor.Deployment`; resources that do not depend on where the
        model runs ignore it)."""
        return cls()

    def __init__(self) -> None:
        self.layers: Layers | None = None
        self._key: tuple | None = None
        self._unit_costs: torch.Tensor | None = None

    # -- to implement ------------------------------------------------------------------------

    @abstractmethod
    def refresh(self, model: nn.Module, example_inputs, layers: Layers) -> None:
        """Learn the cost of the architecture ``layers`` describes (fvcore count, tables)."""

    @abstractmethod
    def layer_cost(self, name: str, cin: int, cout: int) -> float:
        """Cost of layer ``name`` at ``cin`` input and ``cout`` output channels."""

    @abstractmethod
    def remainder(self) -> float:
        """The part of the total that no layer's width changes (frozen or unmodelled work)."""

    def alignment(self, group_layers: Iterable[str]) -> int:
        """Channel multiple the resource prefers for a group touching these layers (1: none)."""
        return 1

    def describe(self) -> dict:
        """What report.json records about this cost model."""
        return {"resource": self.name, "unit": self.unit}

    @classmethod
    def format(cls, value: float | None, like: float | None = None) -> str:
        """``value`` (in :attr:`unit`) for people: ``"1.82 GFLOPs"``, ``"44.61 MiB"``;
        ``like``: the unit picked for this value instead, so that numbers side by side share one."""
        return MISSING if value is None else f"{value:.4g} {cls.unit}"

    def measure(self, models: Sequence[nn.Module], *, min_run_time: float | None = None) -> list:
        """A measured resource: ``models`` measured side by side, one ``Timing``-like result
        each (``median_ms``, ``rounds_ms``: the value per interleaved round)."""
        raise NotImplementedError(f"{self.label} is counted, not measured")

    @classmethod
    def done(cls, ratio: float, fraction: float, tolerance: float) -> bool:
        """Whether pruning stops at ``ratio`` (now ÷ dense) for a target ``fraction``. A
        counted resource stops at the target: its steps land in ``[fraction·(1 − tolerance),
        fraction]``; a measured one within its tolerance above (see :meth:`reached`)."""
        return ratio <= fraction if not cls.measured else cls.reached(ratio, fraction, tolerance)

    @classmethod
    def reached(cls, ratio: float, fraction: float, tolerance: float) -> bool:
        """The run's verdict. Counted: within ``tolerance`` of the target on either side (a cut
        that went far below it missed it too). Measured: at most ``fraction·(1 + tolerance)``
        — a measurement cannot promise the lower side."""
        if cls.measured:
            return ratio <= fraction * (1 + tolerance)
        return abs(ratio - fraction) <= tolerance * fraction

    # -- shared ------------------------------------------------------------------------------

    def sync(self, graph: ChannelGraph, example_inputs) -> "CostModel":
        key = (id(graph), tuple(u.numel() for u in graph.unit_maps.values()))
        if key != self._key:
            self.layers = Layers(graph)
            self.refresh(graph.model, example_inputs, self.layers)
            self._key, self._unit_costs = key, None
        return self

    def predict(self, widths: dict[str, tuple[int, int]] | None = None) -> float:
        """The resource at ``widths`` (layer name -> (cin, cout); missing layers as they are)."""
        L = self.layers
        widths = widths or {}
        total = self.remainder()
        for n, ci, co in zip(L.names, L.cin, L.cout):
            total += self.layer_cost(n, *widths.get(n, (ci, co)))
        return total

    def total(self) -> float:
        """The resource of the model as it is now, as this model knows it."""
        return self.predict()

    def predict_after(self, units: torch.Tensor) -> float:
        """The resource of the graph with ``units`` (global unit ids) removed."""
        L = self.layers
        widths = {n: (max(ci - di, 0), max(co - do, 0)) for n, ci, co, (di, do) in zip(L.names, L.cin, L.cout, L.deltas(units))}
        return self.predict(widths)

    def least(self) -> float:
        """The resource of the smallest model pruning can reach: every prunable group cut to
        the cheapest units that must remain. A lower target cannot be reached."""
        unit_cost = self.unit_costs()
        gone = []
        for g in self.layers.graph.prunable_groups:
            order, least = g.removal_order(-unit_cost[g.units])
            gone.append(g.units[order[: g.size - least]])
        return self.predict_after(torch.cat(gone)) if gone else self.total()

    def reachable(self) -> float:
        """The share of the resource channel pruning can remove (``1 − least / total``): what
        the prunable groups carry. ``fxtaylor inspect`` prints it; a target below
        ``1 − reachable`` is refused up front."""
        total = self.total()
        return 1 - self.least() / total if total > 0 else 0.0

    def saving(self, layer_deltas: dict[int, tuple[int, int]]) -> float:
        """What removing channels saves: ``layer_deltas`` maps layer index -> (lost in, lost out)."""
        L, s = self.layers, 0.0
        for i, (di, do) in layer_deltas.items():
            n, ci, co = L.names[i], L.cin[i], L.cout[i]
            s += self.layer_cost(n, ci, co) - self.layer_cost(n, max(ci - di, 0), max(co - do, 0))
        return s

    def unit_costs(self) -> torch.Tensor:
        """What removing each unit alone saves (float64, by global unit id): λ's cost."""
        if self._unit_costs is None:
            L = self.layers
            n = int(L.graph.group_of_unit.numel())
            cost = torch.zeros(n, dtype=torch.float64)
            for i, name in enumerate(L.names):
                di, do = L.per_unit_deltas(i, n)
                touched = ((di > 0) | (do > 0)).nonzero().squeeze(1)  # the units of this layer's groups
                if not touched.numel():
                    continue
                here = self.layer_cost(name, L.cin[i], L.cout[i])
                # few distinct (in, out) losses: one 1-D key per unit (a row-wise unique is ~100x slower)
                a_, b_ = di[touched], do[touched]
                base = int(b_.max()) + 1
                keys, which = torch.unique(a_ * base + b_, return_inverse=True)
                for j, key in enumerate(keys.tolist()):
                    a, b = divmod(key, base)
                    saved = here - self.layer_cost(name, max(L.cin[i] - a, 0), max(L.cout[i] - b, 0))
                    cost[touched[which == j]] += saved
            self._unit_costs = cost
        return self._unit_costs
