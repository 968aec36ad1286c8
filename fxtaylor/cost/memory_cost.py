"""Peak activation memory as the resource: the most memory an inference forward pass holds at
once, at the deployment's batch size and dtype (:mod:`fxtaylor.memory`, docs/memory.md).

Counted on CPU — a liveness count over the forward run on meta tensors: the tensors PyTorch
allocates, which match ``torch.profiler``'s allocator events within 0.1 % in channels-last
whenever they dominate (batch 8; oneDNN's per-call weight copies, which depend on its choice of
algorithm, are not counted: docs/memory.md) — and measured on CUDA
(``torch.cuda.max_memory_allocated``), so :meth:`total` is the model as it is, never a
prediction; the loop re-counts after every cut.

A peak is a maximum over time, not a sum: only the tensors live at the peak moment cost
anything, and a cut can move the peak elsewhere. ``layer_cost`` is the additive model the
greedy selection needs — the bytes live at the current peak whose channels come from the layer,
∝ its output channels: exact while
the peak stays where it is. :meth:`predict` does better: it shrinks every tensor of the
recorded forward to the new widths and takes the maximum again (a few ms), so ``least`` and
``reachable`` see a peak that moves.
"""
from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

import torch
import torch.nn as nn

from .. import examples, memory
from ..flops import MISSING
from .base import CostModel, Layers

if TYPE_CHECKING:
    from ..latency import Deployment


class MemoryCost(CostModel):
    name, label, unit, key = "memory", "peak activation memory", "bytes", "peak_memory_bytes"
    help = ("fraction of the dense model's peak activation memory (inference, at the deployment's batch size) "
            "to keep, e.g. 0.5")
    measured = False  # counted (CPU) or measured once per architecture (CUDA, deterministic): re-count after a cut
    per_deployment = True  # batch size, dtype and device change it
    unremovable = "the input-side and output tensors no channel cut narrows"
    of = "the dense model's peak activation memory"
    # the peak is a few tensors: the paper's rank order removes channels everywhere to narrow
    # them (ResNet-18, 64 px, batch 8, to 0.5: FLOPs 0.16×, parameters 0.03× left), the knapsack
    # order those that lower the peak (FLOPs 0.80×, parameters 0.99×; docs/resources.md)
    selection = "knapsack"

    def __init__(self, deployment: Deployment | None = None, *, progress: bool = True):
        from ..latency import Deployment

        super().__init__()
        self.deployment = deployment or Deployment()
        self.progress = progress
        self.run: memory.Liveness | None = None
        self.estimated = 0
        self.measured_bytes: int | None = None

    @classmethod
    def for_run(cls, deployment: Any, *, progress: bool = True) -> "MemoryCost":
        return cls(deployment, progress=progress)

    @classmethod
    def format(cls, value: float | None, like: float | None = None) -> str:
        return MISSING if value is None else memory.format_bytes(value, like)

    @property
    def on_cuda(self) -> bool:
        return self.deployment.torch_device.type == "cuda"

    def refresh(self, model: nn.Module, example_inputs, layers: Layers) -> None:
        if self.deployment.device is None or self.deployment.memory_format is None:
            self.deployment = self.deployment.resolved(model)
        d = self.deployment
        args = examples.resolve(model, example_inputs, run_tensor=False)
        opts = dict(batch_size=d.batch_size, dtype=d.torch_dtype, memory_format=d.torch_memory_format)
        widths = dict(zip(layers.names, layers.cout))
        self.run = memory.estimate(model, args, widths=widths, **opts)
        self.estimated = self.run.peak
        self.measured_bytes = None
        if self.on_cuda:  # the real thing: cuDNN workspaces and the caching allocator's rounding included
            here = next(model.parameters(), torch.empty(0)).device
            runnable = model if here == d.torch_device else copy.deepcopy(model).to(d.torch_device)
            self.measured_bytes = memory.measure(runnable, args, **opts)
        # bytes live at the peak per layer: those ∝ cout alone, and those ∝ cin·cout (dense weight copies)
        self._at = {n: [0.0, 0.0, ci, co] for n, ci, co in zip(layers.names, layers.cin, layers.cout)}
        for i in self.run.live:
            for n, share in self.run.shares(i):
                if n in self._at:
                    self._at[n][1 if self.run.dense[i] == n else 0] += share
        self._rest = self.total() - sum(out + both for out, both, _, _ in self._at.values())

    def layer_cost(self, name: str, cin: int, cout: int) -> float:
        row = self._at.get(name)
        if row is None:
            return 0.0
        out, both, ci, co = row
        s = cout / co if co else 0.0
        return out * s + (both * s * cin / ci if ci else 0.0)

    def remainder(self) -> float:
        return self._rest

    def total(self) -> float:
        """The count (CPU) or the measurement (CUDA) of the model as it is."""
        return float(self.measured_bytes if self.measured_bytes is not None else self.estimated)

    def predict(self, widths: dict[str, tuple[int, int]] | None = None) -> float:
        """The peak at ``widths`` (layer -> (cin, cout)), re-taken over the whole recorded
        forward; on CUDA offset by what the measurement holds beyond the count (workspaces)."""
        scale_out, scale_in = {}, {}
        for n, (ci, co) in (widths or {}).items():
            row = self._at.get(n)
            if row is not None:
                scale_out[n] = co / row[3] if row[3] else 1.0
                scale_in[n] = ci / row[2] if row[2] else 1.0
        return self.run.peak_at(scale_out, scale_in) + (self.total() - self.estimated)

    def describe(self) -> dict:
        d = self.deployment
        return {
            "resource": self.name, "unit": self.unit, "deployment": d.as_dict(),
            "method": "cuda max_memory_allocated" if self.on_cuda else "liveness estimate (eager forward on meta tensors)",
            "counts": "tensors the forward allocates: outputs included; inputs, parameters and buffers excluded"
                      + ("; kernel workspaces included" if self.on_cuda else "; kernel-internal buffers excluded"),
            "batch_size": self.run.batch_size if self.run is not None else d.batch_size,
            "estimate_bytes": self.estimated,
            "measured_bytes": self.measured_bytes,
        }
