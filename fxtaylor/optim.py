"""Keeping an optimizer valid across pruning.

torch-pruning's surgery replaces every pruned parameter with a new, smaller ``nn.Parameter``;
the optimizer still holds the old ones and their state (momentum, Adam moments) at the old
shapes. :func:`prune_keeping_state` runs the surgery on *index probes*: each touched parameter
temporarily holds ``arange(numel)`` in float64 (exact below 2**53), so after the surgery the
new parameter holds the flat index, in the old one, of every element it kept. One gather then
gives the new weights and the new optimizer state, and the optimizer is re-pointed at the new
parameters in place (schedulers holding it keep working). Nothing here knows which dimension a
layer type prunes: that stays torch-pruning's business.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn

from .graph import ChannelGraph, ChannelGroup


def paper_sgd(model: nn.Module, lr: float = 1e-4) -> torch.optim.Optimizer:
    """The paper's fine-tuning optimizer (Birds-200 / VGG-16): SGD, lr 1e-4, momentum 0.9,
    weight decay 1e-4 (the command's ``--lr`` changes only the learning rate)."""
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=1e-4)


def _touched(graph: ChannelGraph, group: ChannelGroup) -> dict[str, nn.Parameter]:
    names = {m.name for m in group.members}
    out = {}
    for pname, p in graph.model.named_parameters(remove_duplicate=False):
        owner = pname.rpartition(".")[0]
        if owner in names or pname in names:
            out[pname] = p
    return out


def prune_keeping_state(
    graph: ChannelGraph, group: ChannelGroup, channels: Sequence[int] | torch.Tensor, optimizer: torch.optim.Optimizer | None
) -> None:
    """``graph.prune(group, channels)``, with the optimizer's parameters and state following."""
    prune_many_keeping_state(graph, [(group, channels)], optimizer)


def prune_many_keeping_state(graph: ChannelGraph, cuts: Sequence[tuple[ChannelGroup, Sequence[int] | torch.Tensor]],
                             optimizer: torch.optim.Optimizer | None) -> None:
    """``graph.prune_many(cuts)``, with the optimizer's parameters and state following."""
    if optimizer is None:
        graph.prune_many(cuts)
        return
    graph.check_current()  # a stale graph fails here, before a gradient is dropped
    params = {k: v for group, _ in cuts for k, v in _touched(graph, group).items()}
    real = {}
    for name, p in params.items():
        real[name] = p.data
        p.grad = None  # a stale gradient would be pruned too; the next step recomputes it
        p.data = torch.arange(p.numel(), dtype=torch.float64, device=p.device).view(p.shape)
    try:
        graph.prune_many(cuts)
    finally:
        now = dict(graph.model.named_parameters(remove_duplicate=False))
        swap: dict[int, nn.Parameter] = {}
        for name, old in params.items():
            new = now[name]
            kept = new.data.long().flatten()
            new.data = real[name].flatten()[kept].view(new.shape)
            if new is not old:
                old.data = real[name]
                swap[id(old)] = new
                _move_state(optimizer, old, new, kept)
        for pg in optimizer.param_groups:
            pg["params"] = [swap.get(id(p), p) for p in pg["params"]]


def _move_state(optimizer: torch.optim.Optimizer, old: nn.Parameter, new: nn.Parameter, kept: torch.Tensor) -> None:
    state = optimizer.state.pop(old, None)
    if state is None:
        return
    moved = {}
    for k, v in state.items():
        if isinstance(v, torch.Tensor) and v.shape == old.shape:
            moved[k] = v.flatten()[kept].view(new.shape).clone()
        else:
            moved[k] = v  # step counters and other per-parameter scalars
    optimizer.state[new] = moved
