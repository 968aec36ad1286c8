"""Parameter bytes as the resource: what the saved model weighs (a download, a microcontroller's
flash), counted exactly from its state dict.

Every tensor a module saves (parameters and persistent buffers) holds its output channels along
one dim, and a conv with one group or a linear also its input channels along another (the op
spec's ``out_axis`` / ``in_axis``): so its bytes at any narrower width follow exactly from the
count at the current widths — ∝ cin·cout for such a weight, ∝ cout for a bias, a norm's
statistics, a depthwise or grouped conv's weight (whose groups go whole), constant for a scalar
(batch norm's step counter). Tensors outside the layers pruning narrows (the classifier's
inputs are in the layers; a block's own layer-scale parameter is not) and the file's own
records are in the remainder, which the loop re-counts after every cut.
"""
from __future__ import annotations

import io

import torch
import torch.nn as nn

from .. import memory
from ..flops import MISSING
from ..graph import ops
from .base import DENSE, CostModel, Layers


def state_bytes(model: nn.Module) -> int:
    """Bytes of ``torch.save(model.state_dict())``: the file a user ships, counted by writing it
    to memory (tensor data, each storage once, plus the archive's per-tensor records, which no
    cut removes: about 0.5 KiB a tensor, 1 % of a MobileNetV2 pruned to half)."""
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return buf.getbuffer().nbytes


def _own_state(m: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """The tensors ``m`` itself saves (not its children's)."""
    prefix = {n for n, _ in m.named_children()}
    return [(n, t) for n, t in m.state_dict(keep_vars=True).items() if n.split(".", 1)[0] not in prefix]


def _scaling(spec: ops.OpSpec | None, name: str, t: torch.Tensor, cin: int, cout: int, kind: str) -> tuple[int, int]:
    """(a, b): the tensor's bytes scale as (cin'/cin)^a · (cout'/cout)^b."""
    if t.dim() == 0 or t.numel() == 1:
        return 0, 0
    if kind == DENSE and name == "weight" and spec is not None and t.dim() > max(spec.out_axis, spec.in_axis):
        return int(t.shape[spec.in_axis] == cin), int(t.shape[spec.out_axis] == cout)
    if name == "weight" and spec is not None and t.dim() > spec.out_axis and t.shape[spec.out_axis] == cout:
        return 0, 1  # a grouped or depthwise conv's weight: its groups go whole
    return 0, int(cout in t.shape)


class ParamsCost(CostModel):
    name, label, unit, key = "params", "parameter bytes", "bytes", "state_dict_bytes"
    of = "the dense model's parameter bytes (its saved state dict)"
    help = "fraction of the dense model's parameter bytes (its saved state dict) to keep, e.g. 0.5"

    @classmethod
    def format(cls, value: float | None, like: float | None = None) -> str:
        return MISSING if value is None else memory.format_bytes(value, like)

    def refresh(self, model: nn.Module, example_inputs, layers: Layers) -> None:
        self.counted = state_bytes(model)
        self._at: dict[str, list[tuple[float, int, int, int, int]]] = {}
        attributed = 0
        for n, ci, co, kind in zip(layers.names, layers.cin, layers.cout, layers.kind):
            m = model.get_submodule(n)
            rows = []
            for tn, t in _own_state(m):
                a, b = _scaling(layers.graph.spec_of(m), tn, t, ci, co, kind)
                rows.append((float(t.numel() * t.element_size()), a, b, ci, co))
                attributed += t.numel() * t.element_size()
            self._at[n] = rows
        self._rest = self.counted - attributed

    def layer_cost(self, name: str, cin: int, cout: int) -> float:
        total = 0.0
        for nbytes, a, b, ci, co in self._at[name]:
            total += nbytes * ((cin / ci) if a else 1.0) * ((cout / co) if b else 1.0)
        return total

    def remainder(self) -> float:
        return self._rest

    def total(self) -> float:
        """The count itself (equal to the prediction at the current widths)."""
        return float(self.counted)
