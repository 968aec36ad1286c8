"""The criteria the paper compares Taylor against (Table 1), with the same interface.

- :class:`WeightImportance` — "minimum weight": mean squared kernel weight of the map;
- :class:`ActivationMeanImportance`, :class:`ActivationStdImportance` — mean / standard
  deviation of the map's activations over its elements and the examples observed;
- :class:`RandomImportance`;
- :class:`OracleImportance` — remove each unit in turn and measure the loss change on given
  batches (``mode="abs"``: |C(W') − C(W)|, the paper's oracle-abs; ``"signed"``: C(W') − C(W)).

Activations are read where the channels are read (the feature maps), like the Taylor criterion.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Callable, Iterable, Iterator

import torch
import torch.nn as nn

from ..errors import ArgumentError, FxTaylorError
from ..graph.atoms import PRODUCER
from .base import GraphImportance
from .observe import Read, Reads, reads_of


class WeightImportance(GraphImportance):
    """Mean of the squared weights producing each map, averaged over the unit's producers."""

    def unit_scores(self) -> torch.Tensor:
        n = int(self.graph.group_of_unit.numel())
        total = torch.zeros(n, dtype=torch.float64)
        count = torch.zeros(n, dtype=torch.float64)
        for (name, role), units in self.graph.unit_maps.items():
            sp = self.graph.spaces[(name, role)]
            if sp.kind != PRODUCER:
                continue
            module = self.model.get_submodule(name)
            with torch.no_grad():  # the weight the layer applies (standardised, for a StdConv2d)
                w = self.graph.registry.weight_of(module).detach()
            per_pos = _per_output(w, self.graph.spec_of(module).out_axis, getattr(module, "groups", 1)).to("cpu", torch.float64)
            ok = units >= 0
            total.index_add_(0, units[ok], per_pos[ok])
            count.index_add_(0, units[ok], torch.ones(int(ok.sum()), dtype=torch.float64))
        return total / count.clamp(min=1)


def _per_output(w: torch.Tensor, out_axis: int, groups: int) -> torch.Tensor:
    """Mean squared weight of each output channel; ``out_axis``: the weight's dim of output
    channels (1 for a transposed conv, whose [in, out/groups, ...] weight holds a group's
    outputs on dim 1 and its rows on dim 0)."""
    if out_axis == 0:
        return w.pow(2).flatten(1).mean(1)
    if w.dim() > 2 and groups > 1:  # [groups·in/g, out/g, ...] -> [groups, out/g, in/g·k...]
        g = w.reshape(groups, w.shape[0] // groups, w.shape[1], -1).transpose(1, 2)
        return g.pow(2).flatten(2).mean(2).reshape(-1)
    return w.movedim(out_axis, 0).pow(2).flatten(1).mean(1)


class _ActivationStats(GraphImportance):
    """Running Σz, Σz² and element counts per unit over every read observed."""

    STATE = ("s1", "s2", "count")

    def __init__(self, model: nn.Module, example_inputs: Any, **kwargs: Any):
        super().__init__(model, example_inputs, **kwargs)
        self.reset()

    def reset(self) -> None:
        n = int(self.graph.group_of_unit.numel())
        self.s1 = torch.zeros(n, dtype=torch.float64, device=self.device)
        self.s2 = torch.zeros_like(self.s1)
        self.count = torch.zeros_like(self.s1)

    REDUCE = {"s1": "sum", "s2": "sum", "count": "sum"}

    def has_state(self) -> bool:
        return bool(self.count.sum() > 0)

    def on_retrace(self) -> None:
        self.reset()

    @contextmanager
    def observe(self) -> Iterator["_ActivationStats"]:
        self.sync()
        with Reads(self.model, reads_of(self.graph, self.device), self._on_read):
            yield self

    def _on_read(self, read: Read, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            z = x.detach().movedim(read.dim, 1)
            z = z.reshape(z.shape[0], z.shape[1], -1).to(torch.float64)
            elems = torch.full((z.shape[1],), z.shape[0] * z.shape[2], dtype=torch.float64, device=z.device)
            for acc, v in ((self.s1, z.sum((0, 2))), (self.s2, z.pow(2).sum((0, 2))), (self.count, elems)):
                acc.index_add_(0, read.targets, v.index_select(0, read.index))
        return x

    def _moments(self) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.has_state():
            raise FxTaylorError(f"{type(self).__name__} has observed nothing: run forward passes inside `with imp.observe():`")
        mean = self.s1 / self.count.clamp(min=1)
        return mean, self.s2 / self.count.clamp(min=1) - mean.pow(2)


class ActivationMeanImportance(_ActivationStats):
    def unit_scores(self) -> torch.Tensor:
        return self._moments()[0].cpu()


class ActivationStdImportance(_ActivationStats):
    def unit_scores(self) -> torch.Tensor:
        return self._moments()[1].clamp(min=0).sqrt().cpu()


class RandomImportance(GraphImportance):
    def __init__(self, model: nn.Module, example_inputs: Any, *, seed: int = 0, **kwargs: Any):
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ArgumentError(f"seed must be an integer, got {seed!r}")
        self.seed = seed
        super().__init__(model, example_inputs, **kwargs)

    def unit_scores(self) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed)
        return torch.rand(int(self.graph.group_of_unit.numel()), generator=g, dtype=torch.float64)


class OracleImportance(GraphImportance):
    """Loss change when each unit alone is removed (its reads see zero), on ``batches``.

    Costs one pass over the batches per unit: for small models and studies, not for pruning.
    """

    def __init__(self, model: nn.Module, example_inputs: Any, batches: Iterable, loss_fn: Callable,
                 *, mode: str = "abs", units: torch.Tensor | None = None, **kwargs: Any):
        if mode not in ("abs", "signed"):
            raise ArgumentError(f"mode must be 'abs' or 'signed', got {mode!r}")
        if not callable(loss_fn):
            raise ArgumentError(f"loss_fn must be a function loss_fn(output, labels), got {type(loss_fn).__name__}")
        if isinstance(batches, (str, bytes, torch.Tensor)) or not hasattr(type(batches), "__iter__"):
            raise ArgumentError(f"batches must be an iterable of (inputs, labels) pairs, got {type(batches).__name__}")
        super().__init__(model, example_inputs, **kwargs)
        self.batches, self.loss_fn, self.mode = list(batches), loss_fn, mode
        self._units = units
        self._scores: torch.Tensor | None = None

    def _loss(self) -> float:
        total = 0.0
        with torch.no_grad():
            for x, y in self.batches:
                total += float(self.loss_fn(self.model(x), y)) * len(y)
        return total / sum(len(y) for _, y in self.batches)

    def unit_scores(self) -> torch.Tensor:
        if self._scores is not None:
            return self._scores
        was_training = self.model.training
        self.model.eval()
        try:
            base = self._loss()
            n = int(self.graph.group_of_unit.numel())
            units = self._units if self._units is not None else torch.cat([g.units for g in self.graph.prunable_groups])
            scores = torch.zeros(n, dtype=torch.float64)
            reads = reads_of(self.graph, self.device)
            for u in units.tolist():
                with Reads(self.model, reads, _zeroing(u)):
                    delta = self._loss() - base
                scores[u] = abs(delta) if self.mode == "abs" else delta
        finally:
            self.model.train(was_training)
        self._scores = scores
        return scores


def _zeroing(unit: int) -> Callable[[Read, torch.Tensor], torch.Tensor]:
    def on_read(read: Read, x: torch.Tensor) -> torch.Tensor:
        hit = torch.nonzero(read.units == unit).flatten()
        if hit.numel() == 0:
            return x
        return x.index_fill(read.dim, hit.to(x.device), 0)

    return on_read
