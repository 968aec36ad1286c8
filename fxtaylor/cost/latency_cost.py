"""Latency as deployed as the resource: the measured per-layer tables of
:class:`fxtaylor.latency.LatencyModel`, built (or read from the cache) for the model's exact
layers on the user's device.

A table is built once, for the dense architecture, and answers for every narrower version of
each layer: so pruning never rebuilds it. ``total`` is the model's *prediction*; the loop checks
every cut by measuring (:func:`fxtaylor.latency.measure`), and stops at the target by
measurement, not by prediction.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Sequence

import torch
import torch.nn as nn

from ..errors import FxTaylorError

from ..flops import MISSING
from .base import CostModel, Layers

if TYPE_CHECKING:
    from ..latency import Deployment, LatencyModel


MEASURE_S = 0.4  # seconds of timing per model per check
ROUNDS = 7  # interleaved rounds per check: the ratio's noise comes from their spread


class LatencyCost(CostModel):
    name, label, unit, key = "latency", "latency", "ms", "latency_ms"
    of = "the dense model's measured latency"
    help = ("fraction of the dense model's latency to keep, measured as deployed (--latency-device, "
            "--latency-batch, --latency-dtype), e.g. 0.6")
    measured = True
    per_deployment = True
    unremovable = "per-call overhead channel pruning cannot remove"

    @property
    def measured_elsewhere(self) -> Deployment | None:
        return None if self.measured_here else self.deployment

    @classmethod
    def for_run(cls, deployment: Deployment, *, progress: bool = True) -> "LatencyCost":
        return cls(deployment, progress=progress)

    @classmethod
    def format(cls, value: float | None, like: float | None = None) -> str:
        return MISSING if value is None else f"{value:.3g} ms"

    def __init__(self, deployment: Deployment | None = None, *, cache_dir: Path | None = None, progress: bool = True,
                 table: LatencyModel | None = None):
        from ..latency import Deployment

        super().__init__()
        self.deployment = table.deployment if table is not None else (deployment or Deployment())
        self.cache_dir, self.progress = cache_dir, progress
        self.table = table
        self.measured_here = table is None  # a table brought from elsewhere: its device may not be this one

    def refresh(self, model: nn.Module, example_inputs, layers: Layers) -> None:
        x = example_inputs[0] if isinstance(example_inputs, (tuple, list)) and len(example_inputs) == 1 else example_inputs
        if not isinstance(x, torch.Tensor):
            raise FxTaylorError(
                "target_latency needs a model whose input is one batched tensor (its per-layer tables are "
                f"measured at the deployment's batch size); this model takes {type(x).__name__} inputs. Prune it "
                "with target_flops: the latency before and after is still measured on the example inputs")
        self._x = x
        if self.table is None:  # built for the first (dense) architecture it sees, then reused
            from ..latency import LatencyModel

            self.deployment = self.deployment.resolved(model)
            self.table = LatencyModel.build(model, x, self.deployment, layers=layers.names, cache_dir=self.cache_dir,
                                            progress=self.progress)
        self._known = set(self.table.layers)

    def layer_cost(self, name: str, cin: int, cout: int) -> float:
        if name not in self._known:  # not modelled: its time is in the remainder
            return 0.0
        return self.table.layer_ms(name, cin, cout)

    def remainder(self) -> float:
        return self.table.remainder_ms

    def alignment(self, group_layers: Iterable[str]) -> int:
        """The measured multiple of the group's layers, at least the multiple the deployment's
        runtime needs (ONNX Runtime's channel blocks: :meth:`Runtime.multiple`)."""
        from ..latency.runtimes import runtime_of

        floor = runtime_of(self.deployment.runtime).multiple(self.deployment.device or "cpu")
        return max([self.table.alignment(n) for n in group_layers if n in self._known] + [floor])

    def measure(self, models: Sequence[nn.Module], *, min_run_time: float | None = None) -> list:
        """``models`` timed side by side on the deployment, in interleaved rounds — or, for a
        table measured on another machine (nothing here can time that device), *predicted*
        by the table for each model's current widths."""
        from ..latency import Timing, measure, widths

        if not self.measured_here:
            return [Timing(self.table.predict(widths(m, self._x, self.table.layers)), 0.0, 0) for m in models]
        return measure(list(models), self._x, self.deployment, min_run_time=min_run_time or MEASURE_S, rounds=ROUNDS)

    def describe(self) -> dict:
        t = self.table
        return {"resource": self.name, "unit": self.unit, "deployment": self.deployment.as_dict(),
                "latency": "measured" if self.measured_here else f"predicted from tables measured elsewhere ({t.path})",
                "table": None if t is None else {"layers": len(t.layers), "dense_ms": t.dense_ms,
                                                  "remainder_ms": t.remainder_ms, "build_s": t.build_s}}
