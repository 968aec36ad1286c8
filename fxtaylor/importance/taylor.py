"""The activation-Taylor criterion (Molchanov et al., ICLR 2017, eq. 8), on any channel graph.

For example n and unit u (a channel, or a block of channels that go together):

    Θ_n(u) = | Σ_reads Σ_{positions p of u} Σ_m  z_{n,p,m} · ∂ℓ_n/∂z_{n,p,m} |  /  M_u

where the reads are the tensors in which u is read by a conv or linear (its feature maps),
m runs over the other (spatial) elements, and M_u is the number of elements of u in its largest
read (eq. 8's 1/M). Θ(u) is the mean of Θ_n(u) over every example observed since ``reset()``.

With one read this is eq. 8 exactly. With several (a residual stage, a concat, a module called
twice) the sum is *inside* the absolute value: removing u is setting one shared gate on all its
reads from 1 to 0, and the first-order change of example n's loss is that gate's derivative,
which is the sum. docs/criterion.md compares it with the alternatives against the oracle.

``ℓ_n`` is example n's own loss. Autograd gives the gradient of the loss that was backpropagated;
with ``loss_reduction="mean"`` (PyTorch's default) that is ``ℓ_n / N`` per example, so the
gradient is multiplied by the batch size N; pass ``"sum"`` for a summed loss.

Some reads have no example dimension: their dim 0 is not the batch of the forward pass (Swin-V2's
continuous position bias is an MLP over a table of coordinates, the same for every image). Their
gradient is already summed over the examples and cannot be split per example, so each example
gets the batch mean of Σ g·z for them (exact for the sum over the batch, which is what ranking
averages).
"""
from __future__ import annotations

import weakref
from contextlib import contextmanager
from typing import Any, Iterator

import torch
import torch.nn as nn

from ..errors import FxTaylorError
from .base import GraphImportance
from .observe import Read, Reads, reads_of


class _Pass:
    """Signed per-example sums of one forward pass, folded once its backward has run."""

    __slots__ = ("pending", "expected", "fired", "batch", "__weakref__")

    def __init__(self, batch: int) -> None:
        self.pending: torch.Tensor | None = None  # [N, n_units]
        self.expected = 0
        self.fired = 0
        self.batch = batch


class TaylorImportance(GraphImportance):
    """``with imp.observe(): <ordinary training steps>`` then rank: ``imp(group)`` for
    torch-pruning, ``imp.group_scores(group)`` for fxtaylor's own pruner."""

    def __init__(self, model: nn.Module, example_inputs: Any, *, normalize: str | None = "l2",
                 flops_reg: float = 0.0, loss_reduction: str = "mean", **kwargs: Any):
        if loss_reduction not in ("mean", "sum"):
            raise ValueError(f"loss_reduction must be 'mean' or 'sum', got {loss_reduction!r}")
        super().__init__(model, example_inputs, normalize=normalize, flops_reg=flops_reg, **kwargs)
        self.loss_reduction = loss_reduction
        self.reset()

    # -- state -------------------------------------------------------------------------------

    STATE = ("sums", "examples", "elements")
    REDUCE = {"sums": "sum", "examples": "sum", "elements": "max"}

    def all_reduce(self) -> None:
        self._fold(partial=True)
        super().all_reduce()

    def reset(self) -> None:
        """Forget every observation (call after each pruning step, as the paper does)."""
        n = int(self.graph.group_of_unit.numel())
        self.sums = torch.zeros(n, dtype=torch.float64, device=self.device)
        self.examples = 0
        self.elements = torch.zeros(n, dtype=torch.float64, device=self.device)  # M_u
        self._passes: weakref.WeakSet[_Pass] = weakref.WeakSet()
        self._scratch = _Scratch()
        self._current: _Pass | None = None
        self._batch: int | None = None  # of the forward pass running now

    def has_state(self) -> bool:
        return self.examples > 0 or any(p.fired for p in self._passes)

    def on_retrace(self) -> None:
        self.reset()

    def unit_scores(self) -> torch.Tensor:
        self._fold(partial=True)
        if self.examples == 0:
            raise FxTaylorError(
                "TaylorImportance has observed nothing: run training steps (forward and "
                "loss.backward()) inside `with imp.observe():` before ranking"
            )
        return (self.sums / self.examples / self.elements.clamp(min=1)).cpu()

    # -- observation -------------------------------------------------------------------------

    @contextmanager
    def observe(self) -> Iterator["TaylorImportance"]:
        """Hooks for the duration of the block; removed on exit, also after an exception."""
        self.sync()
        reads = reads_of(self.graph, self.device)
        try:
            with Reads(self.model, reads, self._on_read, self._on_forward):
                yield self
        finally:
            self._fold(partial=True)

    def _on_forward(self, batch: int | None) -> None:
        self._fold(partial=True)
        self._current = None
        self._batch = batch

    def _on_read(self, read: Read, x: torch.Tensor) -> torch.Tensor:
        if not (torch.is_grad_enabled() and x.requires_grad):
            return x  # evaluation pass: nothing to learn from
        if self._current is None:
            # a model whose first input is not a batched tensor: the first read tells the batch
            self._current = _Pass(self._batch if self._batch is not None else x.shape[0])
            self._passes.add(self._current)
        p = self._current
        p.expected += 1
        y = x.view_as(x)  # a node of its own: its gradient is this read's share only
        version = x._version
        shared = read.dim == 0 or x.shape[0] != p.batch  # no example dimension (see module doc)
        y.register_hook(self._grad_hook(p, read, x, version, shared))
        n, c = x.shape[0], x.shape[read.dim]
        spatial = x.numel() // max(n * c, 1)
        self.elements = torch.maximum(self.elements, read.per_unit_elements(spatial))
        return y

    def _grad_hook(self, p: _Pass, read: Read, z: torch.Tensor, version: int, shared: bool):
        # The pass lives as long as its autograd graph (the hooks hold it; the importance only
        # has a weak set). The autograd node holding this hook outlives backward while the
        # user keeps `loss`; the activation must not: the box is emptied once it was used.
        box = [z]
        del z

        def hook(g: torch.Tensor) -> None:
            z = box[0]
            box[0] = None
            if z is None:
                return
            if z._version != version:
                raise FxTaylorError(
                    f"the input of {read.consumer} was modified in place after it was read; "
                    "the Taylor criterion needs its value at backward time"
                )
            if shared:
                # the gradient is the loss's (Σ_n ℓ_n or its mean): give every example the mean
                g, z, dim = (g.unsqueeze(0), z.unsqueeze(0), 1) if read.dim == 0 else (g, z, read.dim)
                gz = _per_position(g, z, dim).sum(0, keepdim=True)
                if self.loss_reduction == "sum":
                    gz = gz / p.batch
                gz = gz.expand(p.batch, -1)
            else:
                gz = _per_position(g, z, read.dim, self._scratch)  # [N, positions], float32
                if self.loss_reduction == "mean":
                    gz = gz * gz.shape[0]
            if p.pending is None:
                p.pending = torch.zeros(p.batch, self.sums.numel(), dtype=torch.float32, device=gz.device)
            p.pending.index_add_(1, read.targets, gz.index_select(1, read.index))
            p.fired += 1
            if p.fired == p.expected:
                self._fold_pass(p)

        return hook

    def _fold_pass(self, p: _Pass) -> None:
        self.sums += p.pending.abs().sum(0).to(torch.float64)
        self.examples += p.batch
        p.pending, p.fired, p.expected = None, 0, 0
        self._passes.discard(p)

    def _fold(self, partial: bool) -> None:
        """Fold passes whose backward ran. A read whose gradient never came (its output did
        not reach the loss) contributes zero, which is right; a pass with no gradient at all
        is left for a later backward, or dropped when its graph is freed."""
        for p in list(self._passes):
            if p.pending is not None and (partial or p.fired == p.expected):
                self._fold_pass(p)


class _Scratch:
    """One reusable buffer per device for the elementwise product g·z. A fresh activation-sized
    temporary per read is a fresh large allocation, which the C allocator serves with new pages
    from the kernel (page faults on first touch) every time; reusing one buffer avoids that."""

    def __init__(self) -> None:
        self.buffers: dict[torch.device, torch.Tensor] = {}

    def like(self, t: torch.Tensor) -> torch.Tensor:
        buf = self.buffers.get(t.device)
        if buf is None or buf.numel() < t.numel():
            buf = self.buffers[t.device] = torch.empty(t.numel(), dtype=torch.float32, device=t.device)
        return buf[: t.numel()].view(t.shape)


def _per_position(g: torch.Tensor, z: torch.Tensor, dim: int, scratch: _Scratch | None = None) -> torch.Tensor:
    """Σ over all dims but batch and ``dim`` of g·z, per example and position, in float32."""
    n, c = z.shape[0], z.shape[dim]
    g = g.movedim(dim, 1).reshape(n, c, -1).float()
    z = z.detach().movedim(dim, 1).reshape(n, c, -1).float()
    with torch.autocast(g.device.type, enabled=False):  # backward may run inside autocast
        if scratch is None:
            # one pass over g and z; einsum lowers this to a bmm of tiny matrices, ~40 % slower
            return torch.linalg.vecdot(g, z, dim=-1)
        return torch.mul(g, z, out=scratch.like(g)).sum(-1)
