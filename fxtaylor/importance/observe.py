"""Watching the feature maps during ordinary training steps.

A feature map is a tensor in which a group's channels are read by a conv or linear
(``ChannelGraph.feature_maps``). :class:`Reads` installs one forward pre-hook per reading
module and calls ``on_read(read, x)`` with the tensor it is about to read; the callback may
return a replacement (the Taylor criterion returns ``x.view_as(x)``, a free view whose gradient
is this reader's share alone). A hook on the root module marks the start of each forward pass
and tells its batch size (dim 0 of the first input), so a module called twice is told which of
its calls is running, and a read whose dim 0 is not the batch can be recognised.

Nothing here keeps a tensor alive: callbacks that need an activation at backward time keep it
in the closure of a gradient hook, which lives and dies with the autograd graph.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn

from ..graph import ChannelGraph


@dataclass
class Read:
    """One read of channels: module ``consumer``'s ``call``-th call reads ``units`` along ``dim``."""

    consumer: str
    call: int
    dim: int
    units: torch.Tensor  # global unit id of each position along dim, -1 = not in any group
    index: torch.Tensor  # positions with a unit
    targets: torch.Tensor  # their units (same length as index)
    per_unit: torch.Tensor  # positions of each unit in this read (length n_units)

    def per_unit_elements(self, spatial: int) -> torch.Tensor:
        """Elements of each unit in this read, given the elements per position."""
        return self.per_unit * spatial

    @staticmethod
    def of(consumer: str, call: int, dim: int, units: torch.Tensor, n_units: int, device) -> "Read":
        index = torch.nonzero(units >= 0).flatten()
        targets = units[index]
        per_unit = torch.bincount(targets, minlength=n_units).to(torch.float64)
        return Read(consumer, call, dim, units, index.to(device), targets.to(device), per_unit.to(device))


def reads_of(graph: ChannelGraph, device: torch.device) -> dict[str, list[Read]]:
    """The reads of every consumer module, in call order."""
    n = int(graph.group_of_unit.numel())
    out: dict[str, list[Read]] = {}
    for (consumer, _call, _node, dim, _shape), units in graph.node_maps.items():
        calls = out.setdefault(consumer, [])
        calls.append(Read.of(consumer, len(calls), dim, units, n, device))
    return out


class Reads:
    """Context manager: ``on_read(read, x)`` for every feature-map read of every forward pass."""

    def __init__(self, model: nn.Module, reads: dict[str, list[Read]], on_read: Callable, on_forward: Callable | None = None):
        self.model, self.reads, self.on_read, self.on_forward = model, reads, on_read, on_forward
        self.handles: list = []
        self.calls: dict[str, int] = {}

    def __enter__(self) -> "Reads":
        try:
            self.handles.append(self.model.register_forward_pre_hook(self._start))
            for name in self.reads:
                self.handles.append(self.model.get_submodule(name).register_forward_pre_hook(self._hook(name)))
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()

    def _start(self, module, args):
        self.calls.clear()
        if self.on_forward is not None:
            first = args[0] if args and isinstance(args[0], torch.Tensor) and args[0].dim() else None
            self.on_forward(None if first is None else first.shape[0])

    def _hook(self, name: str):
        calls = self.reads[name]

        def pre_hook(module, args):
            i = self.calls.get(name, 0)
            self.calls[name] = i + 1
            if i >= len(calls) or not args or not isinstance(args[0], torch.Tensor):
                return None
            x = self.on_read(calls[i], args[0])
            return None if x is args[0] else (x, *args[1:])

        return pre_hook
