"""Removing channels from modules: a table from module type to torch-pruning's prune functions.

fxtaylor decides *which* positions go (the channel graph); torch-pruning's per-layer functions
do the tensor surgery. Each handler has one signature, ``handler(module, removed)``, where
``removed`` maps a space role ('out', 'in', 'norm') to the sorted positions to delete.
"""
from __future__ import annotations

from typing import Callable

import torch.nn as nn
import torch_pruning as tp
from torch_pruning.pruner.function import ParameterPruner

from ..errors import PruneError


def _conv(m: nn.Conv2d, removed: dict[str, list[int]]) -> None:
    out, inn = removed.get("out", []), removed.get("in", [])
    if m.groups == 1:
        if out:
            tp.prune_conv_out_channels(m, out)
        if inn:
            tp.prune_conv_in_channels(m, inn)
        return
    # Grouped / depthwise: the graph ties input block k to output block k, so whole groups
    # leave together. The weight is [out, in/groups, ...]: deleting a group deletes its output
    # rows only; the per-group input width is unchanged, the group count drops.
    width_out, width_in = m.out_channels // m.groups, m.in_channels // m.groups
    gone = len(out) // width_out
    if len(out) % width_out or len(inn) != gone * width_in:
        raise PruneError(f"grouped conv {m}: only whole groups can be removed (got {len(out)} out, {len(inn)} in)")
    tp.prune_conv_out_channels(m, out)
    m.in_channels -= len(inn)
    m.groups -= gone


def _linear(m: nn.Linear, removed: dict[str, list[int]]) -> None:
    if removed.get("out"):
        tp.prune_linear_out_channels(m, removed["out"])
    if removed.get("in"):
        tp.prune_linear_in_channels(m, removed["in"])


def _norm(fn: Callable) -> Callable:
    def handler(m: nn.Module, removed: dict[str, list[int]]) -> None:
        fn(m, removed["norm"])

    return handler


def _embedding(m: nn.Embedding, removed: dict[str, list[int]]) -> None:
    tp.prune_embedding_out_channels(m, removed["out"])


HANDLERS: dict[type, Callable[[nn.Module, dict[str, list[int]]], None]] = {
    nn.Conv1d: _conv,
    nn.Conv2d: _conv,
    nn.Conv3d: _conv,
    nn.Linear: _linear,
    nn.Embedding: _embedding,
    nn.BatchNorm1d: _norm(tp.prune_batchnorm_out_channels),
    nn.BatchNorm2d: _norm(tp.prune_batchnorm_out_channels),
    nn.BatchNorm3d: _norm(tp.prune_batchnorm_out_channels),
    nn.SyncBatchNorm: _norm(tp.prune_batchnorm_out_channels),
    nn.InstanceNorm1d: _norm(tp.prune_instancenorm_out_channels),
    nn.InstanceNorm2d: _norm(tp.prune_instancenorm_out_channels),
    nn.InstanceNorm3d: _norm(tp.prune_instancenorm_out_channels),
    nn.PReLU: _norm(tp.prune_prelu_out_channels),
}


def prune_module(m: nn.Module, removed: dict[str, list[int]]) -> None:
    for t in type(m).__mro__:
        if t in HANDLERS:
            HANDLERS[t](m, removed)
            return
    raise PruneError(f"no prune handler for {type(m).__name__}")


def prune_parameter(model: nn.Module, path: str, dim: int, idxs: list[int]) -> None:
    """Replace the free parameter at ``path`` by a copy without ``idxs`` along ``dim``."""
    owner_path, _, attr = path.rpartition(".")
    owner = model.get_submodule(owner_path) if owner_path else model
    new = ParameterPruner(pruning_dim=dim).prune_out_channels(getattr(owner, attr), idxs)
    setattr(owner, attr, new)
