"""The paper's pruning step as an object your own training loop drives.

>>> pruner = fxtaylor.Pruner(model, example, target_latency=0.5, optimizer=opt)  # doctest: +SKIP
>>> while not pruner.done:                                                        # doctest: +SKIP
...     with pruner.observe():            # your training steps: AMP, schedulers, any loss
...         for _ in range(30):
...             train_step(model, next(batches))
...     pruner.step()                     # rank globally, cut, re-measure

:func:`fxtaylor.prune` is this plus fine-tuning, evaluation, checkpoints and a report.

A step ranks every prunable map (the criterion observed since the last step), picks chunks
with :func:`fxtaylor.pruner.select.select` until the resource is *predicted* to fall by the
step's share, and removes them through the channel graph (the optimizer's state follows). The
target's resource (:data:`fxtaylor.cost.RESOURCES`) says how a cut is checked: a counted one
(FLOPs, bytes, peak memory) is counted again after the cut, and the step re-selects while it
stopped short; for a measured one (latency) the cut is first made on a copy and measured
against the model as it is, side by side: a cut that made the model slower (beyond the
measurement's noise) is never applied — its groups are set aside for this step and the next
candidates are tried. ``done`` is decided by the count or the measurement, never by prediction.
"""
from __future__ import annotations

import copy
import inspect
import math
import statistics
from typing import Any, Callable, Iterable, Sequence

import torch
import torch.nn as nn

from .. import distributed
from ..cost import RESOURCES, CostModel
from ..cost.latency_cost import ROUNDS
from ..errors import FxTaylorError
from ..graph import ChannelGraph, selection, trace
from ..graph.channel_graph import as_selection
from ..importance import GraphImportance, TaylorImportance
from ..importance.base import DEFAULT_COST
from . import inputs
from .options import CRITERIA, Schedule, Target, check_ranking, split_options
from .select import Cut, cut, minimum, predict_after, select

MAPS_FRACTION = 0.01  # default maps per prune: 1 % of the prunable maps (see docs/usage.md)
REPORT_S = 0.5  # seconds of timing per model for the before/after latency a run reports
ATTEMPTS = 5  # cuts measured per step of a measured resource before it gives up: sizes ×1, ×1 elsewhere, ×2, ×4, ×8


def _check(model: Any, *, deployment: Any, cost: Any, optimizer: Any, graph: Any, reference: Any, measure_fn: Any,
           loss_reduction: Any, state: Any) -> None:
    """The constructor's arguments, before the model is run, traced or measured."""
    from ..examples import check_model
    from ..latency import Deployment

    check_model(model)
    inputs.check_model(model)  # one device, finite weights
    if deployment is not None and not isinstance(deployment, Deployment):
        raise FxTaylorError(f"deployment must be a fxtaylor.Deployment, got {type(deployment).__name__}")
    if cost is not None and not isinstance(cost, CostModel):
        raise FxTaylorError(f"cost must be a cost model (a fxtaylor.cost.CostModel: {', '.join(c.__name__ for c in RESOURCES.values())}), "
                            f"got {type(cost).__name__}")
    if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
        raise FxTaylorError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
    if graph is not None and not (isinstance(graph, ChannelGraph) and graph.model is model):
        raise FxTaylorError("graph must be the ChannelGraph of this model (fxtaylor.trace(model, ...)), got "
                            + ("the graph of another model" if isinstance(graph, ChannelGraph) else type(graph).__name__))
    if reference is not None and not isinstance(reference, nn.Module):
        raise FxTaylorError(f"reference must be the dense model (a torch.nn.Module), got {type(reference).__name__}")
    if measure_fn is not None and not callable(measure_fn):
        raise FxTaylorError(f"measure_fn must be a function measure_fn(models) -> [Timing], got {type(measure_fn).__name__}")
    if loss_reduction not in ("mean", "sum"):
        raise FxTaylorError(f"loss_reduction must be 'mean' or 'sum', got {loss_reduction!r}")
    if state is not None and not isinstance(state, dict):
        raise FxTaylorError(f"state must be a dict (Pruner.state_dict()), got {type(state).__name__}")


class Pruner:
    """Prunes ``model`` (in place) towards a :class:`Target` one :meth:`step` at a time.

    ``criterion``: ``"taylor"`` (the paper's) or a baseline name, or a factory
    ``f(model, example_inputs, normalize=, flops_reg=, graph=, cost=) -> GraphImportance``.
    ``deployment`` (:class:`fxtaylor.latency.Deployment`) says where latency is measured: for
    a latency target, and for the before/after latency every run reports. ``measure_fn(models)
    -> [Timing]`` replaces the real measurement (tests inject one to drive the control logic).
    ``reference``: the dense model latency is measured against (default: a copy taken now).
    ``cost``: the model that predicts the target's resource (default: the resource's own,
    ``RESOURCES[name].for_run(deployment)`` — for latency its tables built or read from the
    cache) — e.g. a ``LatencyCost(table=LatencyModel.load(...))`` measured on another machine.
    """

    def __init__(
        self,
        model: nn.Module,
        example_inputs: Any,
        *,
        target: Target | None = None,
        schedule: Schedule | None = None,
        deployment: Any = None,
        cost: CostModel | None = None,
        criterion: str | Callable[..., GraphImportance] = "taylor",
        normalize: str | None = "l2",
        flops_reg: float = 0.0,
        optimizer: torch.optim.Optimizer | None = None,
        ignored_layers: Iterable[str] = (),
        leaf_modules: Iterable[str] = (),
        exact: bool = True,
        graph: ChannelGraph | None = None,
        reference: nn.Module | None = None,
        measure_fn: Callable[[Sequence[nn.Module]], list] | None = None,
        loss_reduction: str = "mean",
        progress: bool = True,
        state: dict | None = None,
        **options: Any,
    ):
        from ..latency import Deployment

        _check(model, deployment=deployment, cost=cost, optimizer=optimizer, graph=graph, reference=reference,
               measure_fn=measure_fn, loss_reduction=loss_reduction, state=state)
        self.target, self.schedule = split_options(target, schedule, options)
        check_ranking(criterion, normalize, flops_reg)
        if cost is not None and cost.measured_elsewhere is not None:
            self.deployment = cost.measured_elsewhere  # not resolvable here
        else:
            self.deployment = (deployment or Deployment()).resolved(model)  # bad dtype/device: fails before anything
        self.trace_kwargs = {"ignored_layers": as_selection(ignored_layers, "ignored_layers"),
                             "leaf_modules": as_selection(leaf_modules, "leaf_modules"), "exact": exact}
        if not isinstance(exact, bool):
            raise FxTaylorError(f"exact must be True or False, got {exact!r}")
        if graph is not None and graph.exact != exact:
            raise FxTaylorError(f"graph was traced with exact={graph.exact}, but exact={exact} was asked for")
        if graph is None:
            # names the model has, before it runs
            selection.resolve(model, self.trace_kwargs["ignored_layers"], self.trace_kwargs["leaf_modules"])
        # model(*x), else model(x): decided once by running the model (tracing runs on meta tensors
        # only); every later call (trace, criterion, costs, timing) uses the same arguments
        example_args = inputs.example(model, example_inputs, graph=graph)
        self.model, self.example, self.optimizer = model, example_args, optimizer
        if graph is None:
            graph = trace(model, example_args, **self.trace_kwargs)
        self._x = example_args  # measure() times a lone tensor at the deployment's batch size
        self.progress = progress
        # the target's resource says how a cut is checked and when it is done; the cost model
        # predicts it (a user's own model of the same resource, or the resource's default)
        self.resource = kind = RESOURCES[self.target.resource]
        if cost is not None and cost.name != kind.name:
            raise FxTaylorError(f"a {cost.name} cost model cannot reach a {self.target.resource} target")
        self.cost: CostModel = cost if cost is not None else kind.for_run(self.deployment, progress=progress)
        if self.cost.measured_elsewhere is not None:
            self.cost.sync(graph, example_args)  # its tables stand in for the device: they know this model's layers
        # how a cut of a measured resource is checked: injected (tests drive the control logic),
        # else the resource's own side-by-side measurement
        self._check = measure_fn or self.cost.measure
        self._measure = measure_fn  # the before/after latency every run reports (None: measured for real)
        factory = CRITERIA[criterion] if isinstance(criterion, str) else criterion
        kwargs = {"normalize": normalize, "flops_reg": flops_reg, "graph": graph}
        if _accepts(factory, "cost"):  # factories written before cost models existed still work (FLOPs)
            # the criterion's default is its own FLOPs count, which every run reports: handing it
            # a second FLOPs model would count every architecture twice
            kwargs["cost"] = None if (cost is None and kind is DEFAULT_COST) else self.cost
        elif kind is not DEFAULT_COST and flops_reg:  # the criterion would regularise by its default, FLOPs
            raise FxTaylorError(f"this criterion factory takes no cost= argument, so λ cannot regularise by {kind.label}")
        if factory is TaylorImportance:
            kwargs["loss_reduction"] = loss_reduction
        self.imp: GraphImportance = factory(model, example_args, **kwargs)
        if cost is None and isinstance(getattr(self.imp, "cost", None), kind):
            self.cost = self.imp.cost  # a factory that keeps its own model of this resource: one count, the one it ranks by
        self.selection = self.schedule.selection_for(self.target)
        self.reference = reference
        self.rejected = 0  # cuts measured slower and not applied, over the run
        if state is not None:
            self.load_state_dict(state)
        else:
            self._start()

    # -- setup -------------------------------------------------------------------------------

    def _start(self) -> None:
        """Dense numbers and the reachability check; nothing is modified."""
        graph = self.imp.graph
        groups = graph.prunable_groups
        if not groups:
            reasons = list(dict.fromkeys(g.frozen[0] for g in graph.groups if g.frozen))
            raise FxTaylorError("nothing to prune: every channel group is frozen or at its minimum"
                                + (f" ({'; '.join(reasons[:3])}{'; ...' if len(reasons) > 3 else ''})" if reasons else ""))
        if not graph.exact and not any(g.inexact for g in graph.groups):
            raise FxTaylorError("exact=False changes nothing on this model: no channel group is tied through a "
                                "normaliser's statistics (layer norm or softmax over channels, weight standardisation); "
                                "every prunable channel already prunes exactly, so drop the option")
        self.k = self.schedule.maps_per_prune or max(1, math.ceil(MAPS_FRACTION * sum(g.num_prunable for g in groups)))
        self.flops0 = self.imp.total_flops()  # every run reports FLOPs, whatever it spends
        cost = self.cost.sync(graph, self.example)
        if self.resource.measured:
            if self.reference is None:
                self.reference = copy.deepcopy(self.model)
            self.dense = self._check([self.reference])[0].median_ms
            self.predicted0 = cost.total()
        else:
            self.dense = float(cost.total())
        self.now = self.dense  # the resource of the model as it is: counted, or measured side by side
        least = minimum(self.imp, cost)
        base = cost.total()
        self.reachable = 1 - least / base if base > 0 else 0.0  # the most of the resource pruning can remove
        if least > self.target.fraction * base:
            r = self.resource
            what = f"predicted {r.label}" if r.measured else r.label
            where = ["frozen groups", "layers that are not pruned", *([r.unremovable] if r.unremovable else [])]
            rest = ", ".join(where[:-1]) + (", or " if len(where) > 2 else " or ") + where[-1]
            raise FxTaylorError(
                f"target_{self.target.resource}={self.target.fraction} cannot be reached: pruning every prunable channel "
                f"leaves {least / base:.2%} of the {what} (the rest is in {rest})")

    def state_dict(self) -> dict:
        """What resuming needs besides the model and the criterion."""
        return {"k": self.k, "flops0": self.flops0, "dense": self.dense, "now": self.now, "rejected": self.rejected,
                "predicted0": getattr(self, "predicted0", None), "reachable": self.reachable}

    def load_state_dict(self, s: dict) -> None:
        self.k, self.flops0, self.dense, self.now, self.rejected = s["k"], s["flops0"], s["dense"], s["now"], s["rejected"]
        self.predicted0, self.reachable = s.get("predicted0"), s.get("reachable")
        if self.resource.measured and self.reference is None:
            raise FxTaylorError(f"resuming a run that measures {self.resource.label} needs the dense model as reference=")
        self.cost.sync(self.imp.graph, self.example)

    # -- what the user's loop asks -----------------------------------------------------------

    def observe(self):
        """Context manager: the criterion watches the training steps run inside it."""
        return self.imp.observe()

    @property
    def graph(self) -> ChannelGraph:
        return self.imp.graph

    @property
    def ratio(self) -> float:
        """The resource now ÷ the dense model's: counted (FLOPs, bytes), or measured side by
        side (latency)."""
        if not self.resource.measured:
            self.now = float(self.cost.sync(self.imp.graph, self.example).total())
        return self.now / self.dense

    @property
    def done(self) -> bool:
        return self.resource.done(self.ratio, self.target.fraction, self.target.tolerance)

    def step(self) -> list[int]:
        """One pruning step; returns the removed units (global ids; empty: nothing could go).
        Under torch.distributed a collective call: every rank, same point in its loop."""
        self.imp.all_reduce()  # every rank ranks the union of the examples
        gone = self._step_measured() if self.resource.measured else self._step_counted()
        self.imp.reset()
        # identical scores and a deterministic ranking make this hold; checked, never assumed
        distributed.check_same("channels removed", gone)
        return gone

    # -- a counted resource (FLOPs, bytes): cut, count again ---------------------------------

    def _step_counted(self) -> list[int]:
        t, s = self.target, self.schedule
        goal = t.fraction * self.dense
        if s.per_prune:
            now = self.cost.sync(self.imp.graph, self.example).total()
            step_goal, k = max(goal, now - s.per_prune * self.dense), None
        else:
            step_goal, k = goal, self.k
        gone = cut(self.imp, step_goal, k, t.tolerance, self.optimizer, s.round_to, self.cost, self.selection)
        self.now = float(self.cost.sync(self.imp.graph, self.example).total())
        return gone

    # -- a measured resource (latency): try on a copy, measure side by side -------------------

    def _step_measured(self) -> list[int]:
        """Predict, try on a copy, measure, apply only what did not make the model worse.
        (Written in milliseconds, the one measured resource so far; nothing here depends on it.)"""
        t, s = self.target, self.schedule
        cost = self.cost.sync(self.imp.graph, self.example)
        predicted_now = cost.total()
        scale = self.now / predicted_now if predicted_now > 0 else 1.0  # the model's bias, as measured now
        goal_ms = t.fraction * self.dense
        step_ms = max(goal_ms, self.now - s.per_prune * self.dense) if s.per_prune else goal_ms
        k = None if s.per_prune else self.k
        banned: set[int] = set()
        coarsen, recalibrated = 1, False
        goal_pred = step_ms / scale  # the step's goal in the cost model's unit
        for attempt in range(ATTEMPTS):
            cuts = self._select(goal_pred, k, banned, coarsen)
            if not cuts:
                if not banned:
                    return []
                banned, coarsen = set(), coarsen * 2
                continue
            trial = copy.deepcopy(self.imp.graph)  # the copy carries its own model
            trial.prune_many([(trial.groups[c.group.index], c.channels) for c in cuts])
            ref_t, now_t, trial_t = self._check([self.reference, self.model, trial.model])
            # ratios within each interleaved round: a machine that gets busier moves all three alike
            now_ms = compare(ref_t, now_t)[0] * self.dense
            trial_ms = compare(ref_t, trial_t)[0] * self.dense
            slower, margin = compare(now_t, trial_t)
            ok = distributed.broadcast(slower <= 1 + margin)  # rank 0 decides for all
            units = torch.cat([c.group.units[c.channels] for c in cuts])
            past = distributed.broadcast(trial_ms < goal_ms * (1 - t.tolerance) - margin * now_ms)
            if ok and past and not recalibrated and attempt < ATTEMPTS - 1:
                # the cut overshoots the target: a smaller cut is chosen (once per step), its goal
                # read off the line through the two measured points (the model now, the cut).
                # One scale factor through the cut alone failed where latency falls faster than
                # the prediction (a fixed part of the prediction that pruning removes): the
                # goal then read as already met, nothing was selected, and the run stopped
                # with "nothing left to prune" far from its target.
                pred_now, pred_cut = cost.total(), predict_after(cost, units)
                if now_ms > trial_ms and pred_now > pred_cut:
                    goal_pred = pred_cut + (step_ms - trial_ms) * (pred_now - pred_cut) / (now_ms - trial_ms)
                else:
                    goal_pred = step_ms * pred_cut / max(trial_ms, 1e-12)
                self.now, recalibrated = distributed.broadcast(now_ms), True
                continue
            if ok:
                self.imp.graph.prune_many([(c.group, c.channels) for c in cuts], optimizer=self.optimizer)
                self.now = distributed.broadcast(trial_ms)
                return units.tolist()
            self.rejected += 1
            self.now = distributed.broadcast(now_ms)
            if attempt == 0:  # the same size in other groups
                banned |= {c.group.index for c in cuts}
            else:  # then coarser chunks everywhere
                banned, coarsen = set(), coarsen * 2
        return []

    def _select(self, goal: float, k: int | None, banned: set[int], coarsen: int = 1) -> list[Cut]:
        """Chunks (``coarsen`` times the usual size) until the prediction reaches ``goal`` (or
        ``k`` units), groups in ``banned`` left out (their cut was measured slower this step)."""
        imp, t, r = self.imp, self.target, self.schedule.round_to
        k = k if k is not None else int(imp.graph.group_of_unit.numel())
        ex = frozenset(banned)
        cuts = select(imp, k, goal, goal * (1 - t.tolerance), r, self.cost, self.selection, ex, coarsen)
        # nothing fits the band: the smallest chunk, while the model is predicted above the goal at
        # all (a model within the tolerance above its target has not reached it: the run went on
        # to "nothing left to prune" there)
        if not cuts and self.cost.total() > goal:
            cuts = select(imp, 1, goal, -math.inf, r, self.cost, self.selection, ex, coarsen)
        return cuts

    def measure(self, models: Sequence[nn.Module]) -> list:
        """Latency of ``models`` as this pruner judges it — every run reports it, whatever its
        target: measured on the deployment side by side (longer than a step's check), injected
        (``measure_fn``), or predicted from latency tables measured elsewhere."""
        if self._measure is not None:
            return self._measure(models)
        if self.cost.measured_elsewhere is not None:
            return self.cost.measure(models)
        from ..latency import measure

        return measure(list(models), self._x, self.deployment, min_run_time=REPORT_S, rounds=ROUNDS)


def _accepts(fn: Callable, name: str) -> bool:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == name or p.kind is inspect.Parameter.VAR_KEYWORD for p in params)


def compare(a: Any, b: Any) -> tuple[float, float]:
    """``b``'s latency ÷ ``a``'s, measured in the same call, and the noise on that ratio.

    The ratio is the median over interleaved rounds of round(b) ÷ round(a), so load that
    changes between rounds cancels; the noise is the half-width of the median's 95 % confidence
    interval (McGill et al.'s notch: 1.57 · IQR / √n). Without per-round times (an injected
    measurement), the ratio of medians and the larger relative IQR.
    """
    ra, rb = getattr(a, "rounds_ms", ()), getattr(b, "rounds_ms", ())
    if len(ra) >= 3 and len(ra) == len(rb):
        r = sorted(y / x for x, y in zip(ra, rb))
        q = statistics.quantiles(r, n=4, method="inclusive")
        return statistics.median(r), 1.57 * (q[2] - q[0]) / math.sqrt(len(r))
    from ..latency import noise

    return b.median_ms / a.median_ms, max(noise(a), noise(b))
