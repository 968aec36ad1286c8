"""Which maps go in a pruning step: one global ranking, capped by count and by the FLOPs target.

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
from dataclasses import dataclass

import torch

from .. import flops
from ..graph import ChannelGroup, trace
from ..importance.base import GraphImportance


@dataclass
class Cut:
    group: ChannelGroup
    channels: torch.Tensor  # group-local, ascending
    saving: float  # estimated FLOPs removed


def select(imp: GraphImportance, k: int, flops_now: float, target: float, floor: float) -> list[Cut]:
    """Up to ``k`` lowest-ranked units, stopping once ``flops_now`` minus their costs is at or
    below ``target``, never going below ``floor``."""
    groups = imp.graph.prunable_groups
    if not groups or k <= 0:
        return []
    scores = torch.cat([imp.group_scores(g) for g in groups])
    owner = torch.cat([torch.full((g.size,), i) for i, g in enumerate(groups)])
    local = torch.cat([torch.arange(g.size) for g in groups])
    cost = torch.cat([imp.unit_costs()[g.units] for g in groups]).tolist()
    order = torch.sort(scores, stable=True).indices.tolist()
    budget = [g.num_prunable for g in groups]
    picked: list[list[int]] = [[] for _ in groups]
    saved = [0.0 for _ in groups]
    est, taken = float(flops_now), 0
    owner_l, local_l = owner.tolist(), local.tolist()
    for i in order:
        if taken == k or est <= target:
            break
        gi = owner_l[i]
        if budget[gi] == 0 or est - cost[i] < floor:
            continue
        picked[gi].append(local_l[i])
        budget[gi] -= 1
        saved[gi] += cost[i]
        est -= cost[i]
        taken += 1
    return [Cut(g, torch.tensor(sorted(p), dtype=torch.long), s) for g, p, s in zip(groups, picked, saved) if p]


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
