"""Which maps go in a pruning step: a pure selection over the channel graph, for any resource.
:func:`cut` removes them (also usable alone: one-shot pruning to a target).

Every unit of every prunable group has its final score (``importance.group_scores``: ℓ2
normalised within its group, minus λ·cost). A group loses its lowest-scored units first, in
*chunks*: one unit at a time, or ``round_to`` at a time so that its width stays a multiple of
``round_to`` (a latency cost model proposes the multiple its measured tables prefer). Chunks of
all groups compete greedily, one at a time, in one of two orders:

- ``"rank"`` — the paper's: lowest mean score first. Which units go does not depend on the
  resource except through λ·cost.
- ``"knapsack"`` — lowest importance per resource saved first (HALP's greedy ordering): a
  chunk that saves much latency for little importance goes before a cheaper, slightly less
  important one. Chunks that save nothing wait until last.

After each chunk, the resource is *predicted* for the new widths by the cost model (a
function of every layer's channel counts, not a sum of unit costs: latency does not add up per
unit, and a conv losing inputs and outputs saves less than the two savings summed). Taking
stops at ``k`` units or once the prediction reaches the target; a chunk that would overshoot
below ``floor`` is skipped for the next one that fits, so runs end inside the tolerance band.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..cost import CostModel
from ..graph import ChannelGroup
from ..importance.base import GraphImportance

MODES = ("rank", "knapsack")


@dataclass
class Cut:
    group: ChannelGroup
    channels: torch.Tensor  # group-local, ascending


class _Queue:
    """One group's removable units, lowest score first, handed out a chunk at a time."""

    def __init__(self, g: ChannelGroup, scores: torch.Tensor, r: int):
        order, least = g.removal_order(scores)
        self.group, self.r = g, r if g.size > r else 1
        self.order, self.scores = order, scores[order]
        self.end = g.size - -(-least // self.r) * self.r  # how many may go, the least kept rounded up
        self.pos = 0

    def next(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(group-local channels, their scores) of the next chunk, or None when exhausted."""
        first = (self.group.size % self.r) if self.pos == 0 else 0
        size = first or self.r
        if self.pos + size > self.end:
            return None
        sl = slice(self.pos, self.pos + size)
        return self.order[sl], self.scores[sl]


def select(imp: GraphImportance, k: int, target: float, floor: float, round_to: int | None = 1,
           cost: CostModel | None = None, mode: str = "rank", exclude: frozenset[int] = frozenset(),
           coarsen: int = 1) -> list[Cut]:
    """Up to ``k`` units in chunks, stopping once the predicted resource is at or below
    ``target``, never predicted below ``floor`` (both in the cost model's unit).

    ``round_to``: chunk size (None: each group's ``cost.alignment``, 1 for FLOPs).
    ``exclude``: group indices left out. ``coarsen``: chunks that many times larger.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    cost = (cost or imp.cost).sync(imp.graph, imp.example_inputs)
    L = cost.layers
    groups = [g for g in imp.graph.prunable_groups if g.index not in exclude]
    if not groups or k <= 0:
        return []
    raw = imp.unit_scores()
    queues = {}
    for g in groups:
        r = round_to or cost.alignment(L.names[i] for i in L.of_group.get(g.index, ()))
        queues[g.index] = _Queue(g, imp.group_scores(g, raw), r * coarsen)
    cin, cout = list(L.cin), list(L.cout)  # the widths as chunks are taken

    def layer(i: int) -> float:
        return cost.layer_cost(L.names[i], cin[i], cout[i])

    def chunk(q: _Queue):
        """The group's next chunk and what it takes from each layer (independent of widths)."""
        nxt = q.next()
        if nxt is None:
            return None
        local, s = nxt
        units = q.group.units[local]
        return local, float(s.sum()), {i: L.delta(i, units) for i in L.of_group.get(q.group.index, ())}

    def candidate(ch):
        """(key, chunk, saving) at the current widths."""
        if ch is None:
            return None
        local, value, deltas = ch
        saved = 0.0
        for i, (di, do) in deltas.items():
            saved += layer(i) - cost.layer_cost(L.names[i], max(cin[i] - di, 0), max(cout[i] - do, 0))
        key = value / len(local) if mode == "rank" else (value / saved if saved > 0 else math.inf)
        return key, ch, saved

    chunks = {gi: chunk(q) for gi, q in queues.items()}
    cands = {gi: candidate(ch) for gi, ch in chunks.items()}
    picked: dict[int, list[torch.Tensor]] = {gi: [] for gi in queues}
    est, taken = cost.total(), 0
    while taken < k and est > target:
        live = [(c[0], gi) for gi, c in cands.items() if c is not None]
        if not live:
            break
        _, gi = min(live)  # ties: lowest group index (stable across ranks)
        _, (local, _, deltas), saved = cands[gi]
        if est - saved < floor:
            cands[gi] = None  # overshoots the band: this group is done for this step
            continue
        picked[gi].append(local)
        est -= saved
        taken += len(local)
        queues[gi].pos += len(local)
        for i, (di, do) in deltas.items():
            cin[i], cout[i] = max(cin[i] - di, 0), max(cout[i] - do, 0)
        chunks[gi] = chunk(queues[gi])
        for gj in {gj for i in deltas for gj in L.of_layer[i]} | {gi}:  # groups sharing a narrowed layer
            if gj == gi or cands.get(gj) is not None:
                cands[gj] = candidate(chunks[gj])
    return [Cut(queues[gi].group, torch.sort(torch.cat(p)).values) for gi, p in picked.items() if p]


def cut(imp: GraphImportance, target: float, k: int | None = None, tolerance: float = 0.01,
        optimizer: torch.optim.Optimizer | None = None, round_to: int | None = 1,
        cost: CostModel | None = None, mode: str = "rank", repeat: bool = True) -> list[int]:
    """Remove the lowest-ranked units of ``imp``'s graph from its model: up to ``k`` (all that
    are needed if None), stopping at ``target`` (absolute, in the cost model's unit — FLOPs by
    default) within ``tolerance`` below it. The optimizer's state follows the kept channels.
    Returns the removed units (global ids).

    ``repeat``: re-select after each cut if the resource, re-counted, stopped short of the
    target (FLOPs outside leaf modules are not predicted). If nothing fits the band and the
    resource is more than ``tolerance`` above the target, the single lowest-ranked chunk goes
    anyway.
    """
    cost = cost or imp.cost
    k = k if k is not None else int(imp.graph.group_of_unit.numel())
    floor, removed = target * (1 - tolerance), []
    for _ in range(8 if repeat else 1):
        now = cost.sync(imp.graph, imp.example_inputs).total()
        cuts = select(imp, k - len(removed), target, floor, round_to, cost, mode)
        if not cuts and not removed and now > target * (1 + tolerance):
            cuts = select(imp, 1, target, -math.inf, round_to, cost, mode)
        if not cuts:
            break
        for c in cuts:
            removed += c.group.units[c.channels].tolist()
        imp.graph.prune_many([(c.group, c.channels) for c in cuts], optimizer=optimizer)
        if len(removed) >= k or cost.sync(imp.graph, imp.example_inputs).total() <= target:
            break
    return removed


def predict_after(cost: CostModel, units: torch.Tensor) -> float:
    """The cost model's prediction for its graph with ``units`` (global ids) removed."""
    return cost.predict_after(units)


def minimum(imp: GraphImportance, cost: CostModel | None = None) -> float:
    """The predicted resource of the smallest model pruning can reach (:meth:`CostModel.least`)."""
    return (cost or imp.cost).sync(imp.graph, imp.example_inputs).least()
