"""The dead-channel test: the ground truth for whether a channel group is right.

If a group is right, a channel of it that is *dead* (zero at every producer: weights, bias and
norm affine) contributes nothing downstream, so removing it must leave the model's output
unchanged. A wrong group either breaks the pruned model (shape error) or changes its output.
"""
from __future__ import annotations

import copy
from typing import Any, Sequence

import torch
import torch.nn as nn
import torch.utils._pytree as pytree

from .atoms import NORM, PARAM, PRODUCER
from .channel_graph import ChannelGroup, trace


def kill_channels(model: nn.Module, group: ChannelGroup, channels: Sequence[int]) -> None:
    """Zero ``channels`` of ``group`` at every producer, norm and free parameter of ``model``."""
    chosen = torch.as_tensor(list(channels), dtype=torch.long)
    with torch.no_grad():
        for m in group.members:
            pos = m.positions[torch.isin(m.channels, chosen)]
            if m.kind == PARAM:
                owner_path, _, attr = m.name.rpartition(".")
                owner = model.get_submodule(owner_path) if owner_path else model
                getattr(owner, attr).index_fill_(int(m.role[len("param"):]), pos.to(getattr(owner, attr).device), 0)
                continue
            if m.kind not in (PRODUCER, NORM):
                continue
            mod = model.get_submodule(m.name)
            spec = group.graph.spec_of(mod)  # the rows the graph was traced with
            axis = spec.out_axis if spec is not None and m.kind == PRODUCER else 0
            for p, dim in ((getattr(mod, "weight", None), axis), (getattr(mod, "bias", None), 0)):
                if isinstance(p, torch.Tensor) and p.dim() > dim:
                    _zero(p, dim, pos.to(p.device), mod)


def _zero(p: torch.Tensor, axis: int, pos: torch.Tensor, mod: nn.Module) -> None:
    """Zero positions ``pos`` of ``p`` along ``axis``. A grouped transposed conv's weight is
    [in, out/groups, ...]: output channel o is column o % (out/groups) of group o // (out/groups)'s rows."""
    groups = getattr(mod, "groups", 1)
    if axis == 1 and getattr(mod, "transposed", False) and groups > 1 and p is getattr(mod, "weight", None):
        per = p.shape[1]
        view = p.view(groups, p.shape[0] // groups, *p.shape[1:])
        for o in pos.tolist():
            view[o // per, :, o % per] = 0
        return
    p.index_fill_(axis, pos, 0)


def dead_channel_diff(model: nn.Module, example_inputs: Any, group_index: int, channels: Sequence[int], *,
                      relative: bool = False, **trace_kw) -> tuple[float, bool]:
    """Max |output difference| between a model with ``channels`` of group ``group_index`` dead
    and the same model with them pruned through the graph, and whether output shapes match.

    ``relative=True`` divides by ``max(1, max|output|)``: float32 rounding of a sum reordered by
    the pruning scales with the output's magnitude and differs between CPUs, so an absolute bar
    fails on some machines for a correct group (1.05e-5 on a ResNet-18 whose outputs reach ~30).

    Works on a deep copy; ``model`` is left as it was. Eval mode.
    """
    inputs = example_inputs if isinstance(example_inputs, (tuple, list)) else (example_inputs,)
    m = copy.deepcopy(model).eval()
    graph = trace(m, example_inputs, **trace_kw)
    group = graph.groups[group_index]
    kill_channels(m, group, channels)
    with torch.no_grad():
        before = m(*inputs)
    graph.prune(group, channels)
    with torch.no_grad():
        after = m(*inputs)
    b, a = _tensors(before), _tensors(after)
    if len(b) != len(a) or any(x.shape != y.shape for x, y in zip(b, a)):
        return float("inf"), False
    pairs = [(x.double(), y.double()) for x, y in zip(b, a) if x.numel()]
    if not pairs:
        return 0.0, True
    diff = max(float((x - y).abs().max()) for x, y in pairs)
    scale = max(float(x.abs().max()) for x, _ in pairs)
    return (diff / max(1.0, scale) if relative else diff), True


def _tensors(out: Any) -> list[torch.Tensor]:
    """The tensors of a model's output (a tensor, or lists / tuples / dicts of them: detection
    models return a list of dicts of boxes, labels and scores; RAFT a list of flow fields)."""
    return [t for t in pytree.tree_leaves(out) if isinstance(t, torch.Tensor)]


__all__ = ["dead_channel_diff", "kill_channels"]
