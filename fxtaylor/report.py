"""The run report: what a pruning run leaves behind, as a JSON file, two plots and a text table.

A pruning run (``fxtaylor.prune``) builds a plain, JSON-able dict — the *report* — and hands it
to :func:`write`, which turns it into files in the run directory::

    run_dir/
        report.json            the dict itself (the contract below), written atomically
        accuracy_vs_flops.png  accuracy after each pruning step against the FLOPs left
        channels.png           output channels of every conv/linear, before and after

``fxtaylor report RUN_DIR`` (:func:`command`) reads it back, prints :func:`summary_table` and
redraws any plot that went missing.

The report dict (only ``history`` is required to *read* a report; the rest is shown when present):

``fxtaylor``        version that wrote it
``config``          free-form run settings; ``config["model"]`` (a name) titles the plots
``environment``     python / torch / ... versions, device, threads
``target_flops``    fraction of the original FLOPs to keep, e.g. 0.5 (or ``None``)
``target_latency``  fraction of the dense model's measured latency to keep (or ``None``)
``reached``, ``stop_reason``   whether the target was met, and why the loop stopped
``before``, ``after``          ``{"flops", "params", "accuracy", "latency_ms", "latency_iqr_ms"}``;
                    ``after`` also ``latency_ratio`` (per-round ratio to the dense model) and its
                    ``latency_ratio_noise`` (95 % half-width)
``speedup``         latency before / after, measured interleaved in the same run, on the
                    deployment ``config["deployment"]`` records (device, batch, dtype, format)
``history``         step 0 (unpruned), one record per pruning step, optionally ``"step": "final"``
                    after the final fine-tune; each ``{"step", "flops", "params", "accuracy",
                    "loss", "removed", "time_s"}``
``layers``          ``[{"name", "before", "after"}]`` output channels per conv/linear, model order
``model_file``      the saved pruned model, relative to the run directory
``timings``         ``{"finetune_s", "prune_s", "total_s"}``, any of them may be missing

Accuracies are fractions in [0, 1] (shown as %), FLOPs and parameters plain counts (one fused
multiply-add = one flop, as fvcore counts). Any value may be ``None`` (``null``): a run without
validation data has no accuracy, a run on a busy machine may skip latency.
"""
from __future__ import annotations

import io
import json
import math
import os
from pathlib import Path
from typing import Any

from .errors import FxTaylorError, WriteError, describe
from .cost import RESOURCES
from .files import atomic_write
from .flops import MISSING, flops_unit, format_flops
from .latency import deployment
from .latency.verdict import not_faster

REPORT_FILE = "report.json"
# Plot name → file name. The names are the keys write() returns and command() prints.
PLOT_FILES = {"accuracy_vs_flops": "accuracy_vs_flops.png", "channels": "channels.png"}

DPI = 100  # fixed, so a figure of w×h inches is always a (w·DPI)×(h·DPI) image
MAX_TICK_LABELS = 40  # more layer names than this on one axis overlap; show every k-th instead
MIN_ACCURACY_SPAN = 10.0
"""Fewest accuracy points the y axis spans. A validation set of a few hundred images moves by
a point or two between steps from noise alone (the digits default: 449 images, one image =
0.22 points; the run plotted in docs/usage.md wandered over 2.4 points at no trend, and filled
the whole height with it); at a 10-point span that is a quarter of the height, while a real
loss of a few points still shows."""


# --------------------------------------------------------------------------------------------
# Files: report.json written atomically, read back with one-line errors
# --------------------------------------------------------------------------------------------

def write(run_dir: str | os.PathLike, report: dict) -> dict[str, Path]:
    """Write ``report.json`` and both plots into ``run_dir`` (created if needed).

    The JSON goes first: it is the record of a run that may have taken hours, the plots can be
    redrawn from it (``fxtaylor report``). Every file is written atomically, so a crash or a full
    disk leaves either the previous file or the new one, never half of one.

    Returns the written paths by name: ``"report"``, ``"accuracy_vs_flops"``, ``"channels"``.
    """
    run_dir = Path(run_dir)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise WriteError(f"cannot write the report into {run_dir}: {e.strerror or e} ({e.filename or run_dir})") from e
    paths = {"report": run_dir / REPORT_FILE}
    # allow_nan=False: jsonable() already turned NaN/inf into None; if one slipped through we
    # want an error here, not a bare NaN that strict JSON readers (jq, JavaScript) reject.
    text = json.dumps(jsonable(report), indent=2, allow_nan=False) + "\n"
    atomic_write(paths["report"], text.encode("utf-8"))
    paths.update(write_plots(run_dir, report))
    return paths


def write_plots(run_dir: str | os.PathLike, report: dict, only: list[str] | None = None) -> dict[str, Path]:
    """Draw the plots named in ``only`` (default: all of ``PLOT_FILES``) into ``run_dir``."""
    run_dir = Path(run_dir)
    draw = {"accuracy_vs_flops": plot_accuracy_vs_flops, "channels": plot_channels}
    written = {}
    for name in PLOT_FILES if only is None else only:
        written[name] = run_dir / PLOT_FILES[name]
        draw[name](report, written[name])
    return written


def read(run_dir: str | os.PathLike) -> dict:
    """Load ``run_dir/report.json``; anything that is not a readable report is a FxTaylorError.

    The message is one line and names the path, since it is what the user typed wrong.
    """
    run_dir = Path(run_dir)
    if not run_dir.exists():
        raise FxTaylorError(f"run directory {run_dir} does not exist")
    if not run_dir.is_dir():
        raise FxTaylorError(f"{run_dir} is not a directory: pass the run directory that holds {REPORT_FILE}")
    path = run_dir / REPORT_FILE
    if not path.is_file():
        raise FxTaylorError(f"{path} not found: {run_dir} is not a fxtaylor run directory (or the run did not finish)")
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise FxTaylorError(f"{path} is not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})") from None
    except UnicodeDecodeError:
        raise FxTaylorError(f"{path} is not valid JSON (not UTF-8 text)") from None
    except OSError as e:
        raise FxTaylorError(f"cannot read {path}: {e.strerror or e}") from None
    if not isinstance(report, dict) or "history" not in report:
        raise FxTaylorError(f"{path} is not a fxtaylor report (no 'history' key)")
    if not isinstance(report["history"], list):
        raise FxTaylorError(f"{path} is not a fxtaylor report ('history' is not a list)")
    return report


def jsonable(value: Any) -> Any:
    """A copy of ``value`` that ``json.dumps(..., allow_nan=False)`` accepts.

    Non-finite floats become ``None``: JSON has no NaN, and Python's ``json`` would otherwise
    write a bare ``NaN`` that other readers reject (a diverged loss is NaN). Tuples become
    lists, paths strings, and numpy/torch scalars (anything with ``.item()``) plain numbers —
    a run easily records ``tensor.mean()`` instead of ``tensor.mean().item()``.
    """
    if isinstance(value, float):  # also numpy.float64, a float subclass
        return float(value) if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if callable(getattr(value, "item", None)):
        return jsonable(value.item())
    raise TypeError(f"report value {value!r} of type {type(value).__name__} is not JSON-able")


# --------------------------------------------------------------------------------------------
# Numbers as people read them
# --------------------------------------------------------------------------------------------

def format_params(params: float | None, like: float | None = None) -> str:
    """``11689512`` → ``"11.69 M"``, ``4500`` → ``"4.50 K"``; ``like`` as in :func:`format_flops`."""
    if params is None:
        return MISSING
    for scale, unit in ((1e6, "M"), (1e3, "K")):
        if abs(params if like is None else like) >= scale:
            return f"{params / scale:.2f} {unit}"
    return f"{params:.0f}"


def format_accuracy(accuracy: float | None) -> str:
    """A fraction as a percentage: ``0.7231`` → ``"72.31 %"``."""
    return MISSING if accuracy is None else f"{100 * accuracy:.2f} %"


def format_duration(seconds: float | None) -> str:
    """``42.3`` → ``"42.3 s"``, ``125`` → ``"2 min 05 s"``, ``7380`` → ``"2 h 03 min"``."""
    if seconds is None:
        return MISSING
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def ratio(before: float | None, after: float | None) -> str:
    """``after / before`` as ``"0.50×"``; missing when either is missing or ``before`` is 0."""
    if before is None or after is None or before == 0:
        return MISSING
    return f"{after / before:.2f}×"


def accuracy_change(before: float | None, after: float | None) -> str:
    """The change in percentage points, signed: ``0.723 → 0.711`` is ``"-1.2 pt"``.

    Points, not a relative change: "-1.2 pt" of top-1 is how the pruning papers compare.
    """
    if before is None or after is None:
        return MISSING
    return f"{100 * (after - before):+.1f} pt"


# --------------------------------------------------------------------------------------------
# The text table
# --------------------------------------------------------------------------------------------

def summary_table(report: dict) -> str:
    """Before / after / change for FLOPs, parameters, accuracy and latency, then one status line.

    ::

        metric             before        after   change
        FLOPs         1.82 GFLOPs  0.91 GFLOPs    0.50×
        params            11.69 M       6.08 M    0.52×
        accuracy          72.30 %      71.10 %  -1.2 pt
        latency (ms)        12.40         6.20    0.50×
        speed-up 2.00× · stop reason: target reached · total time 2 min 05 s

    FLOPs, parameters and latency change by a factor (after / before), accuracy by percentage
    points. Missing values — and NaN/inf, which ``write`` would store as null — print as "–".
    """
    before, after = report.get("before") or {}, report.get("after") or {}

    def ms(v, like=None):
        return MISSING if v is None else f"{v:.2f}"

    def pct(v, like=None):
        return format_accuracy(v)

    rows = [("metric", "before", "after", "change")]
    shown = [
        ("FLOPs", "flops", format_flops, ratio),
        ("params", "params", format_params, ratio),
        ("accuracy", "accuracy", pct, accuracy_change),
        ("latency (ms)", "latency_ms", ms, ratio),
    ]
    # every other resource the run counted (the target's own field: parameter bytes, peak memory)
    shown += [(r.label, r.key, r.format, ratio) for r in RESOURCES.values()
              if r.key not in {k for _, k, _, _ in shown} and (r.key in before or r.key in after)]
    for label, key, fmt, change in shown:
        b, a = _known(before.get(key)), _known(after.get(key))
        # One unit per row, the larger value's: "1.82 GFLOPs  0.91 GFLOPs" compares at a glance.
        like = max((v for v in (b, a) if v is not None), default=None)
        cells = [fmt(b, like), fmt(a, like)]
        if key == "latency_ms":  # the spread: a latency without it cannot be compared
            cells = [c + (f" ± {_known(d.get('latency_iqr_ms')) / 2:.2g}" if _known(d.get("latency_iqr_ms")) is not None and c != MISSING else "")
                     for c, d in zip(cells, (before, after))]
        rows.append((label, *cells, change(b, a)))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    # Label left-aligned, numbers right-aligned so their decimal points line up.
    lines = [
        "  ".join([r[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(r[1:], widths[1:])])
        for r in rows
    ]

    speedup = _known(report.get("speedup"))
    dep = (report.get("config") or {}).get("deployment") or {}
    where = f" on {deployment.describe(dep)}" if dep.get("device") else ""
    status = [f"speed-up {MISSING if speedup is None else f'{speedup:.2f}×'}{where}", outcome(report)]
    total = (report.get("timings") or {}).get("total_s")
    if total is not None:
        status.append(f"total time {format_duration(total)}")
    lines.append(" · ".join(status))
    if speedup is not None and dep.get("device"):  # a latency holds for the layout, dtype and threads it was measured in
        lines.append(f"measured as deployed; run it the same way: {deployment.how_to_run(dep)}")
    cfg = report.get("config") or {}
    r = RESOURCES.get(cfg.get("target"))
    if r is not None and r.measured and _known(cfg.get("reachable")) is not None:
        lines.append(f"channel pruning can remove at most {cfg['reachable']:.0%} of this deployment's {r.label} (predicted; "
                     f"the rest is {r.unremovable + ' and ' if r.unremovable else ''}layers no channel cut narrows)")
    slower, noise = _known(after.get("latency_ratio")), _known(after.get("latency_ratio_noise")) or 0.0
    slower = slower if slower is not None else (1 / speedup if speedup else None)  # pruned ÷ dense latency
    said = not_faster(slower, noise, measured=r is not None and r.measured)
    if said is not None:
        lines.append(f"WARNING: {said}")
    return "\n".join(lines)


def outcome(report: dict) -> str:
    """"stop reason: ..." for the status line, never contradicting ``reached``: a reason that
    claims the target while ``reached`` is false (reports written before the loop said why) reads
    as missed, and "(target not reached)" is added only to reasons that do not say so already."""
    reason = str(report.get("stop_reason") or MISSING)
    reached = report.get("reached")
    if reached is False:
        if reason.startswith("target reached"):
            return "stop reason: target missed by the final count"
        if "not reached" not in reason and "missed" not in reason:
            reason += " (target not reached)"
    elif reached is True and reason == MISSING:
        reason = "target reached"
    return f"stop reason: {reason}"


# --------------------------------------------------------------------------------------------
# Plots
# --------------------------------------------------------------------------------------------

def _known(value: Any) -> Any:
    """``value``, or ``None`` for NaN/±inf: what the table shows is what report.json will hold."""
    return value if value is None or _finite(value) else None


def _finite(value: Any) -> bool:
    """A number that can be plotted: not ``None``, not NaN or ±inf."""
    return value is not None and math.isfinite(value)


def _model_name(report: dict) -> str | None:
    """``config["model"]`` when it is a name (it is free-form: a custom model may record a dict)."""
    model = (report.get("config") or {}).get("model")
    return model if isinstance(model, str) and model else None


def _figure(width: float, height: float):
    """A figure that never touches pyplot or a GUI backend.

    ``matplotlib.figure.Figure`` is not registered with pyplot, so it is not kept alive by a
    global figure list, needs no ``plt.close`` and works in a headless process; ``savefig``
    picks the Agg renderer from the file extension. Imported here so that importing
    ``fxtaylor.report`` (e.g. only to read a report) does not pay for matplotlib.
    """
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=DPI, layout="constrained")


def _save(fig, path: str | os.PathLike) -> None:
    """Render to memory, then write atomically: ``command`` redraws *missing* plots only, so a
    half-written PNG from an interrupted run would otherwise never be repaired."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    atomic_write(Path(path), buf.getvalue())


def plot_accuracy_vs_flops(report: dict, path: str | os.PathLike) -> None:
    """Draw :func:`accuracy_vs_flops_figure` to a PNG at ``path``."""
    _save(accuracy_vs_flops_figure(report), path)


def accuracy_vs_flops_figure(report: dict):
    """Accuracy against FLOPs left after each pruning step — Fig. 3 of Molchanov et al. (2017).

    One marker per history step (steps without accuracy are skipped), the first and last
    marked apart and named with their numbers in the legend, a dashed vertical line at the
    target (``target_flops × before.flops``). When no step recorded an accuracy (a run without
    validation data) the loss is plotted instead, and the y axis says so. FLOPs are in GFLOPs,
    or MFLOPs / KFLOPs for small models.

    Nothing written covers the data: the legend, which carries the start and end numbers,
    stands right of the axes (notes placed next to the points overlapped the curve wherever it
    turned back on them). The axes do not exaggerate noise: the FLOPs axis starts at 0, so
    half the FLOPs is half the axis; the accuracy axis spans at least
    :data:`MIN_ACCURACY_SPAN` points (a run whose accuracy wandered within ±1 point filled the
    whole height with it, a trend that was not there); a loss axis starts at 0.

    Returns the ``matplotlib.figure.Figure`` (7×4.5 in at ``DPI``), e.g. to show in a notebook.
    """
    history = [h for h in report.get("history") or [] if h.get("flops") is not None]
    metric = "accuracy" if any(_finite(h.get("accuracy")) for h in history) else "loss"
    # Non-finite values are skipped too: a diverged (NaN) loss has no place on the axis.
    points = [(h["flops"], h[metric], h.get("step")) for h in history if _finite(h.get(metric))]
    before_flops = (report.get("before") or {}).get("flops")
    target = report.get("target_flops")
    target_flops = target * before_flops if target is not None and before_flops else None

    scale, unit = flops_unit(max([p[0] for p in points] + [before_flops or 0, target_flops or 0]))
    to_y = (lambda v: 100 * v) if metric == "accuracy" else (lambda v: v)
    fmt_y = (lambda v: f"{v:.1f} %") if metric == "accuracy" else (lambda v: f"{v:.3g}")

    fig = _figure(7, 4.5)
    ax = fig.add_subplot()
    if points:
        xs = [p[0] / scale for p in points]
        ys = [to_y(p[1]) for p in points]
        ax.plot(xs, ys, "o-", color="tab:blue", markersize=4, label=metric)
        # Start and end are the numbers a reader looks for; the steps between show the shape.
        ends = [(0, "start", "o")] + ([(len(points) - 1, "final" if points[-1][2] == "final" else "end", "D")]
                                      if len(points) > 1 else [])
        for i, label, marker in ends:
            ax.scatter([xs[i]], [ys[i]], s=60, marker=marker, facecolors="none", edgecolors="black", zorder=3,
                       label=f"{label}: {fmt_y(ys[i])}\n{xs[i]:.3g} {unit}")
        ax.set_ylim(*value_range(ys, metric))
    else:
        ax.text(0.5, 0.5, "no accuracy or loss recorded", transform=ax.transAxes, ha="center", va="center")
    if target_flops is not None:
        ax.axvline(target_flops / scale, linestyle="--", color="tab:red",
                   label=f"target: {target:.0%} of FLOPs")
    right = max([p[0] for p in points] + [before_flops or 0, target_flops or 0]) / scale
    ax.set_xlim(0, 1.05 * right if right > 0 else 1.0)
    ax.set_xlabel(unit)
    ax.set_ylabel("accuracy (%)" if metric == "accuracy" else "loss (no accuracy recorded)")
    name = _model_name(report)
    ax.set_title(f"{name}: {metric} vs FLOPs" if name else f"{metric} vs FLOPs")
    ax.grid(True, alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        _legend_outside(ax)
    return fig


def value_range(ys: list[float], metric: str) -> tuple[float, float]:
    """The y range of :func:`accuracy_vs_flops_figure`: the values with 8 % margins, widened to
    :data:`MIN_ACCURACY_SPAN` points about their middle and kept within [0, 100] for accuracy;
    from 0 for a loss that is never negative (a loss, like a ratio, reads against 0)."""
    lo, hi = min(ys), max(ys)
    pad = 0.08 * (hi - lo)
    lo, hi = lo - pad, hi + pad
    if metric == "accuracy":
        if hi - lo < MIN_ACCURACY_SPAN:
            mid = (lo + hi) / 2
            lo, hi = mid - MIN_ACCURACY_SPAN / 2, mid + MIN_ACCURACY_SPAN / 2
        shift = max(0.0, -lo) - max(0.0, hi - 100.0)  # inside [0, 100]: the span fits, so one side moves
        return max(0.0, lo + shift), min(100.0, hi + shift)
    if min(ys) >= 0:
        lo = 0.0
    if hi <= lo:  # a flat line: any visible range around it
        hi = lo + (abs(lo) or 1.0)
    return lo, hi


def _legend_outside(ax) -> None:
    """The legend right of the axes, where no data can be: constrained layout narrows the
    axes to make room for it."""
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0, fontsize=8)


def plot_channels(report: dict, path: str | os.PathLike) -> None:
    """Draw :func:`channels_figure` to a PNG at ``path``."""
    _save(channels_figure(report), path)


def channels_figure(report: dict):
    """Output channels of each conv/linear before and after pruning, in model order.

    Overlaid bars — before light, after dark in front — since pruning only removes channels:
    the light part of each bar is what was pruned. With more than ``MAX_TICK_LABELS`` layers only
    every k-th name is shown; the figure widens with the layer count, from 6 to 16 in.

    Returns the ``matplotlib.figure.Figure`` (4.5 in high at ``DPI``).
    """
    layers = report.get("layers") or []
    n = len(layers)
    fig = _figure(min(max(6.0, 0.2 * n + 2), 16), 4.5)
    ax = fig.add_subplot()
    if layers:
        x = range(n)
        ax.bar(x, [layer.get("before") or 0 for layer in layers], width=0.8, color="#b9d3ee", label="before")
        ax.bar(x, [layer.get("after") or 0 for layer in layers], width=0.5, color="#1f4e79", label="after")
        step = math.ceil(n / MAX_TICK_LABELS)
        ticks = list(range(0, n, step))
        ax.set_xticks(ticks)
        ax.set_xticklabels([str(layers[i].get("name", i)) for i in ticks], rotation=90, fontsize=7)
        ax.set_xlim(-0.6, n - 0.4)
        _legend_outside(ax)  # "best" inside the axes still covered bars when every place had some
    else:
        ax.text(0.5, 0.5, "no layers recorded", transform=ax.transAxes, ha="center", va="center")
    shown = math.ceil(n / MAX_TICK_LABELS) if n else 1
    ax.set_xlabel("layer" if shown == 1 else f"layer (one name in {shown} shown)")
    ax.set_ylabel("output channels")
    name = _model_name(report)
    ax.set_title(f"{name}: channels per layer" if name else "channels per layer")
    ax.grid(True, axis="y", alpha=0.3)
    return fig


# --------------------------------------------------------------------------------------------
# fxtaylor report RUN_DIR
# --------------------------------------------------------------------------------------------

def command(run_dir: str | os.PathLike) -> int:
    """``fxtaylor report RUN_DIR``: print the summary, redraw missing plots, list the files."""
    run_dir = Path(run_dir)
    report = read(run_dir)
    missing = [name for name, file in PLOT_FILES.items() if not (run_dir / file).is_file()]
    try:
        table = summary_table(report)
        print(table)
        write_plots(run_dir, report, only=missing)
    except (TypeError, KeyError, ValueError, AttributeError, IndexError) as e:  # a hand-edited or foreign report.json
        raise FxTaylorError(f"{run_dir / REPORT_FILE} is not a readable fxtaylor report ({describe(e)})") from e
    print()
    print(f"report             {run_dir / REPORT_FILE}")
    for name, file in PLOT_FILES.items():
        print(f"{name:<18} {run_dir / file}{'  (redrawn)' if name in missing else ''}")
    return 0
