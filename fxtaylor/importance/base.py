"""What every fxtaylor criterion shares: scores per unit of the channel graph, normalised per
group, regularised by FLOPs, and served to torch-pruning one group at a time.

A criterion computes one raw score per *unit* of the graph (``unit_scores``). For a group,
:meth:`GraphImportance.group_scores` takes its units' scores, normalises them (``"l2"``: the
paper's layer-wise rescaling, so groups of different depth can be ranked together) and
subtracts ``flops_reg · cost``, the resource a unit's removal saves in units of the average
prunable map. The resource is a :class:`fxtaylor.cost.CostModel`: FLOPs by default (the
paper's), or latency as deployed (:class:`fxtaylor.cost.LatencyCost`) — the paper's form with
latency for FLOPs. As a ``torch_pruning.importance.Importance`` it maps torch-pruning's group (found
by its root module) to fxtaylor's and returns a score per root channel.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

import torch
import torch.nn as nn
import torch_pruning as tp

from .. import distributed
from ..cost import CostModel, FlopsCost
from .. import examples
from ..devices import device_of
from ..errors import ArgumentError, FxTaylorError
from ..graph import ChannelGraph, ChannelGroup, trace
from ..graph.atoms import PRODUCER

DEFAULT_COST = FlopsCost
"""The resource a criterion regularises by when it is given no cost model: the paper's FLOPs."""

NORMALIZERS = (None, "l2", "sum", "standarization", "mean", "max", "gaussian", "lamp")


def normalize(scores: torch.Tensor, how: str | None) -> torch.Tensor:
    """``"l2"``: Θ / sqrt(Σ Θ²) over the group (paper, eq. 9). ``None``: unchanged. Any other
    name is torch-pruning's normaliser of that name, for comparison."""
    if how is None:
        return scores
    if how == "l2":
        norm = scores.norm()
        return scores / norm if norm > 0 else scores
    return tp.importance.GroupMagnitudeImportance(normalizer=how)._normalize(scores, how)


def check_normalize(normalize: Any) -> None:
    """``normalize`` names a normaliser (:data:`NORMALIZERS`); the one check the library,
    :func:`fxtaylor.prune` and the command share."""
    if normalize not in NORMALIZERS:
        raise ArgumentError(f"normalize must be one of {', '.join(map(repr, NORMALIZERS))}, got {normalize!r}")


def check_flops_reg(flops_reg: Any) -> None:
    """λ, the weight of the resource cost in the score (eq. 9): a number >= 0."""
    if isinstance(flops_reg, bool) or not isinstance(flops_reg, (int, float)) or not flops_reg >= 0:
        raise ArgumentError(f"flops_reg (λ) must be >= 0, got {flops_reg!r}")


def check_arguments(model: Any, *, normalize: Any, flops_reg: Any, graph: Any, cost: Any) -> None:
    """A criterion's constructor arguments, before the model is run or traced."""
    examples.check_model(model)
    check_normalize(normalize)
    check_flops_reg(flops_reg)
    if graph is not None:
        if not isinstance(graph, ChannelGraph):
            raise ArgumentError(f"graph must be a ChannelGraph (fxtaylor.trace), got {type(graph).__name__}")
        if graph.model is not model:
            raise ArgumentError("graph was traced from another model: pass the graph of this model (fxtaylor.trace(model, ...))")
    if cost is not None and not isinstance(cost, CostModel):
        raise ArgumentError(f"cost must be a cost model (a fxtaylor.cost.CostModel), got {type(cost).__name__}")


class GraphImportance(tp.importance.Importance):
    """Base of fxtaylor's criteria. Subclasses implement :meth:`unit_scores`."""

    def __init__(
        self,
        model: nn.Module,
        example_inputs: Any,
        *,
        normalize: str | None = "l2",
        flops_reg: float = 0.0,
        graph: ChannelGraph | None = None,
        cost: CostModel | None = None,
        **trace_kwargs: Any,
    ):
        check_arguments(model, normalize=normalize, flops_reg=flops_reg, graph=graph, cost=cost)
        unknown = sorted(set(trace_kwargs) - {"ignored_layers", "leaf_modules", "exact", "specs"})
        if unknown:
            raise ArgumentError(f"unknown argument {unknown[0]!r} (a criterion takes normalize, flops_reg, graph, cost, "
                                "and for tracing ignored_layers, leaf_modules, exact)")
        # model(*x), else model(x): decided by running the model once (not again for the graph's own example)
        example_inputs = examples.resolve(model, example_inputs, graph=graph)
        self.model, self.example_inputs = model, example_inputs
        self.normalize, self.flops_reg = normalize, float(flops_reg)
        self._trace_kwargs = trace_kwargs
        self.graph = graph if graph is not None else trace(model, example_inputs, **trace_kwargs)
        self._names = {id(m): n for n, m in model.named_modules()}
        self.flops = FlopsCost()  # always counted: every run reports FLOPs
        self.cost = cost if cost is not None else self.flops  # the resource λ regularises (DEFAULT_COST: FLOPs)
        self._normalized: tuple[torch.Tensor, torch.Tensor] | None = None

    # -- to implement ------------------------------------------------------------------------

    def unit_scores(self) -> torch.Tensor:
        """Raw score of every unit of the graph (1-D, indexed by global unit id)."""
        raise NotImplementedError

    def has_state(self) -> bool:
        """Whether scores depend on observations made on the current architecture."""
        return False

    STATE: tuple[str, ...] = ()
    """Attributes holding observations: what :meth:`state_dict` saves (checkpoint/resume)."""

    @contextmanager
    def observe(self) -> Iterator["GraphImportance"]:
        """Criteria that learn from training steps hook them here; the others need nothing."""
        yield self

    def reset(self) -> None:
        """Forget every observation (criteria with none have nothing to forget)."""

    REDUCE: dict[str, str] = {}
    """Observation accumulators and how ranks combine them (``"sum"`` or ``"max"``): under
    torch.distributed each rank observes its own shard of the data."""

    def all_reduce(self) -> None:
        """Combine every rank's observations (the union of their examples), in place, so that
        every rank ranks the same scores. A collective call: once per observation window, on
        every rank, before ranking. Nothing happens outside torch.distributed."""
        if not distributed.active():
            return
        for name, op in self.REDUCE.items():
            v = getattr(self, name)
            t = v.clone() if isinstance(v, torch.Tensor) else torch.tensor(float(v), dtype=torch.float64, device=self.device)
            distributed.all_reduce_(t, op)
            setattr(self, name, t if isinstance(v, torch.Tensor) else type(v)(t.item()))

    def state_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.STATE}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for k in self.STATE:
            v = state[k]
            setattr(self, k, v.to(self.device) if isinstance(v, torch.Tensor) else v)

    # -- shared ------------------------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        return device_of(self.model)

    def sync(self) -> None:
        """Re-trace if the model was pruned by someone else (e.g. torch-pruning's pruner).

        Observations refer to the channels they were made on, so a criterion that holds some
        must be ``reset()`` and observed again first.
        """
        if not self._stale():
            return
        if self.has_state():
            raise FxTaylorError(
                "the model's channels changed since the criterion was observed (it was pruned "
                "outside this graph): call reset() and observe() again before ranking"
            )
        self.graph = trace(self.model, self.example_inputs, **self._trace_kwargs)
        self._names = {id(m): n for n, m in self.model.named_modules()}
        self.on_retrace()

    def on_retrace(self) -> None:
        """Hook for subclasses whose buffers are sized by the graph."""

    def _stale(self) -> bool:
        for (name, role), sp in self.graph.spaces.items():
            if sp.kind == PRODUCER and role == "out":
                m = self.model.get_submodule(name)
                size = getattr(m, "out_channels", getattr(m, "out_features", getattr(m, "embedding_dim", None)))
                if size is not None and size != self.graph.unit_maps[(name, role)].numel():
                    return True
        return False

    def unit_costs(self) -> torch.Tensor:
        """What deleting each unit alone saves of the resource (:attr:`cost`), re-derived
        whenever the architecture changed since the last call."""
        return self.cost.sync(self.graph, self.example_inputs).unit_costs()

    def normalized_costs(self) -> torch.Tensor:
        """Unit costs divided by the mean cost of all prunable units: 1 = an average map."""
        cost = self.unit_costs()
        if self._normalized is None or self._normalized[0] is not cost:
            units = [g.units for g in self.graph.prunable_groups]
            mean = cost[torch.cat(units)].mean() if units else cost.new_ones(())
            self._normalized = (cost, cost / mean if mean > 0 else cost)
        return self._normalized[1]

    def total_flops(self) -> int:
        """FLOPs of one forward pass of the model as it is now (fvcore; counted again only
        when the architecture changed: a pruner asks once per group per step)."""
        return int(self.flops.sync(self.graph, self.example_inputs).total())

    def group_scores(self, group: ChannelGroup, unit_scores: torch.Tensor | None = None) -> torch.Tensor:
        """Final score of each channel of ``group``: normalised, minus λ·cost. Lowest goes first.
        ``unit_scores``: this criterion's :meth:`unit_scores`, when the caller scores many groups
        at once (some criteria compute them with a pass over the whole model)."""
        raw = self.unit_scores() if unit_scores is None else unit_scores
        s = normalize(raw[group.units].to(torch.float64), self.normalize)
        if self.flops_reg:
            s = s - self.flops_reg * self.normalized_costs()[group.units]
        return s

    def __call__(self, group: tp.Group, **kwargs: Any) -> torch.Tensor | None:
        """torch-pruning's entry point: one score per index of the group's root, or None if
        fxtaylor considers the group frozen (torch-pruning then leaves it alone)."""
        self.sync()
        dep, idxs = group[0].dep, group[0].idxs
        name = self._names.get(id(dep.target.module))
        role = "out" if dep.handler in _OUT_FNS else "in"
        units = self.graph.unit_maps.get((name, role))
        ours = self.graph.group_of(name, role) if units is not None else None
        if ours is None or not ours.prunable:
            return None
        local = torch.searchsorted(ours.units, units.clamp(min=0))
        per_position = self.group_scores(ours)[local]
        return per_position[torch.as_tensor(list(idxs), dtype=torch.long)].to(torch.float32).to(self.device)


_OUT_FNS = {
    tp.prune_conv_out_channels, tp.prune_linear_out_channels, tp.prune_depthwise_conv_out_channels,
    tp.prune_batchnorm_out_channels, tp.prune_embedding_out_channels,
}
