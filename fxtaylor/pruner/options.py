"""The settings of a pruning run as small validated dataclasses: what to reach (:class:`Target`)
and how fast to go (:class:`Schedule`); where the model will run is
:class:`fxtaylor.latency.Deployment`. Each checks itself on construction, so a bad value fails
with one line before anything is touched."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from ..cost import RESOURCES
from ..errors import FxTaylorError, options_class
from ..importance import (
    ActivationMeanImportance, ActivationStdImportance, RandomImportance, TaylorImportance, WeightImportance,
)
from ..importance.base import check_flops_reg, check_normalize

SELECTIONS = ("rank", "knapsack")
QUICK_PER_PRUNE = 0.05  # Schedule.quick(): 5 % of the dense resource per step, as the quality studies step
QUICK_UPDATES = 10  # Schedule.quick(): observed updates per step (the command's digits default)
QUICK_FINAL_UPDATES = 50  # Schedule.quick(): recovery after its last, larger cut (five steps' updates)
CRITERIA = {
    "taylor": TaylorImportance, "weight": WeightImportance, "activation_mean": ActivationMeanImportance,
    "activation_std": ActivationStdImportance, "random": RandomImportance,
}
"""The criteria a name selects: the paper's and the baselines it is compared with."""


def check_ranking(criterion: Any, normalize: Any, flops_reg: Any) -> None:
    """How maps are ranked — ``criterion`` (a name of :data:`CRITERIA` or a factory),
    ``normalize``, ``flops_reg`` (λ) — checked once for :class:`~fxtaylor.Pruner`,
    :func:`fxtaylor.prune` and the command alike."""
    if isinstance(criterion, str):
        if criterion not in CRITERIA:
            raise FxTaylorError(f"unknown criterion {criterion!r}; choose one of {', '.join(CRITERIA)} or pass a GraphImportance factory")
    elif not callable(criterion):
        raise FxTaylorError(f"criterion must be a name or a GraphImportance factory, got {type(criterion).__name__}")
    check_normalize(normalize)
    check_flops_reg(flops_reg)


def _fraction(name: str, v: Any, of: str = "") -> None:
    if v is not None and not (isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v < 1):
        raise FxTaylorError(f"{name} must be a fraction{' of ' + of if of else ''} in (0, 1), got {v!r}")


def _count(name: str, v: Any, least: int, none_ok: bool = False) -> None:
    if v is None and none_ok:
        return
    if isinstance(v, bool) or not isinstance(v, int) or v < least:
        raise FxTaylorError(f"{name} must be an integer >= {least}{' or None' if none_ok else ''}, got {v!r}")


@options_class  # an unknown or missing option is one FxTaylorError line, not a TypeError
@dataclass(frozen=True)
class Target:
    """What the run must reach: ``fraction`` of the dense model's ``resource``, one of
    :data:`fxtaylor.cost.RESOURCES` — ``"flops"`` (counted by fvcore), ``"latency"``
    (*measured* as deployed), ``"params"`` (bytes of the saved state dict), ``"memory"`` (peak
    activation memory at the deployment's batch size) — e.g. ``Target("latency", 0.6)``.

    A counted resource (FLOPs, bytes, memory) ends in ``[fraction·(1 − tolerance), fraction]``
    × the dense count; a measured one (latency) once it is at most ``fraction·(1 +
    tolerance)`` × the dense model's, measured side by side in the same run.
    """

    # metadata["help"]: the field's line in docs/usage.md's table (generated: tests/doc_tables.py)
    resource: str = field(metadata={"help": "what to reduce: 'flops', 'latency', 'params' or 'memory' (fxtaylor.cost.RESOURCES)"})
    fraction: float = field(metadata={"help": "the fraction of the dense model's resource to keep, in (0, 1)"})
    tolerance: float = field(default=0.01, metadata={
        "help": "a counted resource ends in [fraction·(1 − tolerance), fraction]; a measured one at most fraction·(1 + tolerance)"})

    def __post_init__(self) -> None:
        if self.resource not in RESOURCES:
            raise FxTaylorError(f"unknown resource {self.resource!r}: choose one of {', '.join(RESOURCES)}")
        _fraction(f"target_{self.resource}", self.fraction, RESOURCES[self.resource].of)
        if isinstance(self.tolerance, bool) or not (isinstance(self.tolerance, (int, float)) and 0 <= self.tolerance < 1):
            raise FxTaylorError(f"tolerance must be in [0, 1), got {self.tolerance!r}")


@options_class  # an unknown or missing option is one FxTaylorError line, not a TypeError
@dataclass(frozen=True)
class Schedule:
    """How the loop gets there (Molchanov et al. §2: prune, fine-tune, repeat).

    ``updates_between_prunes`` minibatch updates (paper: 30) are observed before each pruning
    step, which removes ``maps_per_prune`` maps (None: 1 % of the prunable maps) or, with
    ``per_prune``, as many as remove that fraction of the dense model's resource (equal steps
    for every criterion). ``round_to`` keeps group widths at multiples of N (None: the multiple
    the latency tables measured as faster; 1 for FLOPs). ``selection``: ``"rank"`` (the
    paper's: lowest score first) or ``"knapsack"`` (lowest importance per resource saved);
    None is ``"rank"``, which kept more accuracy at equal measured latency (docs/latency.md).
    ``eval_every`` steps accuracy is measured; with ``min_accuracy`` a step that falls below it
    is undone and the run stops. ``final_updates`` fine-tune after the last step.
    The defaults are the paper's schedule; :meth:`quick` is a faster one for a first look.
    """

    # metadata["help"]: the field's line in docs/usage.md's table (generated: tests/doc_tables.py)
    updates_between_prunes: int = field(default=30, metadata={
        "help": "minibatch updates the criterion observes before each pruning step (the paper's 30)"})
    maps_per_prune: int | None = field(default=None, metadata={"help": "maps removed per step; None: 1 % of the prunable maps"})
    per_prune: float | None = field(default=None, metadata={
        "help": "instead: remove this fraction of the dense model's target resource per step (flops_per_prune=, latency_per_prune=, ...)"})
    round_to: int | None = field(default=None, metadata={
        "help": "keep group widths multiples of this; None: 1 for counted resources, the multiple the latency tables prefer"})
    selection: str | None = field(default=None, metadata={
        "help": "'rank' (the paper's: lowest score first) or 'knapsack' (lowest importance per resource saved); None: the resource's"})
    eval_every: int = field(default=1, metadata={"help": "measure accuracy every this many steps"})
    final_updates: int = field(default=0, metadata={"help": "fine-tuning updates after the last step"})
    min_accuracy: float | None = field(default=None, metadata={
        "help": "a step whose accuracy falls below this fraction is undone and the run stops"})

    def __post_init__(self) -> None:
        _count("updates_between_prunes", self.updates_between_prunes, 1)
        _count("maps_per_prune", self.maps_per_prune, 1, none_ok=True)
        _fraction("flops_per_prune (per_prune)", self.per_prune)
        if self.per_prune is not None and self.maps_per_prune is not None:
            raise FxTaylorError("give maps_per_prune or a per-step fraction (flops_per_prune), not both")
        _count("round_to", self.round_to, 1, none_ok=True)
        if self.selection is not None and self.selection not in SELECTIONS:
            raise FxTaylorError(f"selection must be one of {', '.join(SELECTIONS)}, got {self.selection!r}")
        _count("eval_every", self.eval_every, 1)
        _count("final_updates", self.final_updates, 0)
        if self.min_accuracy is not None and not (isinstance(self.min_accuracy, (int, float)) and 0 <= self.min_accuracy <= 1):
            raise FxTaylorError(f"min_accuracy is a fraction in [0, 1], got {self.min_accuracy!r}")

    @classmethod
    def quick(cls, **changes: Any) -> Schedule:
        """A fast first look (``fxtaylor prune --quick``): fewer, larger steps. Each step
        removes ``QUICK_PER_PRUNE`` = 5 % of the dense model's target resource (``per_prune``:
        10 steps to half of it, whatever the model; the paper's 1 % of the maps took 54 on the
        digits ResNet-18) after ``QUICK_UPDATES`` = 10 observed updates (the paper's 30; the
        command already uses 10 on digits), then ``QUICK_FINAL_UPDATES`` = 50 fine-tuning
        updates: without them the reported accuracy is the one right after the last 5 % cut,
        the low point of the run (digits ResNet-18 at half its FLOPs: 84.6 % without them,
        97.6 % with them; 97.8 % with the paper's schedule, in 5.5× the time). It trades
        accuracy for time: the criterion ranks after fewer updates, each cut is larger, and the
        model fine-tunes less between cuts (both schedules measured:
        benchmarks/results/schedule_times.json). Use it to see the shape and rough cost of a
        run; prune for keeps with the default, the paper's schedule.

        ``changes`` override fields as :meth:`override` does: ``Schedule.quick(final_updates=0)``;
        ``maps_per_prune=`` replaces the per-step fraction."""
        return cls(updates_between_prunes=QUICK_UPDATES, per_prune=QUICK_PER_PRUNE,
                   final_updates=QUICK_FINAL_UPDATES).override(**changes)

    def override(self, **changes: Any) -> Schedule:
        """``dataclasses.replace``, but a step size given replaces the other kind:
        ``maps_per_prune=40`` on a schedule with ``per_prune`` drops the fraction, and the other
        way round (an explicit setting wins over a preset's; both at once is still an error)."""
        sizes = ("maps_per_prune", "per_prune")
        if sum(changes.get(k) is not None for k in sizes) == 1:
            changes = {**dict.fromkeys(sizes), **changes}
        return dataclasses.replace(self, **changes)

    def selection_for(self, target: Target) -> str:
        """The order in force: the one given, else the resource's — the paper's rank for FLOPs,
        latency and bytes (on digits at equal measured latency the knapsack order kept 36.0 %
        accuracy after pruning against rank's 86.9 %, and 97.0 % after recovery against 97.4 %:
        benchmarks/latency_quality.py, 3 seeds), the knapsack for peak memory, which a few
        tensors hold (docs/memory.md)."""
        return self.selection or RESOURCES[target.resource].selection


def aliases() -> dict[str, str]:
    """``flops_per_prune``, ``latency_per_prune``, ...: ``Schedule.per_prune`` by resource."""
    return {f"{name}_per_prune": "per_prune" for name in RESOURCES}


def target_names() -> list[str]:
    """``target_flops``, ``target_latency``, ...: one keyword per registered resource."""
    return [f"target_{name}" for name in RESOURCES]


def split_options(target: Target | None, schedule: Schedule | None, flat: dict[str, Any]) -> tuple[Target, Schedule]:
    """``prune(..., target_flops=0.5, updates_between_prunes=10)`` as the dataclasses: flat
    keywords fill the fields of the same name (``target_<resource>`` and ``tolerance`` the
    target's)."""
    s_fields, alias = {f.name for f in dataclasses.fields(Schedule)}, aliases()
    given, tolerance, s_kw = {}, None, {}
    for k, v in flat.items():
        if k in target_names():
            if v is not None:
                given[k[len("target_"):]] = v
        elif k == "tolerance":
            tolerance = v
        elif alias.get(k, k) in s_fields:
            s_kw[alias.get(k, k)] = v
        else:
            raise FxTaylorError(f"unknown option {k!r}")
    if target is not None and given:
        raise FxTaylorError(f"give the target once: target=Target(...) or one of {'/'.join(target_names())}")
    if target is None and len(given) != 1:
        raise FxTaylorError(f"give exactly one target: {', '.join(target_names())} (a fraction in (0, 1))"
                            + (f"; got {', '.join('target_' + k for k in given)}" if given else ""))
    if target is not None and not isinstance(target, Target):
        raise FxTaylorError(f"target must be a fxtaylor.Target, got {type(target).__name__}")
    extra = {} if tolerance is None else {"tolerance": tolerance}
    target = dataclasses.replace(target, **extra) if target is not None else Target(*next(iter(given.items())), **extra)
    schedule = (schedule or Schedule()).override(**s_kw)  # a keyword wins over the schedule's field
    return target, schedule
