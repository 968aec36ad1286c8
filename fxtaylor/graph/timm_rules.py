"""What fxtaylor knows about timm's own layers (timm is optional: nothing here imports it).

The rows in :data:`fxtaylor.graph.ops.SPECS` and :data:`fxtaylor.graph.ops.SPLIT_OWNERS` are
keyed by qualified class name, so they apply only where timm's classes exist. Everything below
reads and writes plain module attributes.

- ``Conv2dSame`` (the ``tf_*`` models) is a ``Conv2d`` that pads its input to TensorFlow's
  "SAME" size on every call; channel for channel a conv. fx cannot trace its padding
  arithmetic (``math.ceil`` of a traced size), so without a row it broke the trace into parts
  and the convs in those parts had no rule.
- Split owners: modules that split their input along the channels by sizes held in their own
  attributes. The split is exact to prune through if those attributes follow the pruning: the
  ``prune`` functions here update them (``removed["split"]``: positions of the split input).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn


def conv2d_same_meta_out(m: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """Meta output of timm's ``Conv2dSame``: "SAME" padding gives ``ceil(size / stride)``."""
    size = [math.ceil(n / s) for n, s in zip(x.shape[-2:], m.stride)]
    return torch.empty((*x.shape[:-3], m.out_channels, *size), dtype=x.dtype, device="meta")


def selective_kernel_split(m: nn.Module, removed: dict[str, list[int]]) -> None:
    """``SelectiveKernel`` splits its input into ``num_paths`` pieces of ``in_channels //
    num_paths`` (``split_input=True``); the pieces are tied, so each loses the same count."""
    m.in_channels -= len(removed["split"])


def res2net_split(m: nn.Module, removed: dict[str, list[int]]) -> None:
    """``Bottle2neck`` splits ``conv1``'s output into ``scale`` pieces of ``width`` channels;
    the pieces are tied, so each loses ``len / scale``."""
    m.width -= len(removed["split"]) // m.scale


def mixed_conv_check(m: nn.Module, removed: dict[str, list[int]]) -> list[int]:
    """``MixedConv2d``'s split sizes after ``removed``; :class:`PruneError` if a piece (and so
    its sub-conv) would be left without channels."""
    gone = torch.as_tensor(removed["split"], dtype=torch.long)
    ends = torch.tensor(m.splits).cumsum(0)
    per_piece = torch.bincount(torch.bucketize(gone, ends, right=True), minlength=len(m.splits))
    new = [int(s - k) for s, k in zip(m.splits, per_piece.tolist())]
    if min(new) < 1:
        from ..errors import PruneError

        raise PruneError(f"MixedConv2d: pruning would empty a piece of its split ({m.splits} -> {new})")
    return new


def mixed_conv_split(m: nn.Module, removed: dict[str, list[int]]) -> None:
    """``MixedConv2d`` splits its input by ``splits`` (one size per sub-conv; the sub-convs are
    pruned by their own rows). ``in_channels`` follows; so does ``out_channels`` where every
    sub-conv is depthwise (its outputs are its inputs). A dense MixedConv2d's output channels
    are its sub-convs' (pruned there): its ``out_channels`` attribute, unused by ``forward``,
    is left as built."""
    new = mixed_conv_check(m, removed)
    depthwise = all(c.groups == c.in_channels == c.out_channels for c in m.values())
    m.splits = new
    m.in_channels = sum(new)
    if depthwise:
        m.out_channels = m.in_channels


__all__ = ["conv2d_same_meta_out", "mixed_conv_check", "mixed_conv_split", "res2net_split", "selective_kernel_split"]
