"""What a pruning run returns: the model, where it started and ended, and every step between."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import torch.nn as nn

from .. import saving


@dataclass
class PruneResult:
    """``model`` is the pruned model (the one passed in, pruned in place, unless an accuracy
    floor stopped the run: then the last model that met it). ``arch`` is its arch record
    (:mod:`fxtaylor.models`); ``before``/``after`` hold flops, params, accuracy (None without
    validation data), latency_ms and latency_iqr_ms (measured side by side as deployed);
    ``history`` one record per pruning step. ``target_flops`` or ``target_latency`` is the
    target (the other None)."""

    model: nn.Module
    arch: dict
    target_flops: float | None
    reached: bool
    stop_reason: str
    before: dict[str, Any]
    after: dict[str, Any]
    speedup: float | None
    history: list[dict[str, Any]]
    layers: list[dict[str, Any]]
    config: dict[str, Any] = field(default_factory=dict)
    environment: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    target_latency: float | None = None

    @property
    def flops_ratio(self) -> float:
        return self.after["flops"] / self.before["flops"]

    def save(self, path: str | os.PathLike) -> None:
        """The pruned model as arch record + state dict; read it back with ``fxtaylor.load``."""
        saving.save(self.model, path, self.arch, flops=self.after["flops"], accuracy=self.after.get("accuracy"))

    def report(self, model_file: str | None = None) -> dict[str, Any]:
        """The run as the JSON-able dict :mod:`fxtaylor.report` writes and plots."""
        from .. import __version__

        return {
            "fxtaylor": __version__, "config": self.config, "environment": self.environment,
            "target_flops": self.target_flops, "target_latency": self.target_latency, "reached": self.reached, "stop_reason": self.stop_reason,
            "before": self.before, "after": self.after, "speedup": self.speedup, "history": self.history,
            "layers": self.layers, "model_file": model_file, "timings": self.timings,
        }

    def summary(self) -> str:
        from .. import report

        return report.summary_table(self.report())
