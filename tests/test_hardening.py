"""Bad input never corrupts a model or ends in a traceback (issue 15): one test per class of bad
input, each asserting the message and that the model and the files are as they were."""
import json
import math
import os
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

import fxtaylor
from fxtaylor import FxTaylorError, PruneError
from fxtaylor.cli import main
from fxtaylor.files import atomic_write, remove_leftovers
from fxtaylor.pruner import loop
from helpers import cloned_state, image_folder
from test_cli import QUICK
from test_prune import FAST, Stop, TinyResNet, fresh, loaders


def _snapshot(directory):
    """Every file under ``directory`` with its bytes (None: the directory does not exist)."""
    if not directory.exists():
        return None
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def _same_state(model, before):
    """Bit for bit (NaN where there was NaN)."""
    now = model.state_dict()
    return now.keys() == before.keys() and all(
        now[k].shape == v.shape and bool(((now[k] == v) | (now[k] != now[k]) & (v != v)).all()) for k, v in before.items())


def _data(n=32, channels=1, labels=None, size=8):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, channels, size, size, generator=g)
    y = torch.randint(0, 10, (n,), generator=g) if labels is None else labels
    return TensorDataset(x, y)


def _loader(ds, **kw):
    return DataLoader(ds, batch_size=8, **kw)


class HiddenLabels:
    """Re-iterable batches whose labels fxtaylor cannot see up front (no dataset, not a list)."""

    def __init__(self, batches):
        self.batches = batches

    def __iter__(self):
        return iter(self.batches)


class Raising(Dataset):
    """A dataset whose item ``bad`` cannot be read (a corrupt file)."""

    def __init__(self, bad):
        self.data, self.bad = _data(64), bad

    def __len__(self):
        return len(self.data)

    def __getitem__(self, i):
        if i == self.bad:
            raise ValueError(f"item {i} is unreadable")
        return self.data[i]


def _one_output():
    m = fresh()
    m.fc = nn.Linear(32, 1)
    return m


def _nan_weights():
    m = fresh()
    with torch.no_grad():
        m.block[0].weight[0, 0, 0, 0] = math.nan
    return m


# -- 1. validate before touching anything (library) ------------------------------------------------

CASES = {
    # name: (model factory, loader factory, extra kwargs, message)
    "one-shot generator": (fresh, lambda: (b for b in _loader(_data())), {}, r"training loader \(train_loader\) is a one-shot iterator \(generator\)"),
    "one-shot map": (fresh, lambda: map(lambda b: b, _loader(_data())), {}, r"one-shot iterator \(map\)"),
    "one-shot val loader": (fresh, lambda: _loader(_data()), {"val_loader": iter(_loader(_data()))}, r"val_loader is a one-shot iterator"),
    "meta device": (lambda: fresh().to("meta"), lambda: _loader(_data()), {}, r"the model's weights are on the meta device"),
    "NaN weights": (_nan_weights, lambda: _loader(_data()), {}, r"the model's weights hold NaN or inf \(first: block.0.weight\)"),
    "label above the outputs": (fresh, lambda: _loader(_data(labels=torch.full((32,), 12))), {},
                                r"first batch holds label 12, but the model has 10 outputs .*\[0, 9\]"),
    "negative label": (fresh, lambda: _loader(_data(labels=torch.full((32,), -3))), {}, r"holds label -3, but the model has 10 outputs"),
    "bad label later in the data": (fresh, lambda: _loader(_data(labels=torch.cat([torch.arange(8) % 10, torch.full((24,), 11)]))), {},
                                    r"the training data holds label 11, but the model has 10 outputs"),
    "labels shaped wrong": (fresh, lambda: _loader(_data(labels=torch.zeros(32, 2, dtype=torch.long))), {},
                            r"the labels' shape \(8, 2\) does not fit the model's output \(8, 10\)"),
    "wrong channel count": (fresh, lambda: _loader(_data(channels=3)), {},
                            r"the model cannot run on the training loader's first batch \(inputs of shape \(8, 3, 8, 8\), float32\): RuntimeError: .*channels"),
    "NaN inputs": (fresh, lambda: _loader(TensorDataset(torch.full((16, 1, 8, 8), math.nan), torch.arange(16) % 10)), {},
                   r"first batch holds NaN or inf inputs"),
    "one class (dataset)": (fresh, lambda: _loader(_data(labels=torch.full((32,), 3))), {}, r"the training data holds class 3 only"),
    "one class (list of batches)": (fresh, lambda: [(torch.rand(8, 1, 8, 8), torch.zeros(8, dtype=torch.long))] * 3, {},
                                    r"the training data holds class 0 only"),
    "one output": (_one_output, lambda: _loader(_data(labels=torch.zeros(32, dtype=torch.long))), {}, r"the model has 1 output: cross-entropy over one class is always 0"),
    "unreadable first batch": (fresh, lambda: _loader(Raising(bad=3)), {},
                               r"the training loader failed on its first batch: ValueError: item 3 is unreadable"),
    "val loader the model cannot run on": (fresh, lambda: _loader(_data()), {"val_loader": _loader(_data(channels=2))},
                                           r"cannot run on val_loader's first batch"),
    "val labels above the outputs": (fresh, lambda: _loader(_data()), {"val_loader": _loader(_data(labels=torch.arange(32)))},
                                     r"the validation data holds label 31, but the model has 10 outputs"),
    "optimizer of another model": (fresh, lambda: _loader(_data()), {"optimizer": torch.optim.SGD(TinyResNet().parameters(), lr=0.1)},
                                   r"the optimizer holds 14 parameter\(s\) that are not the model's"),
    "arch record that is not one": (fresh, lambda: _loader(_data()), {"arch": "resnet18"}, r"arch must be an arch record"),
    "seed that is not an integer": (fresh, lambda: _loader(_data()), {"seed": "7"}, r"seed must be an integer or None, got '7'"),
    "unknown normalisation": (fresh, lambda: _loader(_data()), {"normalize": "l3"}, r"normalize must be one of None, 'l2'"),
    "train_step: an example the model cannot run on": (
        fresh, lambda: [torch.rand(4, 3, 8, 8)] * 2, {"train_step": lambda m, b: m(b).sum()},
        r"the model cannot run on the example input \(the first item of the first batch\)"),
}


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_refused_before_anything_is_modified(tmp_path, case):
    make_model, make_loader, kwargs, msg = CASES[case]
    model = make_model()
    before = cloned_state(model) if not case.startswith("meta") else None
    ckpt = tmp_path / "ckpt"
    with pytest.raises(FxTaylorError, match=msg) as e:
        fxtaylor.prune(model, make_loader(), checkpoint_dir=ckpt, **{**FAST, **kwargs})
    assert "\n" not in str(e.value)
    if before is not None:
        assert _same_state(model, before) and model.training  # batch-norm statistics and the train flag too
    assert not ckpt.exists()  # a run that fails its checks writes nothing


@pytest.mark.parametrize("where, msg", [
    ("file", r"checkpoint_dir .*afile is a file, not a directory"),
    ("under a file", r"checkpoint_dir .*afile/run cannot be created: .*afile is a file"),
    ("read-only", r"checkpoint_dir .*run is not writable \(in .*, where it would be created\)"),
])
def test_unwritable_checkpoint_dir_is_refused_before_the_first_cut(tmp_path, where, msg):
    (tmp_path / "afile").write_text("keep")
    ckpt = {"file": tmp_path / "afile", "under a file": tmp_path / "afile" / "run", "read-only": _read_only_dir(tmp_path) / "run"}[where]
    model = fresh()
    before, files = cloned_state(model), _snapshot(tmp_path)
    with pytest.raises(FxTaylorError, match=msg):
        fxtaylor.prune(model, loaders()[0], checkpoint_dir=ckpt, **FAST)
    assert _same_state(model, before) and model.stem[0].out_channels == 16
    assert _snapshot(tmp_path) == files


def _read_only_dir(tmp_path):
    """A directory this process cannot write to: a chmod 555 one, or /sys for root (who ignores
    permission bits)."""
    d = tmp_path / "ro"
    d.mkdir()
    d.chmod(0o555)
    try:
        (d / "probe").touch()
    except OSError:
        return d
    (d / "probe").unlink()
    if os.path.isdir("/sys"):
        try:
            (Path("/sys") / "fxtaylor-probe").touch()
        except OSError:
            return Path("/sys")
    pytest.skip("no read-only directory on this machine")


def test_a_batch_that_does_not_fit_mid_run_stops_before_reaching_the_model(tmp_path):
    """Labels fxtaylor cannot see up front: the bad batch is refused before its forward pass
    (no batch-norm update from it), the error names the step and the last good checkpoint."""
    ds = _data(48, labels=torch.arange(48) % 10)
    batches = [(ds.tensors[0][i:i + 8], ds.tensors[1][i:i + 8]) for i in range(0, 48, 8)]
    batches[4] = (batches[4][0], torch.full((8,), 10))  # step 2 (updates 4-6), update 2
    model = fresh()
    with pytest.raises(FxTaylorError, match=r"the batch of step 2, update 2 holds label 10, but the model has 10 outputs .* "
                                            r"\(the last good checkpoint is .*checkpoint.pt\)"):
        fxtaylor.prune(model, HiddenLabels(batches), checkpoint_dir=tmp_path, **FAST)
    assert int(model.stem[1].num_batches_tracked) == 4  # 3 updates of step 1, 1 of step 2: not the bad batch
    ckpt = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert [h["step"] for h in ckpt["history"]] == [0, 1]


def test_a_loader_that_fails_mid_run_is_one_line_with_where_to_resume(tmp_path):
    with pytest.raises(FxTaylorError, match=r"the training loader failed at step 2, update 1: ValueError: item 30 is unreadable "
                                            r"\(the last good checkpoint is .*checkpoint.pt\)"):
        fxtaylor.prune(fresh(), _loader(Raising(bad=30)), checkpoint_dir=tmp_path, **{**FAST, "updates_between_prunes": 3})


# -- 2. stale graphs --------------------------------------------------------------------------------


def test_a_stale_graph_refuses_to_prune_and_changes_nothing():
    import torch_pruning as tp

    model = fresh()
    graph = fxtaylor.trace(model, torch.zeros(1, 1, 8, 8))
    tp.prune_conv_out_channels(model.down[0], [0, 1])  # pruned by someone else, consistently
    tp.prune_batchnorm_out_channels(model.down[1], [0, 1])
    tp.prune_linear_in_channels(model.fc, [0, 1])
    before, shapes = cloned_state(model), repr(model)
    for name in ("down.0", "stem.0"):  # the group that changed, and one that did not
        with pytest.raises(PruneError, match=r"the channel graph is stale: down.0 \(out\) has 30 channels, the graph recorded 32; "
                                             r"the model was changed outside this graph"):
            graph.prune(graph.group_of(name), [0, 3])
        assert _same_state(model, before) and repr(model) == shapes
    for change, msg in [
        (lambda m: setattr(m.block, "0", nn.Conv2d(16, 12, 3, padding=1, bias=False)), r"block.0 \(out\) has 12 channels"),  # replaced
        (lambda m: setattr(m.block[0], "weight", nn.Parameter(m.block[0].weight[:8])), r"block.0 \(out\) has 8 channels"),  # cut by hand
        (lambda m: delattr(m, "down"), r"the model has no down.0 any more"),
    ]:
        model = fresh()
        graph = fxtaylor.trace(model, torch.zeros(1, 1, 8, 8))
        change(model)
        before, shapes = cloned_state(model), repr(model)
        with pytest.raises(PruneError, match=msg):
            graph.prune(graph.group_of("stem.0"), [1])
        assert _same_state(model, before) and repr(model) == shapes


# -- 3. resume is honest ------------------------------------------------------------------------------


def _stop_at(step):
    def on_step(rec):
        if rec["step"] == step:
            raise Stop

    return on_step


def test_resume_refuses_other_settings_or_another_model_and_adds_up_its_timings(tmp_path):
    with pytest.raises(Stop):
        fxtaylor.prune(fresh(), loaders()[0], checkpoint_dir=tmp_path, on_step=_stop_at(2), **FAST)
    files = _snapshot(tmp_path)
    saved = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    for model, kwargs, msg in [
        (fresh(), {"target_flops": 0.3, "maps_per_prune": 2},
         r"was made with other settings; these differ: maps_per_prune \(checkpoint: 4, now: 2\), target_flops \(checkpoint: 0.5, now: 0.3\)"),
        (TinyResNet(width=24), {}, r"was made from another model \(\d+ tensors differ; first: "),
    ]:
        before = cloned_state(model)
        with pytest.raises(FxTaylorError, match=msg):
            fxtaylor.prune(model, loaders()[0], checkpoint_dir=tmp_path, resume=True, **{**FAST, **kwargs})
        assert _same_state(model, before) and _snapshot(tmp_path) == files
    # a killed writer's temporary file is removed by the resumed run
    (tmp_path / ".checkpoint.pt.k1ll3d00.tmp").write_bytes(b"half a checkpoint")
    r = fxtaylor.prune(fresh(), loaders()[0], checkpoint_dir=tmp_path, resume=True, **FAST)
    assert r.reached and sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]
    at = saved["history"][-1]["time_s"]
    assert r.timings["resumed_at_s"] == pytest.approx(at, rel=1e-9)
    assert r.history[3]["time_s"] > at  # the resumed steps continue the run's clock
    assert r.timings["total_s"] >= r.timings["prune_s"] > r.history[-1]["time_s"] - r.history[0]["time_s"] - 1e-6


# -- 4. leftovers and files ------------------------------------------------------------------------------


def test_leftover_temporary_files_are_removed_but_live_ones_kept(tmp_path):
    dead = tmp_path / ".model.pt.abcdefgh.tmp"
    dead.write_bytes(b"x")
    live = tmp_path / ".model.pt.livewrit.tmp"
    live.write_bytes(b"y")
    other = tmp_path / ".notes.txt.tmp"  # not one of ours
    other.write_bytes(b"z")
    import fcntl

    with open(live, "rb") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)  # its writer is alive
        atomic_write(tmp_path / "model.pt", b"new")
        assert not dead.exists() and live.exists() and other.exists()
    assert remove_leftovers(tmp_path) == [live]  # its writer is gone now
    assert (tmp_path / "model.pt").read_bytes() == b"new"


def test_writing_where_one_cannot_is_one_error(tmp_path):
    (tmp_path / "afile").write_text("keep")
    model = fresh()
    with pytest.raises(FxTaylorError, match=r"cannot write .*afile/m.pt: .*afile"):
        fxtaylor.save(model, tmp_path / "afile" / "m.pt", {"kind": "custom"})
    with pytest.raises(FxTaylorError, match=r"arch must be an arch record"):
        fxtaylor.save(model, tmp_path / "m.pt", "resnet18")
    with pytest.raises(FxTaylorError, match=r"weights are on the meta device"):
        fxtaylor.save(fresh().to("meta"), tmp_path / "m.pt", {"kind": "custom"})
    with pytest.raises(OSError):  # a WriteError is still an OSError for code that catches those
        atomic_write(tmp_path / "afile" / "x", b"")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


# -- 5. reports never contradict themselves ----------------------------------------------------------


@pytest.mark.parametrize("reached, reason", [
    (False, "target reached"), (False, "nothing left to prune"), (True, "target reached"),
    (False, "stopped at 47.00% of the FLOPs, outside the target 50% ± 1% (target not reached)"), (None, None),
])
def test_the_status_line_never_contradicts_reached(reached, reason):
    from fxtaylor import report

    line = report.summary_table({"history": [], "reached": reached, "stop_reason": reason}).splitlines()[-1]
    if reached is False:
        assert "target reached" not in line and ("not reached" in line or "missed" in line), line
        assert line.count("not reached") <= 1, line
    else:
        assert "not reached" not in line and "missed" not in line, line


# -- 6. the command: one line, nothing written, traceback only when asked --------------------------------


def _no_build(monkeypatch):
    """Checks that must come before the model is built (or trained): building fails loudly."""
    from fxtaylor import job

    monkeypatch.setattr(job, "build", lambda args: (_ for _ in ()).throw(AssertionError("built before the checks")))


@pytest.mark.parametrize("out, msg", [
    ("afile", "--out {tmp}/afile is a file, not a directory"),
    ("afile/run", "--out {tmp}/afile/run cannot be created: {tmp}/afile is a file"),
])
def test_command_refuses_an_unwritable_out_before_building_anything(tmp_path, capsys, monkeypatch, out, msg):
    _no_build(monkeypatch)
    (tmp_path / "afile").write_text("keep")
    files = _snapshot(tmp_path)
    assert main(["prune", "--out", str(tmp_path / out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"fxtaylor: error: {msg.format(tmp=tmp_path)}") and err.count("\n") == 1, err
    assert _snapshot(tmp_path) == files


def test_command_traceback_only_with_debug(tmp_path, capsys, monkeypatch):
    from fxtaylor import job

    monkeypatch.setattr(job, "build", lambda args: (_ for _ in ()).throw(TypeError("boom")))
    argv = ["prune", "--out", str(tmp_path / "run"), "--no-progress"]
    assert main(argv) == 1  # an unexpected error: one line, and how to see more
    err = capsys.readouterr().err
    assert err == "fxtaylor: error: unexpected TypeError: boom; `--debug` (or FXTAYLOR_DEBUG=1) shows the traceback\n"
    for args, env in (([*argv, "--debug"], None), (["--debug", *argv], None), (argv, "1")):
        if env:
            monkeypatch.setenv("FXTAYLOR_DEBUG", env)
        assert main(args) == 1
        err = capsys.readouterr().err
        assert err.startswith("Traceback (most recent call last):") and err.endswith("fxtaylor: error: unexpected TypeError: boom\n")
    assert not (tmp_path / "run").exists()


def test_command_bad_data_is_one_line_and_writes_nothing(tmp_path, capsys):
    one = image_folder(tmp_path / "one", classes=("a",), per_class=2, splits=("train", "val"))
    common = ["--input-size", "32", "--batch-size", "4", "--workers", "0", *QUICK, "--model", "squeezenet1_1"]
    assert main(["prune", "--data", str(one), "--out", str(tmp_path / "r1"), *common]) == 2
    err = capsys.readouterr().err
    assert err == (f"fxtaylor: error: --data {one}: {one}/train has one class folder (a): the loss of a single class is always 0 "
                   "and ranks nothing; a classification task needs at least two\n")
    data = image_folder(tmp_path / "data", per_class=2)
    for f in (data / "train").rglob("*.png"):
        f.write_bytes(b"not an image")
    assert main(["prune", "--data", str(data), "--out", str(tmp_path / "r2"), *common]) == 2
    info, err = capsys.readouterr().err.split("\n", 1)  # what it prunes, then the error
    assert info.startswith("fxtaylor: squeezenet1_1 on ")
    assert err.startswith(f"fxtaylor: error: the training loader failed on its first batch: cannot read image {data}/train/")
    assert err.endswith(".png (not an image file PIL can read): remove or replace the file\n") and err.count("\n") == 1
    assert not (tmp_path / "r1").exists() and not (tmp_path / "r2").exists()  # no args.json left behind


def test_command_resume_is_honest(tmp_path, capsys, monkeypatch):
    """A corrupt image mid-run: one line naming it and how to resume. Then --resume: flags that
    differ are refused, a killed writer's leftover is removed, the report records the command
    that started the run and adds up the parts; resuming the finished run rewrites nothing."""
    data = image_folder(tmp_path / "data")
    out = tmp_path / "run"
    argv = ["prune", "--data", str(data), "--model", "squeezenet1_1", "--input-size", "32", "--batch-size", "4", "--workers", "0",
            *QUICK, "--out", str(out)]
    real, images = loop.Run._checkpoint, {}

    def corrupt_after_step_2(self):
        real(self)
        if len(self.history) == 3:
            for f in sorted((data / "train").rglob("*.png")):
                images[f] = f.read_bytes()
                f.write_bytes(b"garbage")

    monkeypatch.setattr(loop.Run, "_checkpoint", corrupt_after_step_2)
    assert main(argv) == 2
    err = capsys.readouterr().err.splitlines()[-1]
    assert err.startswith("fxtaylor: error: the training loader failed at step 3, update 1: cannot read image ")
    assert err.endswith(f"(the last good checkpoint is {out}/checkpoint.pt); once fixed, `fxtaylor prune --resume --out {out}` "
                        "continues the run")
    monkeypatch.setattr(loop.Run, "_checkpoint", real)
    for f, b in images.items():
        f.write_bytes(b)
    (out / ".checkpoint.pt.k1ll3d00.tmp").write_bytes(b"half a checkpoint")  # as a SIGKILL mid-write leaves it
    files = _snapshot(out)
    assert main(["prune", "--resume", "--out", str(out), "--target-flops", "0.3", "--model", "resnet50", "--seed", "0"]) == 2
    err = capsys.readouterr().err
    assert err == (f"fxtaylor: error: --resume continues the run in {out} with the settings it was started with, and these flags "
                   "differ from them: --model resnet50 (the run: squeezenet1_1), --target-flops 0.3 (the run: 0.8). Leave them out "
                   "(only --device, --workers, --debug and --no-progress may change), or start a new run with another --out\n")
    assert _snapshot(out) == files
    resume = ["prune", "--resume", "--out", str(out), "--seed", "0", "--workers", "0", "--no-progress"]  # the same values: fine
    assert main(resume) == 0
    capsys.readouterr()
    assert not (out / ".checkpoint.pt.k1ll3d00.tmp").exists()
    rep = json.loads((out / "report.json").read_text())
    assert rep["config"]["command"] == argv  # the command that started the run, not the resume's
    assert rep["config"]["target_flops"] == 0.8 and rep["config"]["resumes"] == [{"argv": resume}]
    t, h = rep["timings"], rep["history"]
    assert t["resumed_at_s"] == pytest.approx(h[2]["time_s"], rel=1e-9) and t["resumed_at_s"] > 0  # the killed part counts
    assert t["total_s"] > h[-1]["time_s"] and t["prune_s"] >= h[-1]["time_s"] - h[0]["time_s"]
    report_bytes = (out / "report.json").read_bytes()
    assert main(["prune", "--resume", "--out", str(out), "--no-progress"]) == 0  # finished: nothing to do
    printed = capsys.readouterr()
    assert "is a finished run: nothing to resume" in printed.err and "stop reason: target reached" in printed.out
    assert (out / "report.json").read_bytes() == report_bytes


def test_report_of_a_foreign_json_is_one_line(tmp_path, capsys):
    (tmp_path / "report.json").write_text(json.dumps({"history": ["x"], "before": "y"}))
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"fxtaylor: error: {tmp_path}/report.json is not a readable fxtaylor report (AttributeError: ") and err.count("\n") == 1
