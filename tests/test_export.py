"""fxtaylor.export (fxtaylor/exporting.py): ONNX and torch.export files that run without fxtaylor and compute what the
model computes, at any batch size; bad input refused before anything is written."""
import json
import subprocess
import sys
import tempfile
import textwrap

import numpy as np
import pytest
import torch
import torch.nn as nn
import torchvision
from torch.utils.data import DataLoader, TensorDataset

import fxtaylor
from fxtaylor import FxTaylorError
from fxtaylor.cli import main
from helpers import cloned_state

from fxtaylor import exporting as ex
FORMATS = list(ex.FORMATS)


def resnet():
    torch.manual_seed(0)
    return torchvision.models.resnet18(weights=None, num_classes=10)


def outputs_close(got, want, rtol=1e-4):
    """Max abs difference within rtol of the outputs' magnitude (the export's own rule)."""
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    return float(np.abs(got - want).max()) <= rtol * float(np.abs(want).max())


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """resnet18 at 32 px, written in both formats (shared by the round-trip and no-fxtaylor tests)."""
    d = tmp_path_factory.mktemp("exported")
    model = resnet()
    model.train()  # exported in eval mode all the same; the model keeps its own
    x = torch.randn(1, 3, 32, 32)
    done = {f: fxtaylor.export(model, x, d / f"m{ex.FORMATS[f]}", f) for f in FORMATS}
    return model, x, done


@pytest.mark.parametrize("format", FORMATS)
def test_resnet18_round_trips_at_two_batch_sizes(exported, format):
    model, x, done = exported
    r = done[format]
    assert model.training  # untouched
    assert r.path.is_file() and r.path.suffix == ex.FORMATS[format] and r.format == format
    assert r.dynamic_batch and r.rtol == ex.RTOL[torch.float32] and r.seconds > 0
    assert 0 <= r.max_error <= r.rtol * r.scale and r.scale > 0
    assert str(r.path) in r.describe() and "dynamic batch" in r.describe()
    x3 = torch.randn(3, 3, 32, 32)
    want = fxtaylor.examples.run(model, (x3,)).numpy()
    if format == "onnx":
        import onnxruntime as ort

        s = ort.InferenceSession(str(r.path), providers=["CPUExecutionProvider"])
        got = s.run(None, {s.get_inputs()[0].name: x3.numpy()})[0]
    else:
        got = torch.export.load(r.path).module()(x3).detach().numpy()
    assert outputs_close(got, want)
    assert not list(r.path.parent.glob(".*.tmp"))  # no temporary file left


@pytest.mark.parametrize("format", FORMATS)
def test_mobilenet_v2_round_trips(tmp_path, format):
    torch.manual_seed(0)
    model = torchvision.models.mobilenet_v2(weights=None, num_classes=10).eval()
    r = fxtaylor.export(model, torch.randn(1, 3, 32, 32), tmp_path / f"m{ex.FORMATS[format]}", format)
    assert r.dynamic_batch and r.max_error <= r.allowed and [p.name for p in tmp_path.iterdir()] == [r.path.name]
    assert not model.training


NO_FXTAYLOR = textwrap.dedent("""
    import sys
    sys.modules["fxtaylor"] = None  # the files must not need fxtaylor
    try:
        import fxtaylor
        raise SystemExit("fxtaylor importable")
    except ImportError:
        pass
    import numpy as np, onnxruntime as ort, torch
    d = sys.argv[1]
    x = np.load(d + "/x.npy")
    s = ort.InferenceSession(d + "/m.onnx", providers=["CPUExecutionProvider"])
    np.save(d + "/onnx_out.npy", s.run(None, {s.get_inputs()[0].name: x})[0])
    m = torch.export.load(d + "/m.pt2").module()
    np.save(d + "/pt2_out.npy", m(torch.from_numpy(x)).detach().numpy())
""")


def test_exported_files_run_without_fxtaylor(exported, tmp_path):
    model, _, done = exported
    d = done["onnx"].path.parent
    x = torch.randn(2, 3, 32, 32)
    np.save(d / "x.npy", x.numpy())
    want = fxtaylor.examples.run(model, (x,)).numpy()
    proc = subprocess.run([sys.executable, "-c", NO_FXTAYLOR, str(d)], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for name in ("onnx_out", "pt2_out"):
        assert outputs_close(np.load(d / f"{name}.npy"), want), name


def test_a_pruned_model_exports_through_its_result(tmp_path):
    model = resnet()
    data = TensorDataset(torch.randn(16, 3, 32, 32), torch.randint(0, 10, (16,)))
    r = fxtaylor.prune(model, DataLoader(data, batch_size=8), target_flops=0.7, maps_per_prune=200,
                       updates_between_prunes=1, progress=False, measure_latency=False, seed=0)
    assert r.flops_ratio <= 0.7 and r.config["input_shape"] == [1, 3, 32, 32]
    done = r.export(tmp_path / "m.onnx")
    assert done.dynamic_batch and done.max_error <= done.allowed
    import onnxruntime as ort

    x = torch.randn(2, 3, 32, 32)
    s = ort.InferenceSession(str(done.path), providers=["CPUExecutionProvider"])
    assert outputs_close(s.run(None, {"x": x.numpy()})[0], fxtaylor.examples.run(model, (x,)).numpy())


# -- bad input: one FxTaylorError, nothing written, the model untouched --------------------------

class Histc(nn.Module):
    """torch.histc has no ONNX translation."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        return torch.histc(self.conv(x), bins=4)


class Branchy(nn.Module):
    """Python control flow on a tensor's value: torch.export cannot trace it."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        y = self.conv(x)
        if y.sum() > 0:
            return y
        return -y


def small():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))


def hooks(model):
    return [(len(m._forward_hooks), len(m._forward_pre_hooks)) for m in model.modules()]


@pytest.mark.parametrize("case", ["format", "missing_dir", "file_as_dir", "is_dir", "unwritable", "wrong_suffix", "rtol",
                                  "histc", "branchy", "no_onnxruntime", "check_fails", "check_nan", "rtol_tiny"])
def test_bad_input_is_one_error_and_writes_nothing(tmp_path, monkeypatch, case):
    model = {"histc": Histc, "branchy": Branchy}.get(case, small)()
    model.train()
    before, hooks_before = cloned_state(model), hooks(model)
    x = torch.randn(1, 3, 16, 16)
    target, kwargs, expect = tmp_path / "m.onnx", {}, None
    if case == "format":
        kwargs, expect = {"format": "tflite"}, "unknown export format 'tflite': use one of 'onnx', 'torch.export'"
    elif case == "missing_dir":
        target, expect = tmp_path / "nowhere" / "m.onnx", "does not exist"
    elif case == "file_as_dir":
        (tmp_path / "f").write_text("")
        target, expect = tmp_path / "f" / "m.onnx", "does not exist"
    elif case == "is_dir":
        target, expect = tmp_path, "it is a directory"
    elif case == "unwritable":
        (tmp_path / "ro").mkdir(mode=0o500)
        if _root():  # root writes anywhere: the directory refuses as a read-only one would
            def refuse(*a, **k):
                raise PermissionError(13, "Permission denied")
            monkeypatch.setattr(tempfile, "mkstemp", refuse)
        target, expect = tmp_path / "ro" / "m.onnx", "not writable"
    elif case == "wrong_suffix":
        kwargs, expect = {"format": "torch.export"}, "the suffix of onnx files"
    elif case == "rtol":
        kwargs, expect = {"rtol": float("nan")}, "rtol must be a finite number > 0"
    elif case == "histc":
        expect = "aten.histc"
    elif case == "branchy":
        target, kwargs, expect = tmp_path / "m.pt2", {"format": "torch.export"}, "torch.export cannot export this model"
    elif case == "no_onnxruntime":
        monkeypatch.setitem(sys.modules, "onnxruntime", None)
        expect = "needs the onnxruntime package, which is not installed here: pip install 'fxtaylor[deploy]'"
    elif case == "check_fails":  # the loaded-back program computes something else
        real = ex.load
        monkeypatch.setattr(ex, "load", lambda *a: (lambda args: [t + 1 for t in real(*a)(args)]))
        target, kwargs, expect = tmp_path / "m.pt2", {"format": "torch.export"}, "does not compute what the model computes"
    elif case == "check_nan":  # a NaN must not hide in a max (max(0.0, nan) is 0.0)
        real = ex.load
        monkeypatch.setattr(ex, "load", lambda *a: (lambda args: [t.masked_fill(t > 0, float("nan")) for t in real(*a)(args)]))
        target, kwargs, expect = tmp_path / "m.pt2", {"format": "torch.export"}, "max error inf >"
    elif case == "rtol_tiny":  # ONNX Runtime is not bit-exact: no float32 export meets 1e-30
        kwargs, expect = {"rtol": 1e-30}, "allowed (rtol 1e-30"
    with pytest.raises(FxTaylorError) as e:
        fxtaylor.export(model, x, target, **kwargs)
    assert expect in str(e.value), str(e.value)
    assert "\n" not in str(e.value)
    left = sorted(p.name for p in tmp_path.rglob("*"))
    assert left == {"file_as_dir": ["f"], "unwritable": ["ro"]}.get(case, []), left
    after = model.state_dict()
    assert model.training and hooks(model) == hooks_before
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def _root():
    import os

    return hasattr(os, "geteuid") and os.geteuid() == 0


def test_a_model_that_fixes_its_batch_is_exported_static(tmp_path):
    class Fixed(nn.Module):
        def forward(self, x):
            return x.view(1, 48) * 2  # batch 1 baked in: it runs at no other batch

    for f in FORMATS:
        r = fxtaylor.export(Fixed(), torch.randn(1, 3, 4, 4), tmp_path / f"m{ex.FORMATS[f]}", f)
        assert not r.dynamic_batch and r.max_error <= r.allowed


# -- fxtaylor export RUN_DIR ---------------------------------------------------------------------

def run_dir(path):
    """A finished run as `fxtaylor prune` leaves it (model.pt, report.json), without pruning."""
    path.mkdir()
    model = resnet().eval()
    arch = {"kind": "torchvision", "name": "resnet18", "kwargs": {"num_classes": 10}}
    fxtaylor.save(model, path / "model.pt", arch)
    report = {"history": [], "model_file": "model.pt", "config": {"input_shape": [1, 3, 32, 32]}}
    (path / "report.json").write_text(json.dumps(report))
    return path


def test_cli_exports_a_run(tmp_path, capsys):
    d = run_dir(tmp_path / "run")
    assert main(["export", str(d), "--format", "onnx"]) == 0
    line = capsys.readouterr().out
    assert line.count("\n") == 1 and f"wrote {d / 'model.onnx'} (onnx, dynamic batch yes, max error" in line
    import onnxruntime as ort

    model = fxtaylor.load(d / "model.pt")
    x = torch.randn(2, 3, 32, 32)
    s = ort.InferenceSession(str(d / "model.onnx"), providers=["CPUExecutionProvider"])
    assert outputs_close(s.run(None, {"x": x.numpy()})[0], fxtaylor.examples.run(model, (x,)).numpy())


@pytest.mark.parametrize("case, message", [
    ("missing", "does not exist"), ("no_report", "report.json not found"), ("no_model", "holds no pruned model"),
    ("output_dir", "it is a directory"),
])
def test_cli_bad_run_dir_is_one_line_and_writes_nothing(tmp_path, capsys, case, message):
    d = tmp_path / "run"
    argv = ["export", str(d)]
    if case == "no_report":
        d.mkdir()
        (d / "model.pt").write_bytes(b"")
    elif case == "no_model":
        run_dir(d)
        (d / "model.pt").unlink()
    elif case == "output_dir":
        run_dir(d)
        argv += ["--output", str(tmp_path)]
    files = sorted(tmp_path.rglob("*"))
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("fxtaylor: error: ") and message in err and err.count("\n") == 1, err
    assert sorted(tmp_path.rglob("*")) == files
