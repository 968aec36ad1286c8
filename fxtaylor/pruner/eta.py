"""The run's remaining time, predicted once its first pruning steps are measured (the line
``fxtaylor.prune`` prints, the progress bar's estimate, ``result.timings["eta"]``)."""
from __future__ import annotations

import math

ETA_AFTER = 3
"""Pruning steps measured before the run's remaining time is predicted (and the window later
predictions use): the first step carries one-off costs (the loader's first iterator, first
allocations), so one or two steps alone mislead."""


class Eta:
    """The run's remaining time, predicted from its measured pruning steps.

    Steps left: the resource still to remove (to where the run stops) ÷ the mean share of the
    dense resource a step removed. Time: each step's training updates at the measured time per
    update per FLOP, times the FLOPs the model will have then (extrapolated from the FLOPs a
    step removed: a smaller model trains faster), plus the rest of a step (the cut, the count
    or measurement, the evaluation, the checkpoint) as measured, plus ``final_updates`` at the
    final FLOPs. Steps are still not equal — the paper's fixed number of maps removes less of
    the resource as the model narrows; a measured cut may be tried several times; an epoch
    boundary restarts the loader — so a prediction says which steps it is from, and each later
    one (the progress bar's) is from the latest :data:`ETA_AFTER` steps. The final evaluation
    and latency measurement are not in it."""

    def __init__(self, stop_at: float, updates: int, final_updates: int, start: float):
        self.stop_at, self.n, self.final_updates, self.last = stop_at, updates, final_updates, start
        # (step, wall seconds, of which updates, share of the dense resource removed, FLOPs while updating, FLOPs after)
        self.steps: list[tuple[int, float, float, float, float, float]] = []
        self.update_s = 0.0  # the current step's updates
        self.first: dict | None = None  # the first prediction, made once ETA_AFTER steps were measured

    def updated(self, seconds: float) -> None:
        self.update_s = seconds

    def step(self, step: int, removed: float, ratio: float, flops: tuple[float, float], now: float) -> tuple[dict | None, dict | None]:
        """Record a finished step (``flops``: the model's while it trained, and after the cut);
        the prediction from the latest steps (None: too few, or no progress to extrapolate) and,
        the first time there is one, that prediction again."""
        self.steps.append((step, now - self.last, self.update_s, removed, *flops))
        self.last, self.update_s = now, 0.0
        pred = self.predict(ratio) if len(self.steps) >= ETA_AFTER else None
        if pred is None or self.first is not None:
            return pred, None
        self.first = {"at_s": now, **pred}
        return pred, pred

    def predict(self, ratio: float) -> dict | None:
        w = self.steps[-ETA_AFTER:]
        mean = lambda i: sum(s[i] for s in w) / len(w)  # noqa: E731
        per_step = mean(3)
        if ratio <= self.stop_at or per_step <= 0:  # done, or a measured resource that did not fall: no line to extend
            return None
        left = max(1, math.ceil((ratio - self.stop_at) / per_step - 1e-9))  # 1e-9: 0.35 / 0.05 is 7.000000000000001
        flops_trained = sum(s[4] for s in w)
        per_flop = sum(s[2] for s in w) / flops_trained if flops_trained > 0 else 0.0  # update seconds per FLOP
        rest_s = max(0.0, mean(1) - mean(2))
        now_flops, drop = w[-1][5], max(0.0, (w[0][4] - w[-1][5]) / len(w))
        future = [max(0.0, now_flops - j * drop) for j in range(left + 1)]  # while each step left trains; at the end
        train_s = per_flop * sum(future[:-1])
        final_s = per_flop * future[-1] * self.final_updates / self.n
        return {"after_step": w[-1][0], "from_steps": [w[0][0], w[-1][0]], "steps_left": left,
                "seconds_left": round(left * rest_s + train_s + final_s, 3), "step_s": round(mean(1), 3),
                "per_step": per_step, "final_updates": self.final_updates, "final_updates_s": round(final_s, 3)}

    def outcome(self, history: list[dict], now: float) -> dict:
        """The first prediction and what followed it: the steps taken after it and the seconds
        to the end of the final updates (what it predicts)."""
        first = dict(self.first)
        at = first.pop("at_s")
        after = [h for h in history if isinstance(h.get("step"), int) and h["step"] > first["after_step"]]
        return {**first, "actual_steps_left": len(after), "actual_seconds_left": round(now - at, 3)}


def about(seconds: float) -> str:
    """``7.4`` → ``"7 s"``, ``130`` → ``"2 min 10 s"``, ``7380`` → ``"2 h 03 min"``: a prediction, so whole seconds."""
    from ..report import format_duration

    return f"{max(1, round(seconds))} s" if seconds < 59.5 else format_duration(max(60.0, seconds))


def steps_text(n: int, more: str = "") -> str:
    return f"{n} {more}step{'s' if n != 1 else ''}"


def eta_line(pred: dict, label: str) -> str:
    """``≈ 7 more steps, about 1 min 10 s (from steps 1–3: 5.0 % of the FLOPs and 10.0 s each;
    updates scaled to the FLOPs left)``: what it predicts, and what from."""
    a, b = pred["from_steps"]
    final = f" with the {pred['final_updates']} final updates" if pred["final_updates"] else ""
    return (f"≈ {steps_text(pred['steps_left'], 'more ')}, about {about(pred['seconds_left'])}{final} "
            f"(from steps {a}–{b}: {100 * pred['per_step']:.1f} % of the {label} and {pred['step_s']:.1f} s each; "
            "updates scaled to the FLOPs left)")
