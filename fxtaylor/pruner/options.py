"""The settings of a pruning run as small validated dataclasses: what to reach (:class:`Target`)
and how fast to go (:class:`Schedule`); where the model will run is
:class:`fxtaylor.latency.Deployment`. Each checks itself on construction, so a bad value fails
with one line before anything is touched."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from ..errors import FxTaylorError

SELECTIONS = ("rank", "knapsack")


def _fraction(name: str, v: Any, of: str = "") -> None:
    if v is not None and not (isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v < 1):
        raise FxTaylorError(f"{name} must be a fraction{' of ' + of if of else ''} in (0, 1), got {v!r}")


def _count(name: str, v: Any, least: int, none_ok: bool = False) -> None:
    if v is None and none_ok:
        return
    if isinstance(v, bool) or not isinstance(v, int) or v < least:
        raise FxTaylorError(f"{name} must be an integer >= {least}{' or None' if none_ok else ''}, got {v!r}")


@dataclass(frozen=True)
class Target:
    """What the run must reach: exactly one of ``flops`` (fraction of the dense model's FLOPs,
    counted by fvcore) or ``latency`` (fraction of its latency, *measured* as deployed).

    A FLOPs run ends with FLOPs in ``[flops·(1 − tolerance), flops]`` × the dense count; a
    latency run ends once the measured latency is at most ``latency·(1 + tolerance)`` × the
    dense model's, measured side by side in the same run.
    """

    flops: float | None = None
    latency: float | None = None
    tolerance: float = 0.01

    def __post_init__(self) -> None:
        if (self.flops is None) == (self.latency is None):
            raise FxTaylorError("give exactly one target: target_flops or target_latency (a fraction in (0, 1))")
        _fraction("target_flops", self.flops, "the original FLOPs")
        _fraction("target_latency", self.latency, "the dense model's measured latency")
        if not (isinstance(self.tolerance, (int, float)) and 0 <= self.tolerance < 1):
            raise FxTaylorError(f"tolerance must be in [0, 1), got {self.tolerance!r}")

    @property
    def resource(self) -> str:
        return "flops" if self.flops is not None else "latency"

    @property
    def fraction(self) -> float:
        return self.flops if self.flops is not None else self.latency


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
    """

    updates_between_prunes: int = 30
    maps_per_prune: int | None = None
    per_prune: float | None = None
    round_to: int | None = None
    selection: str | None = None
    eval_every: int = 1
    final_updates: int = 0
    min_accuracy: float | None = None

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

    def selection_for(self, target: Target) -> str:
        """The order in force: the one given, else the paper's rank — on digits at equal measured
        latency the knapsack order kept 36.0 % accuracy after pruning against rank's 86.9 %, and
        97.0 % after recovery against 97.4 % (benchmarks/latency_quality.py, 3 seeds)."""
        return self.selection or "rank"


ALIASES = {"flops_per_prune": "per_prune", "latency_per_prune": "per_prune"}


def split_options(target: Target | None, schedule: Schedule | None, flat: dict[str, Any]) -> tuple[Target, Schedule]:
    """``prune(..., target_flops=0.5, updates_between_prunes=10)`` as the dataclasses: flat
    keywords fill the fields of the same name (``target_*`` and ``tolerance`` the target's)."""
    t_fields = {"target_flops": "flops", "target_latency": "latency", "tolerance": "tolerance"}
    s_fields = {f.name for f in dataclasses.fields(Schedule)}
    t_kw, s_kw = {}, {}
    for k, v in flat.items():
        if k in t_fields:
            if v is not None:
                t_kw[t_fields[k]] = v
        elif ALIASES.get(k, k) in s_fields:
            s_kw[ALIASES.get(k, k)] = v
        else:
            raise FxTaylorError(f"unknown option {k!r}")
    if target is not None and (t_kw.keys() - {"tolerance"}):
        raise FxTaylorError("give the target once: target=Target(...) or target_flops/target_latency")
    target = dataclasses.replace(target, **t_kw) if target is not None else Target(**t_kw)
    schedule = dataclasses.replace(schedule or Schedule(), **s_kw)
    return target, schedule
