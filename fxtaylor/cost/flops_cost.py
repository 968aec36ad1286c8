"""FLOPs as the resource (the paper's): counted by fvcore, scaled exactly with channel counts.

fvcore counts each module's own operations for the architecture as it is; a conv (one group)
or linear costs ∝ Cin·Cout, every other layer the pruner narrows (batch norm, pooling,
depthwise and grouped convs, whose groups go whole) ∝ its one width. So the FLOPs of any
narrower version of a layer follow from the count at the current widths, and a cut's saving is
predicted exactly (up to FLOPs outside leaf modules, which the loop re-counts after each cut).
"""
from __future__ import annotations

import torch.nn as nn

from .. import flops
from .base import DENSE, CostModel, Layers


class FlopsCost(CostModel):
    name, label, unit, key = "flops", "FLOPs", "FLOPs", "flops"
    of = "the original FLOPs"
    help = "fraction of the original FLOPs to keep (the paper's resource, counted by fvcore), e.g. 0.5"

    @classmethod
    def format(cls, value: float | None, like: float | None = None) -> str:
        return flops.format_flops(value, like)

    def refresh(self, model: nn.Module, example_inputs, layers: Layers) -> None:
        self.counted, own = flops.count(model, example_inputs)
        self._at = {n: (float(own.get(n, 0)), ci, co, k) for n, ci, co, k in zip(layers.names, layers.cin, layers.cout, layers.kind)}
        self._rest = self.counted - sum(f for f, *_ in self._at.values())

    def layer_cost(self, name: str, cin: int, cout: int) -> float:
        f, ci, co, kind = self._at[name]
        if not f:
            return 0.0
        if kind == DENSE:
            return f * (cin / ci) * (cout / co)
        return f * cout / co

    def remainder(self) -> float:
        return self._rest

    def total(self) -> float:
        """The fvcore count itself (equal to the prediction at the current widths)."""
        return float(self.counted)
