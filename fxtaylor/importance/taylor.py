"""The activation-Taylor criterion (Molchanov et al., ICLR 2017, eq. 8), on any channel graph.

For example n and unit u (a channel, or a block of channels that go together):

    Θ_n(u) = | Σ_reads Σ_{positions p of u} Σ_m  z_{n,p,m} · ∂ℓ_n/∂z_{n,p,m} |  /  M_u

where the reads are the tensors in which u is read by a conv or linear (its feature maps),
m runs over the other (spatial) elements, and M_u is the number of elements of u in the map
where it is *produced* (eq. 8's 1/M: the feature map's size, H·W for a conv's channel). A read
after global pooling sums g·z over one element, but that sum equals the one over the map it
pools, so dividing by the produced map's H·W gives eq. 8 on that map. Θ(u) is the mean of
Θ_n(u) over every example observed since ``reset()``.

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

The hooks run on every step, so they are written for a GPU: indices and buffers are on the
model's device, built once per architecture; nothing in them waits for the device or copies to
or from it; per read, one product g·z, one reduction to [N, channels] accumulated in float32
(half-precision activations are not copied to float32 first) and one add into the pass's
buffer (a slice when the read's units are a contiguous range); one fold per forward pass.
"""
from __future__ import annotations

import weakref
from contextlib import contextmanager
from typing import Any, Iterator

import torch
import torch.nn as nn

from ..errors import ArgumentError, FxTaylorError
from .base import GraphImportance
from .observe import Produced, Producer, Read, Reads, elements_per_position, producers_of, reads_of, summed_dims


class _Pass:
    """Signed per-example sums of one forward pass, folded once its backward has run."""

    __slots__ = ("pending", "expected", "fired", "batch", "__weakref__")

    def __init__(self, batch: int) -> None:
        self.pending: torch.Tensor | None = None  # [N, n_units] float32, in units of the backpropagated loss
        self.expected = 0
        self.fired = 0
        self.batch = batch


class TaylorImportance(GraphImportance):
    """``with imp.observe(): <ordinary training steps>`` then rank: ``imp(group)`` for
    torch-pruning, ``imp.group_scores(group)`` for fxtaylor's own pruner."""

    def __init__(self, model: nn.Module, example_inputs: Any, *, normalize: str | None = "l2",
                 flops_reg: float = 0.0, loss_reduction: str = "mean", **kwargs: Any):
        if loss_reduction not in ("mean", "sum"):
            raise ArgumentError(f"loss_reduction must be 'mean' or 'sum', got {loss_reduction!r}")
        super().__init__(model, example_inputs, normalize=normalize, flops_reg=flops_reg, **kwargs)
        self.loss_reduction = loss_reduction
        self._plan_cache: tuple | None = None
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
        self._current: _Pass | None = None
        self._batch: int | None = None  # of the forward pass running now
        self._produced: dict[str, int] = {}  # producer -> elements per position last seen

    def has_state(self) -> bool:
        return self.examples > 0 or any(p.fired for p in self._passes)

    def on_retrace(self) -> None:
        self._plan_cache = None
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
        reads, producers = self._plan()
        try:
            with Reads(self.model, reads, self._on_read, self._on_forward), \
                    Produced(self.model, producers, self._on_produce):
                yield self
        finally:
            self._fold(partial=True)

    def _plan(self) -> tuple[dict[str, list[Read]], list[Producer]]:
        """Reads and producers with their indices on the model's device, rebuilt only when the
        device or the architecture changed (so the hooks never move an index). The state
        follows the model if it moved since it was built."""
        device = self.device
        if self.sums.device != device:
            self.sums, self.elements = self.sums.to(device), self.elements.to(device)
        key = (device, id(self.graph), tuple(u.numel() for u in self.graph.node_maps.values()),
               tuple(u.numel() for u in self.graph.unit_maps.values()))
        if self._plan_cache is None or self._plan_cache[0] != key:
            self._n_units = int(self.graph.group_of_unit.numel())
            # on the CPU a fresh activation-sized temporary per read is a fresh large allocation
            # that the C allocator serves with new pages (page faults on first touch) every
            # time; CUDA's caching allocator already reuses blocks, and a buffer held for good
            # would only add to the peak
            self._scratch = _Scratch() if device.type == "cpu" else None
            self._plan_cache = (key, reads_of(self.graph, device), producers_of(self.graph, device))
        return self._plan_cache[1], self._plan_cache[2]

    def _on_forward(self, batch: int | None) -> None:
        self._fold(partial=True)
        self._current = None
        self._batch = batch

    def _on_produce(self, producer: Producer, out: torch.Tensor) -> None:
        """M_u = elements of u in the map that produces it. Recomputed (on the device, no sync)
        only when a producer's map size changes, i.e. when the input resolution does."""
        if not torch.is_grad_enabled():
            return  # evaluation pass: not counted, so neither is its resolution
        m = elements_per_position(out, producer.channel_dim(out))
        if self._produced.get(producer.name) != m:
            self._produced[producer.name] = m
            self.elements = torch.maximum(self.elements, producer.per_unit * m)

    def _on_read(self, read: Read, x: torch.Tensor) -> torch.Tensor:
        if not (x.requires_grad and torch.is_grad_enabled()):
            return x  # evaluation pass: nothing to learn from
        p = self._current
        if p is None:
            # a model whose first input is not a batched tensor: the first read tells the batch
            p = self._current = _Pass(self._batch if self._batch is not None else x.shape[0])
            self._passes.add(p)
        p.expected += 1
        # a view that is a node of its own: its gradient is this read's share only. An alias
        # (``x[...]``), not ``view_as``, whose backward would add a reshape per read
        y = x[...]
        shared = read.dim == 0 or x.shape[0] != p.batch  # no example dimension (see module doc)
        y.register_hook(self._grad_hook(p, read, x, x._version, shared))
        return y

    def _grad_hook(self, p: _Pass, read: Read, z: torch.Tensor, version: int, shared: bool):
        # The pass lives as long as its autograd graph (the hooks hold it; the importance only
        # has a weak set). The autograd node holding this hook outlives backward while the
        # user keeps `loss`; the activation must not: the box is emptied once it was used.
        box = [z]
        del z
        n_units, scratch = self._n_units, self._scratch

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
            if torch.is_grad_enabled():  # backward(create_graph=True): keep the scores out of it
                g, z = g.detach(), z.detach()
            acc = p.pending
            if acc is None:
                acc = p.pending = torch.zeros(p.batch, n_units, dtype=torch.float32, device=g.device)
            if shared:
                _add_shared(acc, g, z, read, p.batch)
            else:
                _add_per_example(acc, g, z, read, scratch)
            p.fired += 1
            if p.fired == p.expected:
                self._fold_pass(p)

        return hook

    def _fold_pass(self, p: _Pass) -> None:
        # pending holds ⟨g, z⟩ of the loss that was backpropagated: with a mean-reduced loss
        # that is ℓ_n / N per example, so the example's own |Θ_n| is N times its entry
        scale = p.batch if self.loss_reduction == "mean" else 1
        self.sums.add_(p.pending.abs().sum(0), alpha=scale)
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


def _add_per_example(acc: torch.Tensor, g: torch.Tensor, z: torch.Tensor, read: Read, scratch: "_Scratch | None") -> None:
    """acc[n, u] += Σ over u's positions and the other dims of g·z, for every example n.

    Three kernels for a spatial read: the product, its reduction to [N, channels] accumulating
    in float32 (``sum(dtype=)`` reads bf16/fp16 directly on CUDA, no float32 copy; any strides,
    so channels_last needs no copy either), and the add into ``acc`` (a slice when the read's
    units are a contiguous range, else ``index_add_``). A read without spatial dims ([N, C])
    is one ``addcmul_`` into the slice. docs/criterion.md compares the alternatives.
    """
    dims = read.sum_dims if g.dim() == read.ndim else summed_dims(g.dim(), read.dim)
    span = read.span
    if not dims:
        if span is not None:
            acc[:, span[0]:span[1]].addcmul_(g, z)
            return
        gz = torch.mul(g, z, out=torch.empty(g.shape, dtype=torch.float32, device=g.device))
    else:
        prod = torch.mul(g, z) if scratch is None else torch.mul(g, z, out=scratch.like(g))
        gz = prod.sum(dims, dtype=torch.float32)
        if span is not None:
            acc[:, span[0]:span[1]].add_(gz)
            return
    if read.index.numel() != gz.shape[1]:
        gz = gz.index_select(1, read.index)  # positions of channels in no group
    acc.index_add_(1, read.targets, gz)


def _add_shared(acc: torch.Tensor, g: torch.Tensor, z: torch.Tensor, read: Read, batch: int) -> None:
    """A read with no example dimension: its gradient is already summed over the examples, so
    every example gets the batch mean of Σ g·z (rare: Swin-V2's position-bias MLP)."""
    if read.dim == 0:
        g, z, dim = g.unsqueeze(0), z.unsqueeze(0), 1
    else:
        dim = read.dim
    gz = torch.mul(g, z).sum((0, *summed_dims(g.dim(), dim)), dtype=torch.float32) / batch  # [C]
    acc.index_add_(1, read.targets, gz.index_select(0, read.index).expand(acc.shape[0], -1))


class _Scratch:
    """One reusable buffer per dtype for the elementwise product g·z, viewed with the strides
    of the tensor it stands for, so a channels_last product stays channels_last. The views are
    kept per shape and strides: a step reads the same few shapes again and again."""

    def __init__(self) -> None:
        self.buffers: dict[torch.dtype, torch.Tensor] = {}
        self.views: dict[tuple, torch.Tensor] = {}

    def like(self, t: torch.Tensor) -> torch.Tensor:
        key = (t.shape, t.stride(), t.dtype)
        view = self.views.get(key)
        if view is not None:
            return view
        if not (t.is_contiguous() or (t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last))):
            return torch.empty_like(t)  # not dense: its strides do not fit a flat buffer
        buf = self.buffers.get(t.dtype)
        if buf is None or buf.numel() < t.numel():
            buf = self.buffers[t.dtype] = torch.empty(t.numel(), dtype=t.dtype, device=t.device)
            self.views = {k: v for k, v in self.views.items() if k[2] != t.dtype}  # of the old buffer
        view = self.views[key] = buf[: t.numel()].as_strided(t.shape, t.stride())
        return view
