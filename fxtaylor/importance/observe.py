"""Watching the feature maps during ordinary training steps.

A feature map is a tensor in which a group's channels are read by a conv or linear
(``ChannelGraph.feature_maps``). :class:`Reads` installs one forward pre-hook per reading
module and calls ``on_read(read, x)`` with the tensor it is about to read; the callback may
return a replacement (the Taylor criterion returns ``x.view_as(x)``, a free view whose gradient
is this reader's share alone). A hook on the root module marks the start of each forward pass
and tells its batch size (dim 0 of the first input), so a module called twice is told which of
its calls is running, and a read whose dim 0 is not the batch can be recognised.

:class:`Produced` hooks the other end: the modules that *produce* channels (conv, linear,
embedding outputs), for what only the produced map knows — its size (eq. 8's M), which a read
after pooling no longer shows.

Everything a hook needs is computed here once, on the model's device: hooks run on every
forward and backward pass, where a host↔device copy or synchronisation would stall a GPU.
Nothing here keeps a tensor alive: callbacks that need an activation at backward time keep it
in the closure of a gradient hook, which lives and dies with the autograd graph.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Callable

import torch
import torch.nn as nn

from ..graph import ChannelGraph
from ..graph.atoms import PRODUCER


@dataclass(eq=False)
class Read:
    """One read of channels: module ``consumer``'s ``call``-th call reads ``units`` along ``dim``.

    ``index`` / ``targets`` (on the model's device) map the positions that carry a unit to their
    unit; ``span`` is ``(lo, hi)`` when they need no map at all — every position carries a unit
    and they are units ``lo … hi-1`` in order (a conv reading one whole group, the common case),
    so accumulating is adding into a slice. ``sum_dims`` are the dims summed per position (all
    but the batch and ``dim``) for a read of ``ndim`` dims, as traced.
    """

    consumer: str
    call: int
    dim: int
    units: torch.Tensor  # global unit id of each position along dim, -1 = not in any group (CPU)
    index: torch.Tensor  # positions with a unit
    targets: torch.Tensor  # their units (same length as index)
    span: tuple[int, int] | None = None
    ndim: int = 0
    sum_dims: tuple[int, ...] = ()

    @staticmethod
    def of(consumer: str, call: int, dim: int, units: torch.Tensor, device, ndim: int = 0) -> "Read":
        index = torch.nonzero(units >= 0).flatten()
        targets = units[index]
        return Read(consumer, call, dim, units, index.to(device), targets.to(device),
                    _span(units), ndim, summed_dims(ndim, dim))


def _span(units: torch.Tensor) -> tuple[int, int] | None:
    """(lo, hi) if ``units`` is exactly lo, lo+1, …, hi-1, else None (decided on the CPU copy)."""
    if units.numel() == 0 or int(units[0]) < 0:
        return None
    lo = int(units[0])
    return (lo, lo + units.numel()) if torch.equal(units, torch.arange(lo, lo + units.numel())) else None


def summed_dims(ndim: int, dim: int) -> tuple[int, ...]:
    """The dims of a read reduced per example and position: all but dim 0 and ``dim``."""
    return tuple(d for d in range(1, ndim) if d != dim % max(ndim, 1))


def reads_of(graph: ChannelGraph, device: torch.device) -> dict[str, list[Read]]:
    """The reads of every consumer module, in call order."""
    out: dict[str, list[Read]] = {}
    for (consumer, _call, _node, dim, shape), units in graph.node_maps.items():
        calls = out.setdefault(consumer, [])
        calls.append(Read.of(consumer, len(calls), dim, units, device, len(shape)))
    return out


class _Hooks:
    """A context manager of hooks: registered on enter (all removed again if one fails), removed
    on exit. Subclasses append their handles in ``_register``."""

    handles: list

    def _register(self) -> None:
        raise NotImplementedError

    def __enter__(self):
        try:
            self._register()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()


class Reads(_Hooks):
    """Context manager: ``on_read(read, x)`` for every feature-map read of every forward pass."""

    def __init__(self, model: nn.Module, reads: dict[str, list[Read]], on_read: Callable, on_forward: Callable | None = None):
        self.model, self.reads, self.on_read, self.on_forward = model, reads, on_read, on_forward
        self.handles: list = []
        self.generation = 0  # forward passes started; a module's call count restarts with each

    def _register(self) -> None:
        self.handles.append(self.model.register_forward_pre_hook(self._start))
        for name in self.reads:
            self.handles.append(self.model.get_submodule(name).register_forward_pre_hook(self._hook(name)))

    def _start(self, module, args):
        self.generation += 1
        if self.on_forward is not None:
            first = args[0] if args and isinstance(args[0], torch.Tensor) and args[0].dim() else None
            self.on_forward(None if first is None else first.shape[0])

    def _hook(self, name: str):
        calls = self.reads[name]
        count = [-1, 0]  # [generation, calls in it]: no shared dict to look up or clear per pass
        on_read = self.on_read

        def pre_hook(module, args):
            if count[0] != self.generation:
                count[0], count[1] = self.generation, 0
            i = count[1]
            count[1] = i + 1
            if i >= len(calls) or not args or not isinstance(args[0], torch.Tensor):
                return None
            x = on_read(calls[i], args[0])
            return None if x is args[0] else (x, *args[1:])

        return pre_hook


@dataclass(eq=False)
class Producer:
    """A module that produces channels, and how many of its output positions each unit has
    (``per_unit``, length n_units, float64 on the model's device: 1 per channel, a grouped
    conv's block width, 0 for units it does not produce)."""

    name: str
    per_unit: torch.Tensor
    channel_dim: Callable[[torch.Tensor], int]  # the dim of its output holding its channels (its op spec's out_dim)


def producers_of(graph: ChannelGraph, device: torch.device) -> list[Producer]:
    """Every producer space of the graph, as one :class:`Producer` per module."""
    n = int(graph.group_of_unit.numel())
    out = []
    for (name, role), sp in graph.spaces.items():
        if sp.kind != PRODUCER or role != "out":
            continue
        units = graph.unit_maps[(name, role)]
        per_unit = torch.bincount(units[units >= 0], minlength=n).to(torch.float64)
        module = graph.model.get_submodule(name)
        spec = graph.spec_of(module)  # the graph's own rows (trace(specs=)) first
        # a spec without out_dim (a user's row): channels on the last dim, as a linear has them
        out_dim = spec.out_dim if spec is not None and spec.out_dim is not None else _last
        out.append(Producer(name, per_unit.to(device), partial(out_dim, module)))
    return out


def _last(module: nn.Module, out: torch.Tensor) -> int:
    return out.dim() - 1


def elements_per_position(out: torch.Tensor, cdim: int) -> int:
    """Elements of one channel of one example in a produced tensor whose channels are on dim
    ``cdim``: H·W for [N, C, H, W], L for tokens [N, L, C], 1 for [N, C]. Dim 0 is the example
    unless the channels are on it (an unbatched conv input)."""
    per_example = out.shape[0] if cdim != 0 else 1
    return out.numel() // max(per_example * out.shape[cdim], 1)


class Produced(_Hooks):
    """Context manager: ``on_produce(producer, output)`` after every call of every producer."""

    def __init__(self, model: nn.Module, producers: list[Producer], on_produce: Callable):
        self.model, self.producers, self.on_produce = model, producers, on_produce
        self.handles: list = []

    def _register(self) -> None:
        for p in self.producers:
            self.handles.append(self.model.get_submodule(p.name).register_forward_hook(self._hook(p)))

    def _hook(self, producer: Producer):
        on_produce = self.on_produce

        def hook(module, args, out):
            if isinstance(out, torch.Tensor):
                on_produce(producer, out)

        return hook
