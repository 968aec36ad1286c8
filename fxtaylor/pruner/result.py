"""What a pruning run returns: the model, where it started and ended, and every step between."""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any

import torch.nn as nn

from .. import saving
from ..cost import RESOURCES
from ..version import __version__
from .options import Target


@dataclass
class PruneResult:
    """``model`` is the pruned model (the one passed in, pruned in place, unless an accuracy
    floor stopped the run: then the last model that met it). ``arch`` is its arch record
    (:mod:`fxtaylor.models`); ``target`` the :class:`~fxtaylor.Target` (``result.target_flops``,
    ``result.target_latency``, ...: its fraction for its resource, None for the others);
    ``before``/``after`` hold flops, params, accuracy (None without validation data),
    latency_ms and latency_iqr_ms (measured side by side as deployed), and the target
    resource's own field (e.g. ``peak_memory_bytes``); ``history`` one record per pruning step."""

    model: nn.Module
    arch: dict
    target: Target
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

    def __getattr__(self, name: str) -> Any:
        # target_<resource>: the target's fraction for its own resource, None for every other one
        if name.startswith("target_") and name[len("target_"):] in RESOURCES:
            return self.target.fraction if name == f"target_{self.target.resource}" else None
        raise AttributeError(name)

    @property
    def flops_ratio(self) -> float:
        return self.after["flops"] / self.before["flops"]

    def save(self, path: str | os.PathLike) -> None:
        """The pruned model as arch record + state dict; read it back with ``fxtaylor.load``."""
        saving.save(self.model, path, self.arch, flops=self.after["flops"], accuracy=self.after.get("accuracy"))

    def export(self, path: str | os.PathLike, format: str = "onnx", *, example_inputs: Any = None,
               dynamic_batch: bool = True, rtol: float | None = None) -> Any:
        """The pruned model written as ONNX or torch.export and checked (:func:`fxtaylor.export`;
        returns its :class:`~fxtaylor.exporting.Exported`). ``example_inputs``: by default random
        values of the run's recorded input shape (``config["input_shape"]``; a single input at
        batch 1) on the model's device and dtype."""
        from ..exporting import example_of, export

        if example_inputs is None:
            example_inputs = example_of(self.config.get("input_shape"), self.model)
        return export(self.model, example_inputs, path, format, dynamic_batch=dynamic_batch, rtol=rtol)

    def report(self, model_file: str | None = None) -> dict[str, Any]:
        """The run as the JSON-able dict :mod:`fxtaylor.report` writes and plots."""
        return {
            "fxtaylor": __version__, "config": self.config, "environment": self.environment,
            "target": dataclasses.asdict(self.target),
            **{f"target_{name}": getattr(self, f"target_{name}") for name in RESOURCES},
            "reached": self.reached, "stop_reason": self.stop_reason,
            "before": self.before, "after": self.after, "speedup": self.speedup, "history": self.history,
            "layers": self.layers, "model_file": model_file, "timings": self.timings,
        }

    def summary(self) -> str:
        from .. import report

        return report.summary_table(self.report())
