"""Removing channels from modules: the prune handlers the op specs (:mod:`.ops`) point to.

fxtaylor decides *which* positions go (the channel graph); torch-pruning's per-layer functions
do the tensor surgery, and :func:`slice_channels` cuts modules torch-pruning has no function for
(a module's per-channel parameters and buffers, named by its spec). Each handler has one
signature, ``handler(module, removed)``, where ``removed`` maps a space role ('out', 'in',
'norm') to the sorted positions to delete. Which handler cuts which module is the op
registry's business (``ops.Registry.prune_module``): nothing here looks a module up.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn as nn
import torch_pruning as tp
from torch_pruning.pruner.function import ParameterPruner

from ..errors import PruneError


def conv(m: nn.Conv2d, removed: dict[str, list[int]]) -> None:
    """Conv and transposed conv, 1-D to 3-D: torch-pruning's functions know both weight
    layouts ([out, in/groups, ...] and [in, out/groups, ...])."""
    out, inn = removed.get("out", []), removed.get("in", [])
    if m.transposed and m.groups > 1:
        return _grouped_transposed(m, out, inn)
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


def _grouped_transposed(m: nn.Module, out: list[int], inn: list[int]) -> None:
    """A grouped transposed conv's weight is [in, out/groups, ...]: deleting a group deletes its
    input rows (dim 0) and its outputs' bias; the per-group output width is unchanged."""
    width_out, width_in = m.out_channels // m.groups, m.in_channels // m.groups
    gone = len(inn) // width_in
    if len(inn) % width_in or len(out) != gone * width_out:
        raise PruneError(f"grouped transposed conv {m}: only whole groups can be removed (got {len(out)} out, {len(inn)} in)")
    slice_channels(m, inn, ("weight",))
    slice_channels(m, out, ("bias",))
    m.in_channels -= len(inn)
    m.out_channels -= len(out)
    m.groups -= gone


def standardized_conv(m: nn.Module, removed: dict[str, list[int]]) -> None:
    """A weight-standardised conv (timm's ``StdConv2d``, ``ScaledStdConv2d``): a conv, and a
    per-output-channel ``gain`` where it has one. ``ScaledStdConv2d.scale`` (γ/√fan-in, set at
    construction) is kept: torch-pruning keeps it too, and it keeps the remaining inputs'
    contributions at their trained size after an (inexact) input cut."""
    conv(m, removed)
    if removed.get("out") and isinstance(getattr(m, "gain", None), torch.Tensor):
        slice_channels(m, removed["out"], ("gain",))


def layernorm(m: nn.LayerNorm, removed: dict[str, list[int]]) -> None:
    """A layer (or RMS) norm over one channel dim (an inexact cut, see rules.layernorm)."""
    slice_channels(m, removed["norm"], ("weight", "bias"))
    m.normalized_shape = (m.normalized_shape[0] - len(removed["norm"]),)


def groupnorm(m: nn.GroupNorm, removed: dict[str, list[int]]) -> None:
    """Whole groups (the graph ties a group's channels), or any channels of a one-group norm."""
    gone = removed["norm"]
    width = m.num_channels // m.num_groups
    if m.num_groups > 1 and len(gone) % width:
        raise PruneError(f"GroupNorm {m}: only whole groups of {width} channels can be removed (got {len(gone)})")
    slice_channels(m, gone, ("weight", "bias"))
    m.num_channels -= len(gone)
    if m.num_groups > 1:
        m.num_groups -= len(gone) // width


def linear(m: nn.Linear, removed: dict[str, list[int]]) -> None:
    if removed.get("out"):
        tp.prune_linear_out_channels(m, removed["out"])
    if removed.get("in"):
        tp.prune_linear_in_channels(m, removed["in"])


def _norm(fn: Callable) -> Callable:
    def handler(m: nn.Module, removed: dict[str, list[int]]) -> None:
        fn(m, removed["norm"])

    return handler


def embedding(m: nn.Embedding, removed: dict[str, list[int]]) -> None:
    tp.prune_embedding_out_channels(m, removed["out"])


batchnorm = _norm(tp.prune_batchnorm_out_channels)
instancenorm = _norm(tp.prune_instancenorm_out_channels)
prelu = _norm(tp.prune_prelu_out_channels)


def slice_channels(m: nn.Module, positions: Sequence[int], names: Sequence[str]) -> None:
    """Delete ``positions`` along dim 0 of ``m``'s per-channel parameters and buffers ``names``
    (gradients too), and keep a ``num_features`` attribute, if any, equal to the new size."""
    gone, size = set(positions), None
    for name in names:
        t = getattr(m, name, None)
        if t is None:
            continue
        keep = torch.tensor([i for i in range(t.shape[0]) if i not in gone], dtype=torch.long, device=t.device)
        if isinstance(t, nn.Parameter):
            new = nn.Parameter(t.data.index_select(0, keep), requires_grad=t.requires_grad)
            if t.grad is not None:
                new.grad = t.grad.index_select(0, keep)
            setattr(m, name, new)
        else:
            setattr(m, name, t.index_select(0, keep))
        size = int(keep.numel())
    if size is not None and isinstance(getattr(m, "num_features", None), int):
        m.num_features = size


def prune_parameter(model: nn.Module, path: str, dim: int, idxs: list[int]) -> None:
    """Replace the free parameter at ``path`` by a copy without ``idxs`` along ``dim``."""
    owner_path, _, attr = path.rpartition(".")
    owner = model.get_submodule(owner_path) if owner_path else model
    new = ParameterPruner(pruning_dim=dim).prune_out_channels(getattr(owner, attr), idxs)
    setattr(owner, attr, new)
    # a norm subclass with its own forward calling F.layer_norm / F.group_norm (ConvNeXt's
    # LayerNorm2d, timm's GroupNorm1): its affine parameters were cut as free parameters, the
    # sizes the forward passes follow them (a GroupNorm loses whole groups, the rule tied them)
    if isinstance(owner, (nn.LayerNorm, nn.RMSNorm)) and attr in ("weight", "bias") and len(owner.normalized_shape) == 1:
        owner.normalized_shape = (int(new.shape[0]),)
    if isinstance(owner, nn.GroupNorm) and attr in ("weight", "bias") and owner.num_channels != new.shape[0]:
        width = owner.num_channels // owner.num_groups
        owner.num_channels = int(new.shape[0])
        owner.num_groups = 1 if owner.num_groups == 1 else owner.num_channels // width
