"""The `fxtaylor` command (README's first quick-start command)."""
from fxtaylor.cli import main


def test_inspect_lists_groups(capsys):
    assert main(["inspect", "--model", "resnet18", "--input-size", "64"]) == 0
    out = capsys.readouterr().out
    assert "layer1.0.conv1" in out and "frozen: reaches the model output" in out
    assert "resnet18: 13 groups, 12 prunable with 2868 removable channels; 0.149 GFLOPs at 64×64" in out
    rows = {line.split()[0]: line.split() for line in out.splitlines()[1:14]}
    share = {g: float(r[3].rstrip("%")) for g, r in rows.items()}
    assert share["0"] > share["1"] > 0 and share["12"] == 0  # the stem group costs most; fc is frozen


def test_unknown_model_is_a_one_line_error(capsys):
    assert main(["inspect", "--model", "resnet19"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fxtaylor: error: unknown model 'resnet19'") and err.count("\n") == 1


# -- fxtaylor prune / report ---------------------------------------------------------------------

import json  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

import fxtaylor  # noqa: E402
from helpers import image_folder  # noqa: E402

QUICK = ["--target-flops", "0.8", "--maps-per-prune", "150", "--updates-between-prunes", "2", "--no-progress"]


def test_prune_on_an_image_folder_writes_a_complete_run(tmp_path, capsys):
    data = image_folder(tmp_path / "data")
    out = tmp_path / "run"
    assert main(["prune", "--data", str(data), "--model", "resnet18", "--input-size", "32", "--batch-size", "4",
                 "--workers", "0", "--out", str(out), *QUICK]) == 0
    printed = capsys.readouterr().out
    names = {p.name for p in out.iterdir()}
    assert {"model.pt", "report.json", "accuracy_vs_flops.png", "channels.png", "checkpoint.pt", "args.json"} <= names
    rep = json.loads((out / "report.json").read_text())
    assert rep["reached"] and 0.8 * 0.99 <= rep["after"]["flops"] / rep["before"]["flops"] <= 0.8
    assert rep["config"]["model"] == "resnet18" and rep["environment"]["torch"] == torch.__version__
    assert rep["before"]["accuracy"] is not None and rep["after"]["latency_ms"] > 0
    assert f"{rep['after']['flops'] / rep['before']['flops']:.2f}×" in printed
    model = fxtaylor.load(out / "model.pt")  # rebuilt by name, weights only
    assert fxtaylor.flops.count(model, torch.zeros(1, 3, 32, 32))[0] == rep["after"]["flops"]
    assert model.fc.out_features == 3
    # fxtaylor report prints the same table
    assert main(["report", str(out)]) == 0
    assert "speed-up" in capsys.readouterr().out
    # the run directory is not overwritten by accident
    assert main(["prune", "--data", str(data), "--out", str(out), *QUICK]) == 2
    assert "already holds a run: pass --resume" in capsys.readouterr().err


def test_embedded_default_trains_once_then_uses_the_cache(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("FXTAYLOR_CACHE", str(tmp_path / "cache"))
    args = ["prune", "--finetune-epochs", "1", *QUICK]
    assert main([*args, "--out", str(tmp_path / "r1")]) == 0
    first = capsys.readouterr()
    assert "digits (scikit-learn, 1348 train / 449 test, 32×32); trained 1 epochs" in first.err
    assert len(list((tmp_path / "cache").glob("digits32-resnet18-e1-*.pt"))) == 1
    assert main([*args, "--out", str(tmp_path / "r2")]) == 0
    assert "trained model from cache" in capsys.readouterr().err
    r1, r2 = (json.loads((tmp_path / r / "report.json").read_text()) for r in ("r1", "r2"))
    assert r1["before"]["accuracy"] == r2["before"]["accuracy"]  # the same trained model
    # another training setting is another model (the key missed --finetune-lr, issue 19's study)
    assert main([*args, "--finetune-lr", "0.01", "--out", str(tmp_path / "r3")]) == 0
    assert "trained model from cache" not in capsys.readouterr().err
    assert len(list((tmp_path / "cache").glob("digits32-resnet18-e1-*.pt"))) == 2
    assert [h["flops"] for h in r1["history"]] == [h["flops"] for h in r2["history"]]  # same seed, same run


@pytest.mark.parametrize("argv, message", [
    (["prune", "--model", "resnet19"], "fxtaylor: error: unknown model 'resnet19'"),
    (["prune", "--data", "{data}"], "has no class sub-folders"),
    (["prune", "--data", "{missing}"], "no train/ folder"),
    (["prune", "--resume", "--out", "{empty}"], "nothing to resume in"),
    (["prune", "--resume"], "--resume needs --out RUN_DIR"),
    (["report", "{empty}"], "report.json"),
])
def test_prune_bad_input_is_a_one_line_error(tmp_path, capsys, argv, message):
    (tmp_path / "data" / "train").mkdir(parents=True)
    (tmp_path / "data" / "val").mkdir()
    (tmp_path / "empty").mkdir()
    paths = {"data": str(tmp_path / "data"), "missing": str(tmp_path / "nope"), "empty": str(tmp_path / "empty")}
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    argv = [a.format(**paths) for a in argv]
    if argv[0] == "prune" and "--out" not in argv and "--resume" not in argv:
        argv += ["--out", str(tmp_path / "run")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.startswith("fxtaylor: error:") and err.count("\n") == 1
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before  # nothing written


@pytest.mark.parametrize("flag, value", [("--target-flops", "1.5"), ("--target-flops", "0"), ("--flops-reg", "-0.1")])
def test_out_of_range_numbers_are_refused_by_the_parser(capsys, flag, value):
    with pytest.raises(SystemExit) as e:
        main(["prune", flag, value])
    assert e.value.code == 2
    assert "must be" in capsys.readouterr().err


def test_resume_continues_an_interrupted_command(tmp_path, capsys, monkeypatch):
    data = image_folder(tmp_path / "data")
    common = ["--data", str(data), "--input-size", "32", "--batch-size", "4", "--workers", "0", *QUICK, "--maps-per-prune", "80"]
    assert main(["prune", *common, "--out", str(tmp_path / "full")]) == 0
    from fxtaylor.pruner import loop

    real = loop.Run._checkpoint

    def killed_after_step_2(self):
        real(self)
        if len(self.history) == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(loop.Run, "_checkpoint", killed_after_step_2)
    assert main(["prune", *common, "--out", str(tmp_path / "cut")]) == 130
    assert "--resume --out RUN_DIR" in capsys.readouterr().err
    assert not (tmp_path / "cut" / "report.json").exists()
    monkeypatch.setattr(loop.Run, "_checkpoint", real)
    assert main(["prune", "--resume", "--out", str(tmp_path / "cut"), "--no-progress"]) == 0
    full, cut = (json.loads((tmp_path / r / "report.json").read_text()) for r in ("full", "cut"))
    strip = lambda h: [{k: v for k, v in r.items() if k != "time_s"} for r in h]  # noqa: E731
    assert len(full["history"]) > 3 and strip(full["history"]) == strip(cut["history"])
    a, b = fxtaylor.load(tmp_path / "full" / "model.pt"), fxtaylor.load(tmp_path / "cut" / "model.pt")
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())


def test_weights_from_files(tmp_path, capsys):
    """A plain state dict (classifier of another size skipped), a model saved by fxtaylor (pruned
    further: its record nests), and a pickled module (refused)."""
    import torchvision

    data = image_folder(tmp_path / "data")
    common = ["--data", str(data), "--input-size", "32", "--batch-size", "4", "--workers", "0", *QUICK]
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), tmp_path / "sd.pt")
    assert main(["prune", *common, "--weights", str(tmp_path / "sd.pt"), "--out", str(tmp_path / "r1")]) == 0
    assert "not loaded (shape differs, trained from scratch): fc.bias, fc.weight" in capsys.readouterr().out
    assert main(["prune", *common, "--weights", str(tmp_path / "r1" / "model.pt"), "--out", str(tmp_path / "r2")]) == 0
    r1, r2 = (json.loads((tmp_path / r / "report.json").read_text()) for r in ("r1", "r2"))
    assert r2["before"]["flops"] == r1["after"]["flops"]
    twice = fxtaylor.load(tmp_path / "r2" / "model.pt")
    arch = torch.load(tmp_path / "r2" / "model.pt", weights_only=True)["arch"]
    assert arch["kind"] == "pruned" and arch["base"]["kind"] == "pruned" and arch["base"]["base"]["name"] == "resnet18"
    assert fxtaylor.flops.count(twice, torch.zeros(1, 3, 32, 32))[0] == r2["after"]["flops"]
    torch.save(torchvision.models.resnet18(weights=None), tmp_path / "module.pt")
    assert main(["prune", *common, "--weights", str(tmp_path / "module.pt"), "--out", str(tmp_path / "r3")]) == 2
    assert "it needs pickled code" in capsys.readouterr().err and not (tmp_path / "r3").exists()


def test_prune_to_a_latency_target_on_an_image_folder(tmp_path, capsys, monkeypatch):
    """--target-latency with a deployment from the command line: recorded, measured, summarised."""
    monkeypatch.setenv("FXTAYLOR_CACHE", str(tmp_path / "cache"))
    data = image_folder(tmp_path / "data")
    out = tmp_path / "run"
    assert main(["prune", "--data", str(data), "--model", "resnet18", "--input-size", "32", "--batch-size", "4",
                 "--workers", "0", "--out", str(out), "--target-latency", "0.9", "--latency-batch", "8",
                 "--maps-per-prune", "300", "--updates-between-prunes", "1", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    rep = json.loads((out / "report.json").read_text())
    assert rep["target_latency"] == 0.9 and rep["target_flops"] is None and rep["config"]["target"] == "latency"
    assert rep["config"]["deployment"]["batch_size"] == 8 and rep["config"]["deployment"]["device"] == "cpu"
    assert rep["config"]["cost_model"]["table"]["layers"] > 10 and rep["after"]["latency_iqr_ms"] >= 0
    assert "on cpu, batch 8, float32" in printed and "channel pruning can remove at most" in printed


@pytest.mark.parametrize("args, message", [
    (["--target-latency", "0.5", "--target-flops", "0.5"], "give --target-flops or --target-latency, not both"),
    (["--target-latency", "0.5", "--latency-dtype", "float8"], "latency dtype 'float8' is unknown"),
    (["--target-latency", "0.5", "--latency-format", "nhwc"], "latency memory format 'nhwc' is unknown"),
    (["--latency-device", "cuda:9"], "cuda"),
])
def test_bad_latency_flags_are_one_line_errors_before_anything_is_written(tmp_path, capsys, args, message):
    out = tmp_path / "run"
    assert main(["prune", "--out", str(out), "--no-progress", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fxtaylor: error: ") and message in err and err.count("\n") == 1
    assert not out.exists()
