"""The run report: report.json written atomically and read back, the plots, the summary table,
and ``fxtaylor report RUN_DIR``. Everything is built from a hand-made report dict — no pruning."""
from __future__ import annotations

import copy
import json
import math
import os
import shutil

import pytest
from matplotlib.image import imread

from fxtaylor import report as rep
from fxtaylor.errors import FxTaylorError

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def make_report(n_layers: int = 20) -> dict:
    """A resnet18-like run: 0.5 target reached in 4 steps plus a final fine-tune."""
    flops0, params0 = 1_823_572_992, 11_689_512
    history = [{"step": 0, "flops": flops0, "params": params0, "accuracy": 0.723, "loss": 1.10,
                "removed": 0, "time_s": 0.0}]
    for step, (f, a) in enumerate([(0.88, 0.701), (0.75, 0.688), (0.62, 0.669), (0.50, 0.652)], 1):
        history.append({"step": step, "flops": int(f * flops0), "params": int((f + 0.02) * params0),
                        "accuracy": a, "loss": 1.1 + step / 10, "removed": 40 * step, "time_s": 12.5 * step})
    history.append({"step": "final", "flops": int(0.5 * flops0), "params": int(0.52 * params0),
                    "accuracy": 0.711, "loss": 1.15, "removed": 160, "time_s": 80.0})
    layers = [{"name": f"layer{i // 4}.{i % 4}.conv", "before": 64 * (1 + i // 5), "after": 40 * (1 + i // 5) - i}
              for i in range(n_layers)]
    return {
        "fxtaylor": "0.1.0",
        "config": {"model": "resnet18", "target_flops": 0.5, "flops_reg": 1e-3, "updates_between_prunes": 10,
                   "maps_per_prune": 40, "seed": 0},
        "environment": {"python": "3.11.2", "torch": "2.3.0", "torchvision": "0.18.0", "torch_pruning": "1.5.1",
                        "fvcore": "0.1.5", "platform": "Linux", "device": "cpu", "threads": 2},
        "target_flops": 0.5,
        "reached": True,
        "stop_reason": "target reached",
        "before": {"flops": flops0, "params": params0, "accuracy": 0.723, "latency_ms": 12.4},
        "after": {"flops": int(0.5 * flops0), "params": int(0.52 * params0), "accuracy": 0.711, "latency_ms": 6.2},
        "speedup": 2.0,
        "history": history,
        "layers": layers,
        "model_file": "model.pt",
        "timings": {"finetune_s": 60.0, "prune_s": 65.0, "total_s": 125.0},
    }


@pytest.fixture
def report() -> dict:
    return make_report()


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """A run directory as write() leaves it, drawn once: rendering is most of this file's time."""
    run_dir = tmp_path_factory.mktemp("written")
    return run_dir, rep.write(run_dir, make_report())


@pytest.fixture
def run_dir(tmp_path, written):
    """A private copy of the written run directory, for tests that change it."""
    return shutil.copytree(written[0], tmp_path / "run")


def check_png(path, height: int, width: int) -> None:
    """A real PNG of the expected size with something drawn on it (not one flat colour)."""
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    assert len(data) > 5_000
    image = imread(path)
    assert image.shape[:2] == (height, width)
    assert image[..., :3].std() > 0.05


# --- write / read ---------------------------------------------------------------------------

def test_write_round_trips_and_nulls_non_finite_floats(tmp_path, report):
    report["history"][2]["loss"] = float("nan")  # a diverged step
    report["after"]["latency_ms"] = float("inf")
    expected = copy.deepcopy(report)
    expected["history"][2]["loss"] = None
    expected["after"]["latency_ms"] = None

    paths = rep.write(tmp_path / "run" / "nested", report)

    assert set(paths) == {"report", "accuracy_vs_flops", "channels"}
    assert paths["report"] == tmp_path / "run" / "nested" / "report.json"
    text = paths["report"].read_text()
    assert "NaN" not in text and "Infinity" not in text
    loaded = json.loads(text, parse_constant=lambda c: pytest.fail(f"bare {c} in report.json"))
    assert loaded == expected
    assert rep.read(tmp_path / "run" / "nested") == expected
    assert math.isnan(report["history"][2]["loss"])  # the caller's dict is not modified
    assert text.startswith('{\n  "fxtaylor": "0.1.0",')  # indent 2


def test_write_makes_both_plots(written):
    run_dir, paths = written
    assert paths == {name: run_dir / file for name, file in
                     [("report", "report.json"), ("accuracy_vs_flops", "accuracy_vs_flops.png"),
                      ("channels", "channels.png")]}
    check_png(paths["accuracy_vs_flops"], 450, 700)  # 7×4.5 in at 100 dpi
    check_png(paths["channels"], 450, 600)  # 20 layers: the 6 in minimum width
    assert paths["accuracy_vs_flops"].name == "accuracy_vs_flops.png"
    assert paths["channels"].name == "channels.png"


def test_write_leaves_no_temp_files(written, run_dir, report):
    assert sorted(os.listdir(written[0])) == ["accuracy_vs_flops.png", "channels.png", "report.json"]
    report["stop_reason"] = "nothing left to prune"
    rep.write(run_dir, report)  # overwriting
    assert sorted(os.listdir(run_dir)) == ["accuracy_vs_flops.png", "channels.png", "report.json"]
    assert rep.read(run_dir)["stop_reason"] == "nothing left to prune"


@pytest.mark.parametrize("fails", ["json.dumps", "os.fsync", "os.replace"])
def test_failed_write_keeps_previous_report(run_dir, report, monkeypatch, fails):
    previous = (run_dir / "report.json").read_bytes()
    report["stop_reason"] = "accuracy floor"

    def boom(*args, **kwargs):
        raise OSError("disk full")

    module, name = fails.split(".")
    monkeypatch.setattr({"json": json, "os": os}[module], name, boom)
    with pytest.raises(OSError, match="disk full"):
        rep.write(run_dir, report)
    monkeypatch.undo()

    assert (run_dir / "report.json").read_bytes() == previous
    assert sorted(os.listdir(run_dir)) == ["accuracy_vs_flops.png", "channels.png", "report.json"]
    assert rep.read(run_dir)["stop_reason"] == "target reached"


def test_unserialisable_value_keeps_previous_report(run_dir, report):
    previous = (run_dir / "report.json").read_bytes()
    report["config"]["callbacks"] = {1, 2}
    with pytest.raises(TypeError, match="set"):
        rep.write(run_dir, report)
    assert (run_dir / "report.json").read_bytes() == previous
    assert sorted(os.listdir(run_dir)) == ["accuracy_vs_flops.png", "channels.png", "report.json"]


def test_jsonable_converts_scalars_tuples_and_paths(tmp_path):
    import torch

    value = {"acc": torch.tensor(0.25), "n": torch.tensor(3), "shape": (1, 3), "dir": tmp_path,
             "bad": torch.tensor(float("nan")), 7: [float("-inf"), True, None]}
    assert rep.jsonable(value) == {"acc": 0.25, "n": 3, "shape": [1, 3], "dir": str(tmp_path),
                                   "bad": None, "7": [None, True, None]}


def test_read_missing_dir(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(FxTaylorError, match="does not exist") as e:
        rep.read(missing)
    assert str(missing) in str(e.value) and "\n" not in str(e.value)


def test_read_file_instead_of_dir(tmp_path):
    (tmp_path / "report.json").write_text("{}")
    with pytest.raises(FxTaylorError, match="not a directory") as e:
        rep.read(tmp_path / "report.json")
    assert str(tmp_path / "report.json") in str(e.value)


def test_read_missing_file(tmp_path):
    with pytest.raises(FxTaylorError, match="not found") as e:
        rep.read(tmp_path)
    assert str(tmp_path / "report.json") in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("content, expected", [
    ('{"history": [', "not valid JSON"),  # truncated
    (b"\xff\xfe{}", "not valid JSON"),  # not text
    ('{"before": {}}', "no 'history' key"),  # some other JSON file
    ('[1, 2]', "no 'history' key"),
    ('{"history": 3}', "'history' is not a list"),
])
def test_read_rejects_what_is_not_a_report(tmp_path, content, expected):
    path = tmp_path / "report.json"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(FxTaylorError, match=expected) as e:
        rep.read(tmp_path)
    assert str(path) in str(e.value) and "\n" not in str(e.value)


# --- summary table --------------------------------------------------------------------------

def cells(table: str, label: str) -> list[str]:
    """The before / after / change cells of one row (cells are separated by 2+ spaces)."""
    line = next(line for line in table.splitlines() if line.startswith(label))
    return [c.strip() for c in line[len(label):].split("  ") if c.strip()]


def test_summary_table_numbers(report):
    table = rep.summary_table(report)
    b, a = report["before"], report["after"]
    assert cells(table, "FLOPs") == ["1.82 GFLOPs", "0.91 GFLOPs", f"{a['flops'] / b['flops']:.2f}×"]
    assert cells(table, "FLOPs")[2] == "0.50×"
    assert cells(table, "params") == ["11.69 M", "6.08 M", f"{a['params'] / b['params']:.2f}×"]
    assert cells(table, "accuracy") == ["72.30 %", "71.10 %", "-1.2 pt"]
    assert cells(table, "latency (ms)") == ["12.40", "6.20", "0.50×"]
    assert table.splitlines()[-1] == "speed-up 2.00× · stop reason: target reached · total time 2 min 05 s"


def test_summary_table_is_aligned(report):
    rows = rep.summary_table(report).splitlines()[:-1]
    assert len(rows) == 5
    assert len({len(r) for r in rows}) == 1  # right-aligned columns end in the same place
    assert rows[0].split() == ["metric", "before", "after", "change"]


def test_summary_table_missing_values(report):
    report["before"]["accuracy"] = None
    report["after"]["latency_ms"] = None
    report["speedup"] = None
    report["reached"] = False
    report["stop_reason"] = "accuracy floor"
    del report["timings"]
    table = rep.summary_table(report)
    assert "None" not in table
    assert cells(table, "accuracy") == ["–", "71.10 %", "–"]
    assert cells(table, "latency (ms)") == ["12.40", "–", "–"]
    assert cells(table, "FLOPs")[2] == "0.50×"
    assert table.splitlines()[-1] == "speed-up – · stop reason: accuracy floor (target not reached)"


def test_summary_table_shows_non_finite_as_missing(report):
    report["after"]["latency_ms"] = float("nan")  # as write() would store it: null
    report["speedup"] = float("inf")
    table = rep.summary_table(report)
    assert cells(table, "latency (ms)") == ["12.40", "–", "–"]
    assert table.splitlines()[-1].startswith("speed-up – · ")


def test_summary_table_docstring_is_real_output(report):
    assert rep.summary_table(report) in rep.summary_table.__doc__.replace("\n        ", "\n")


def test_summary_table_of_a_bare_report():
    table = rep.summary_table({"history": []})
    for label in ("FLOPs", "params", "accuracy", "latency (ms)"):
        assert cells(table, label) == ["–", "–", "–"]


@pytest.mark.parametrize("fmt, value, text", [
    (rep.format_flops, 1_823_572_992, "1.82 GFLOPs"),
    (rep.format_flops, 2_500_000, "2.50 MFLOPs"),
    (rep.format_flops, 40_960, "40.96 KFLOPs"),
    (rep.format_flops, 512, "512 FLOPs"),
    (rep.format_params, 11_689_512, "11.69 M"),
    (rep.format_params, 4_500, "4.50 K"),
    (rep.format_params, 12, "12"),
    (rep.format_duration, 42.34, "42.3 s"),
    (rep.format_duration, 125, "2 min 05 s"),
    (rep.format_duration, 7380, "2 h 03 min"),
])
def test_formats(fmt, value, text):
    assert fmt(value) == text


def test_changes():
    assert rep.ratio(200, 100) == "0.50×"
    assert rep.ratio(0, 100) == rep.ratio(None, 1) == "–"
    assert rep.accuracy_change(0.70, 0.713) == "+1.3 pt"
    assert rep.accuracy_change(0.70, None) == "–"


# --- plots ----------------------------------------------------------------------------------

def test_accuracy_plot_content(report):
    report["history"][3]["accuracy"] = None  # an unevaluated step is skipped, not drawn at 0
    fig = rep.accuracy_vs_flops_figure(report)
    ax = fig.axes[0]
    line, target = ax.get_lines()
    kept = [h for h in report["history"] if h["accuracy"] is not None]
    assert list(line.get_xdata()) == pytest.approx([h["flops"] / 1e9 for h in kept])
    assert list(line.get_ydata()) == pytest.approx([100 * h["accuracy"] for h in kept])
    assert list(target.get_xdata()) == pytest.approx([0.5 * report["before"]["flops"] / 1e9] * 2)
    assert target.get_linestyle() == "--"
    assert ax.get_xlabel() == "GFLOPs" and ax.get_ylabel() == "accuracy (%)"
    assert "resnet18" in ax.get_title()
    notes = [t.get_text() for t in ax.get_legend().get_texts()]  # the start and end numbers, off the data
    assert notes == ["accuracy", "start: 72.3 %\n1.82 GFLOPs", "final: 71.1 %\n0.912 GFLOPs", "target: 50% of FLOPs"]


def test_accuracy_plot_falls_back_to_loss(tmp_path, report):
    for h in report["history"]:
        h["accuracy"] = None
    report["history"][1]["loss"] = float("nan")
    ax = rep.accuracy_vs_flops_figure(report).axes[0]
    kept = [h for h in report["history"] if not math.isnan(h["loss"])]
    assert "loss" in ax.get_ylabel()
    assert list(ax.get_lines()[0].get_ydata()) == pytest.approx([h["loss"] for h in kept])
    rep.plot_accuracy_vs_flops(report, tmp_path / "a.png")
    check_png(tmp_path / "a.png", 450, 700)


def test_accuracy_plot_small_model_in_mflops():
    history = [{"step": i, "flops": 2_000_000 - 500_000 * i, "accuracy": 0.9 - 0.01 * i} for i in range(3)]
    ax = rep.accuracy_vs_flops_figure({"history": history, "target_flops": 0.5,
                                      "before": {"flops": 2_000_000}}).axes[0]
    assert ax.get_xlabel() == "MFLOPs"
    assert list(ax.get_lines()[0].get_xdata()) == pytest.approx([2.0, 1.5, 1.0])
    assert ax.get_title() == "accuracy vs FLOPs"  # no model in config


def test_channels_plot_100_layers(tmp_path):
    report = make_report(n_layers=100)
    ax = rep.channels_figure(report).axes[0]
    before, after = ax.containers
    assert [b.get_height() for b in before] == [layer["before"] for layer in report["layers"]]
    assert [b.get_height() for b in after] == [layer["after"] for layer in report["layers"]]
    labels = [t.get_text() for t in ax.get_xticklabels()]
    assert len(labels) == 34  # every 3rd of 100 names, at most 40
    assert labels[:2] == [report["layers"][0]["name"], report["layers"][3]["name"]]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["before", "after"]
    rep.plot_channels(report, tmp_path / "c.png")
    check_png(tmp_path / "c.png", 450, 1600)  # widened to the 16 in limit


def test_channels_plot_few_layers_shows_all_names(report):
    ax = rep.channels_figure(report).axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == [layer["name"] for layer in report["layers"]]


def noisy_report(n: int = 50, target: float = 0.5, accuracy: float = 0.94, spread: float = 0.012) -> dict:
    """A long run whose accuracy only wanders (±``spread``) — the docs' digits plot."""
    flops0 = 37_100_000
    history = [{"step": i, "flops": int(flops0 * (1 - (1 - target) * i / n)),
                "accuracy": accuracy + spread * math.sin(1.7 * i) * (i % 3 - 1)} for i in range(n + 1)]
    history.append({"step": "final", "flops": history[-1]["flops"], "accuracy": accuracy + spread / 2})
    return {"history": history, "before": {"flops": flops0}, "target_flops": target, "config": {"model": "resnet18"}}


def drawn(fig):
    """``fig`` laid out and drawn by Agg (as savefig does), and its renderer."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return canvas.get_renderer()


def data_pixels(ax, per_segment: int = 20) -> list[tuple[float, float]]:
    """Display coordinates of every plotted point of ``ax``'s lines and markers, and of points
    along each segment between them (a label must clear the line, not only its markers)."""
    out = []
    for line in ax.get_lines():
        xy = ax.transData.transform(list(zip(line.get_xdata(), line.get_ydata())))
        if line.get_transform() is not ax.transData:  # axvline: x in data, y in axes coordinates
            xy = line.get_transform().transform(list(zip(line.get_xdata(), line.get_ydata())))
        for (x0, y0), (x1, y1) in zip(xy, xy[1:]):
            out += [(x0 + (x1 - x0) * k / per_segment, y0 + (y1 - y0) * k / per_segment) for k in range(per_segment + 1)]
        out += [tuple(p) for p in xy]
    for coll in ax.collections:
        out += [tuple(p) for p in coll.get_offset_transform().transform(coll.get_offsets())]
    return out


def labels_of(fig, ax, renderer):
    """Every text drawn on the figure that is not a tick label: title, axis labels, notes,
    the legend (as a whole box)."""
    boxes = [t.get_window_extent(renderer) for t in ax.texts]
    if ax.get_legend() is not None:
        boxes.append(ax.get_legend().get_window_extent(renderer))
    return boxes + [ax.title.get_window_extent(renderer), ax.xaxis.label.get_window_extent(renderer),
                    ax.yaxis.label.get_window_extent(renderer)]


PLOT_CASES = {
    "resnet18": make_report(), "noisy": noisy_report(), "target 0.9": noisy_report(n=8, target=0.9),
    "near 100 %": noisy_report(accuracy=0.995, spread=0.004), "one point": {"history": make_report()["history"][:1]},
}


@pytest.mark.parametrize("case", PLOT_CASES)
def test_accuracy_plot_labels_never_cover_data(case):
    """Nothing written — the start/end numbers, the legend, the titles — lies on a plotted point
    or on the line between two (the start note used to sit on the curve)."""
    fig = rep.accuracy_vs_flops_figure(copy.deepcopy(PLOT_CASES[case]))
    renderer = drawn(fig)
    ax = fig.axes[0]
    points = data_pixels(ax)
    assert points
    for box in labels_of(fig, ax, renderer):
        inside = [(x, y) for x, y in points if box.x0 <= x <= box.x1 and box.y0 <= y <= box.y1]
        assert not inside, f"{case}: a label {box} covers data at {inside[:3]}"
    legend = ax.get_legend().get_window_extent(renderer)
    assert not legend.overlaps(ax.get_window_extent(renderer))  # outside the axes altogether
    assert legend.x1 <= fig.bbox.x1 + 1  # and still on the image


def test_channels_plot_legend_never_covers_bars(report):
    for layer in report["layers"]:
        layer["before"] = 512  # every bar full height: "best" had no free corner
    fig = rep.channels_figure(report)
    renderer = drawn(fig)
    ax = fig.axes[0]
    legend = ax.get_legend().get_window_extent(renderer)
    assert not legend.overlaps(ax.get_window_extent(renderer)) and legend.x1 <= fig.bbox.x1 + 1
    for bar in ax.patches:
        assert not legend.overlaps(bar.get_window_extent(renderer))


@pytest.mark.parametrize("case", ["noisy", "near 100 %", "resnet18"])
def test_accuracy_axis_spans_at_least_ten_points(case):
    """Noise of a point or two does not fill the height: the accuracy axis spans at least
    MIN_ACCURACY_SPAN points, holds every value, stays within [0, 100]; FLOPs start at 0."""
    report = PLOT_CASES[case]
    ax = rep.accuracy_vs_flops_figure(report).axes[0]
    lo, hi = ax.get_ylim()
    ys = [100 * h["accuracy"] for h in report["history"]]
    assert rep.MIN_ACCURACY_SPAN == 10.0
    assert hi - lo >= rep.MIN_ACCURACY_SPAN * (1 - 1e-9)
    assert lo <= min(ys) and max(ys) <= hi and 0 <= lo and hi <= 100
    assert ax.get_xlim()[0] == 0
    assert ax.get_xlim()[1] >= max(ax.get_lines()[0].get_xdata())


def test_accuracy_axis_keeps_a_wide_range_as_it_is():
    history = [{"step": i, "flops": 1_000_000 - 100_000 * i, "accuracy": a} for i, a in enumerate([0.9, 0.6, 0.3])]
    lo, hi = rep.accuracy_vs_flops_figure({"history": history}).axes[0].get_ylim()
    assert lo == pytest.approx(30 - 0.08 * 60, rel=1e-9) and hi == pytest.approx(90 + 0.08 * 60, rel=1e-9)


def test_loss_axis_starts_at_zero(report):
    for h in report["history"]:
        h["accuracy"] = None
    ax = rep.accuracy_vs_flops_figure(report).axes[0]
    assert ax.get_ylim()[0] == 0 and ax.get_ylim()[1] >= max(h["loss"] for h in report["history"])


# --- fxtaylor report RUN_DIR ------------------------------------------------------------------

def test_command_prints_table_and_redraws_missing_plots(run_dir, report, capsys):
    paths = {name: run_dir / file for name, file in
             [("report", "report.json"), ("accuracy_vs_flops", "accuracy_vs_flops.png"), ("channels", "channels.png")]}
    paths["channels"].unlink()
    kept_plot = paths["accuracy_vs_flops"].read_bytes()

    assert rep.command(run_dir) == 0

    out = capsys.readouterr().out
    assert out.startswith(rep.summary_table(report) + "\n")
    assert f"{paths['report']}\n" in out
    assert f"channels           {paths['channels']}  (redrawn)" in out
    assert f"accuracy_vs_flops  {paths['accuracy_vs_flops']}\n" in out
    check_png(paths["channels"], 450, 600)
    assert paths["accuracy_vs_flops"].read_bytes() == kept_plot


def test_command_on_a_bad_dir(tmp_path):
    with pytest.raises(FxTaylorError, match="not found"):
        rep.command(tmp_path)
