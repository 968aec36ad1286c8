"""The cost-model interface and the per-layer channel bookkeeping every cost model shares."""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections import defaultdict
from typing import Iterable

import torch
import torch.nn as nn

from ..graph import ChannelGraph, ops

DENSE, SINGLE = ops.DENSE, ops.SINGLE
"""A *dense* layer's cost depends on its input and output widths separately (conv with one
group, linear); a *single*-width layer has one channel count that input and output share (batch
norm, activation, pooling, depthwise and grouped convs, whose groups go whole)."""


def _module_widths(m: nn.Module) -> tuple[int | None, int | None]:
    spec = ops.spec_of(m)
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
            fin, fout = _module_widths(m)
            cin = ins.numel() if ins is not None else (fin if fin is not None else outs.numel())
            cout = outs.numel() if outs is not None else (fout if fout is not None else cin)
            dense = ops.cost_kind(m) == DENSE  # from the op spec: conv with one group, linear
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
    """A resource: ``layer_cost`` per layer at any widths, plus a constant remainder.

    Lifecycle: :meth:`sync` with the model's channel graph whenever the architecture may have
    changed (cheap when it did not); then :meth:`total`, :meth:`predict`, :meth:`unit_costs`.
    """

    name: str = ""
    unit: str = ""

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
