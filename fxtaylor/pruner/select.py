"""Which maps go in a pruning step: one global ranking, capped by count and by the FLOPs target.
:func:`cut` removes them (also usable alone: one-shot pruning to a FLOPs target).

Every unit of every prunable group gets its final score (``importance.group_scores``: ℓ2
normalised within its group, minus λ·cost); all are sorted together, lowest first, and taken
until ``k`` are chosen or the estimated FLOPs reach the target. A group never goes below its
``min_keep``. Near the target a map whose removal would overshoot below the tolerance band is
skipped for the next-ranked one that fits, so the run ends within the band instead of one
expensive map past it.

The estimate subtracts each unit's cost (:func:`fxtaylor.flops.unit_costs`) from the current
FLOPs. Costs are exact per unit; for a conv losing both input and output channels in one step
the true saving is smaller than the sum (FLOPs ∝ Cin·Cout), so the estimate never
over-predicts FLOPs and the loop re-counts with fvcore after every cut.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch

from .. import flops, optim
from ..graph import ChannelGroup, trace
from ..importance.base import GraphImportance


@dataclass
class Cut:
    group: ChannelGroup
    channels: torch.Tensor  # group-local, ascending


def select(imp: GraphImportance, k: int, flops_now: float, target: float, floor: float, round_to: int = 1) -> list[Cut]:
    """Up to ``k`` lowest-ranked units, stopping once ``flops_now`` minus their costs is at or
    below ``target``, never going below ``floor``.

    ``round_to`` > 1 keeps every group wider than it at a multiple of ``round_to`` units: a
    group's sorted units are ranked in chunks (the remainder first, then ``round_to`` at a
    time) scored by their mean, so a group loses whole chunks. Vectorised kernels (oneDNN,
    cuDNN) prefer channel counts that are multiples of 8 or 16; on CPU this measured faster at
    batch 1 and neutral at batch 32 (docs/results.md).
    """
    groups = imp.graph.prunable_groups
    if not groups or k <= 0:
        return []
    raw, costs = imp.unit_scores(), imp.unit_costs()
    chunk_scores, chunk_costs, chunk_owner, chunk_units = [], [], [], []  # chunk_units: list of lists
    for gi, g in enumerate(groups):
        s = imp.group_scores(g, raw)
        order = torch.sort(s, stable=True).indices
        r = round_to if g.size > round_to else 1
        end = g.size - -(-g.min_keep // r) * r  # units that may go, keeping min_keep rounded up
        rem = g.size % r
        if end < max(rem, 1):
            continue
        n_chunks = (1 if rem else 0) + (end - rem) // r
        lim = rem + (n_chunks - (1 if rem else 0)) * r
        pos = torch.arange(lim)
        cid = torch.where(pos < rem, 0, (pos - rem) // r + (1 if rem else 0))
        size = torch.bincount(cid, minlength=n_chunks).to(torch.float64)
        chunk_scores.append(torch.zeros(n_chunks, dtype=torch.float64).index_add_(0, cid, s[order[:lim]]) / size)
        chunk_costs.append(torch.zeros(n_chunks, dtype=torch.float64).index_add_(0, cid, costs[g.units[order[:lim]]].to(torch.float64)))
        chunk_owner += [gi] * n_chunks
        units = order[:lim].tolist()
        starts = [0] + ([rem] if rem else []) + list(range(rem + r if rem else r, lim, r))
        chunk_units += [units[a:b] for a, b in zip(starts, starts[1:] + [lim])][:n_chunks]
    if not chunk_units:
        return []
    scores = torch.cat(chunk_scores)
    cost_l = torch.cat(chunk_costs).tolist()
    cands = [(i, chunk_owner[i], chunk_units[i], cost_l[i]) for i in torch.sort(scores, stable=True).indices.tolist()]
    picked: list[list[int]] = [[] for _ in groups]
    est, taken = float(flops_now), 0
    for _, gi, idx, cost in cands:  # lowest mean score first; ties keep group order
        if taken >= k or est <= target:
            break
        if est - cost < floor:
            continue
        picked[gi] += idx
        est -= cost
        taken += len(idx)
    return [Cut(g, torch.tensor(sorted(p), dtype=torch.long)) for g, p in zip(groups, picked) if p]


def cut(imp: GraphImportance, target: float, k: int | None = None, tolerance: float = 0.01,
        optimizer: torch.optim.Optimizer | None = None, round_to: int = 1) -> list[int]:
    """Remove the lowest-ranked units of ``imp``'s graph from its model: up to ``k`` (all that
    are needed if None), stopping at ``target`` FLOPs (absolute) within ``tolerance`` below it.
    The optimizer's state follows the kept channels. Returns the removed units (global ids).

    Re-selects after each cut if the estimate stopped short of the target (it never
    over-predicts a saving, so this only adds units). If nothing fits the band and the FLOPs are
    more than ``tolerance`` above the target, the single lowest-ranked unit (or chunk, with
    ``round_to``, see :func:`select`) goes anyway.
    """
    k = k if k is not None else int(imp.graph.group_of_unit.numel())
    floor, removed = target * (1 - tolerance), []
    for _ in range(8):
        now = imp.total_flops()
        cuts = select(imp, k - len(removed), now, target, floor, round_to)
        if not cuts and not removed and now > target * (1 + tolerance):
            cuts = select(imp, 1, now, target, -math.inf, round_to)
        if not cuts:
            break
        for c in cuts:
            removed += c.group.units[c.channels].tolist()
            optim.prune_keeping_state(imp.graph, c.group, c.channels, optimizer)
        if len(removed) >= k or imp.total_flops() <= target:
            break
    return removed


def min_flops(imp: GraphImportance, example_inputs, **trace_kwargs) -> int:
    """The FLOPs of the smallest model pruning can reach: a copy with every prunable group cut
    to its ``min_keep`` cheapest units, counted by fvcore. A lower target cannot be reached."""
    model = copy.deepcopy(imp.model)
    graph = trace(model, example_inputs, **trace_kwargs)
    cost = imp.unit_costs()
    for g in graph.prunable_groups:
        order = torch.argsort(cost[g.units], stable=True)
        graph.prune(g, order[g.min_keep:])
    return flops.count(model, example_inputs)[0]
