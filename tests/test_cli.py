"""The `fxtaylor` command (README's first quick-start command)."""
from fxtaylor.cli import main


def test_inspect_lists_groups(capsys):
    assert main(["inspect", "--model", "resnet18", "--input-size", "64"]) == 0
    out = capsys.readouterr().out
    assert "layer1.0.conv1" in out and "frozen: reaches the model output" in out
    assert out.strip().endswith("resnet18: 13 groups, 12 prunable with 2868 removable channels")


def test_unknown_model_is_a_one_line_error(capsys):
    assert main(["inspect", "--model", "resnet19"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fxtaylor: error: unknown model 'resnet19'") and err.count("\n") == 1
