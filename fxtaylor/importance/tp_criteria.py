"""torch-pruning's criteria on fxtaylor's channel graph, to compare them inside one loop.

:class:`TorchPruningImportance` wraps any ``torch_pruning.importance.Importance`` (e.g.
``GroupMagnitudeImportance(p=2)``, ``GroupTaylorImportance()``): for each prunable fxtaylor
group it asks torch-pruning's dependency graph for the group rooted at the group's first
producer and scores its output channels exactly as torch-pruning's own pruners would (its own
group reduction and normaliser), then gives each fxtaylor unit the mean score of its channels.

``GroupTaylorImportance`` reads ``weight.grad``. In torch-pruning's examples that is the
gradient accumulated over a few batches before ``pruner.step()``; here :meth:`observe`
accumulates every parameter's gradient over the observed updates (the optimizer zeroes
``.grad`` after each), and it is put in ``.grad`` while scoring.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

import torch
import torch.nn as nn
import torch_pruning as tp

from ..errors import ArgumentError
from ..graph.atoms import PRODUCER
from .base import GraphImportance


class TorchPruningImportance(GraphImportance):
    def __init__(self, model: nn.Module, example_inputs: Any, tp_importance: tp.importance.Importance, *,
                 needs_grad: bool | None = None, normalize: str | None = None, **kwargs: Any):
        if not isinstance(tp_importance, tp.importance.Importance):
            raise ArgumentError(f"tp_importance must be a torch_pruning importance (e.g. tp.importance.GroupTaylorImportance()), "
                                f"got {type(tp_importance).__name__}")
        super().__init__(model, example_inputs, normalize=normalize, **kwargs)
        self.tp_importance = tp_importance
        self.needs_grad = isinstance(tp_importance, tp.importance.GroupTaylorImportance) if needs_grad is None else needs_grad
        self._dg: tp.DependencyGraph | None = None
        self._dg_key: tuple | None = None
        self.reset()

    def reset(self) -> None:
        self._grads: dict[nn.Parameter, torch.Tensor] = {}
        self._scores: torch.Tensor | None = None

    def has_state(self) -> bool:
        return bool(self._grads)

    @contextmanager
    def observe(self) -> Iterator["TorchPruningImportance"]:
        self.sync()
        self._scores = None
        if not self.needs_grad:
            yield self
            return
        handles = [p.register_post_accumulate_grad_hook(self._accumulate) for p in self.model.parameters() if p.requires_grad]
        try:
            yield self
        finally:
            for h in handles:
                h.remove()

    def _accumulate(self, p: nn.Parameter) -> None:
        g = self._grads.get(p)
        self._grads[p] = p.grad.detach().clone() if g is None else g.add_(p.grad)

    def _graph(self) -> tp.DependencyGraph:
        """torch-pruning's graph of the model as it is now (built in eval mode: its tracing
        forward pass must not update batch-norm statistics)."""
        key = tuple(u.numel() for u in self.graph.unit_maps.values())
        if self._dg is None or key != self._dg_key:
            was = self.model.training
            self.model.eval()
            try:
                self._dg = tp.DependencyGraph().build_dependency(self.model, self.example_inputs)
            finally:
                self.model.train(was)
            self._dg_key = key
        return self._dg

    def unit_scores(self) -> torch.Tensor:
        """Scored once per observation and kept until :meth:`reset` or the next ``observe``:
        unit ids survive fxtaylor's own pruning, the parameters (and their gradients) do not."""
        if self._scores is None:
            self._scores = self._score()
        return self._scores

    def _score(self) -> torch.Tensor:
        dg = self._graph()
        n = int(self.graph.group_of_unit.numel())
        total = torch.zeros(n, dtype=torch.float64)
        count = torch.zeros(n, dtype=torch.float64)
        saved = {p: p.grad for p in self._grads}
        try:
            for p, g in self._grads.items():
                p.grad = g
            for group in self.graph.prunable_groups:
                scores, units = self._tp_scores(dg, group)
                if scores is None:
                    continue
                ok = units >= 0
                total.index_add_(0, units[ok], scores[ok])
                count.index_add_(0, units[ok], torch.ones(int(ok.sum()), dtype=torch.float64))
        finally:
            for p, g in saved.items():
                p.grad = g
        return total / count.clamp(min=1)

    def _tp_scores(self, dg: tp.DependencyGraph, group) -> tuple[torch.Tensor | None, torch.Tensor]:
        root = next(m for m in group.members if m.kind == PRODUCER)
        module = self.model.get_submodule(root.name)
        units = self.graph.unit_maps[(root.name, "out")]
        pruner = dg.get_pruner_of_module(module)
        tp_group = dg.get_pruning_group(module, pruner.prune_out_channels, list(range(units.numel())))
        scores = self.tp_importance(tp_group)
        if scores is None:
            return None, units
        return scores.detach().to(torch.float64).cpu(), units
