"""Optimizers for pruning, and the old names of keeping one valid across a cut.

The cut itself keeps the optimizer right now: ``graph.prune(group, channels, optimizer=opt)``
and ``graph.prune_many(cuts, optimizer=opt)`` (:mod:`fxtaylor.graph.optimizer_state`: the
surgery runs on index probes, the optimizer's parameters and state follow the kept channels).
:func:`prune_keeping_state` and :func:`prune_many_keeping_state` are those calls under their
earlier names.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn

from .graph import ChannelGraph, ChannelGroup
from .graph.optimizer_state import StaleOptimizerWarning

__all__ = ["StaleOptimizerWarning", "paper_sgd", "prune_keeping_state", "prune_many_keeping_state"]


def paper_sgd(model: nn.Module, lr: float = 1e-4) -> torch.optim.Optimizer:
    """The paper's fine-tuning optimizer (Birds-200 / VGG-16): SGD, lr 1e-4, momentum 0.9,
    weight decay 1e-4 (the command's ``--lr`` changes only the learning rate)."""
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=1e-4)


def prune_keeping_state(
    graph: ChannelGraph, group: ChannelGroup, channels: Sequence[int] | torch.Tensor, optimizer: torch.optim.Optimizer | None
) -> None:
    """``graph.prune(group, channels, optimizer=optimizer)``."""
    graph.prune(group, channels, optimizer=optimizer)


def prune_many_keeping_state(graph: ChannelGraph, cuts: Sequence[tuple[ChannelGroup, Sequence[int] | torch.Tensor]],
                             optimizer: torch.optim.Optimizer | None) -> None:
    """``graph.prune_many(cuts, optimizer=optimizer)``."""
    graph.prune_many(cuts, optimizer=optimizer)
