"""What fxtaylor says, and only that: one error type for every options class, the documented
error classes at top level, no third-party warning or log line from the commands, and a
command line that says which model families it takes (issue 22)."""
from __future__ import annotations

import ast
import builtins
import copy
import dataclasses
import inspect
import os
import pickle
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torchvision

import fxtaylor
from fxtaylor.cli import main
from fxtaylor.errors import ArgumentError, FxTaylorError
from fxtaylor.pruner.training import Training

ROOT = Path(__file__).resolve().parents[1]

# -- one error type for every options class -----------------------------------------------------

# every options dataclass, with one valid set of arguments (a class here that is not decorated,
# or a decorated one missing here, fails test_every_options_class_is_listed)
OPTIONS = {
    fxtaylor.Target: {"resource": "flops", "fraction": 0.5},
    fxtaylor.Schedule: {},
    fxtaylor.Deployment: {},
    Training: {},
}
# the public dataclasses that are results, not options (built by fxtaylor, not by users): a run's
# and an export's outcome, the channel graph's records
RESULTS = {"PruneResult", "Exported", "ChannelGroup", "FeatureMap", "Member"}


def decorated_classes() -> set[str]:
    """Names of the classes under fxtaylor/ decorated with ``@options_class``, by AST."""
    found = set()
    for path in (ROOT / "fxtaylor").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and any(
                    (d.id if isinstance(d, ast.Name) else getattr(d, "attr", None)) == "options_class"
                    for d in node.decorator_list):
                found.add(node.name)
    return found


def test_every_options_class_is_listed():
    assert decorated_classes() == {cls.__name__ for cls in OPTIONS}
    public = {name for name in fxtaylor.__all__ if dataclasses.is_dataclass(getattr(fxtaylor, name))}
    assert public - RESULTS <= {cls.__name__ for cls in OPTIONS}, "a new public options dataclass: decorate and list it"


@pytest.mark.parametrize("cls", OPTIONS, ids=lambda c: c.__name__)
def test_unknown_option_is_one_fxtaylor_error(cls):
    names = [f.name for f in dataclasses.fields(cls)]
    with pytest.raises(ArgumentError) as e:
        cls(**OPTIONS[cls], bad=1)
    assert isinstance(e.value, FxTaylorError)
    assert str(e.value) == f"unknown option 'bad' for {cls.__name__}; options: {', '.join(names)}"
    typo = names[-1][:-1]  # one letter short: the suggestion names the field
    with pytest.raises(FxTaylorError, match=rf"unknown option '{typo}' for {cls.__name__} \(did you mean '{names[-1]}'\?\)"):
        cls(**OPTIONS[cls], **{typo: None})


@pytest.mark.parametrize("cls", OPTIONS, ids=lambda c: c.__name__)
def test_wrong_positional_count_is_one_fxtaylor_error(cls):
    names = [f.name for f in dataclasses.fields(cls)]
    with pytest.raises(FxTaylorError, match=rf"^{cls.__name__} takes at most {len(names)} values by position"):
        cls(*range(len(names) + 1))
    first = names[0]
    with pytest.raises(FxTaylorError, match=rf"^{cls.__name__} got '{first}' twice"):
        cls(OPTIONS[cls].get(first), **{first: OPTIONS[cls].get(first)})


def test_missing_option_is_one_fxtaylor_error():
    with pytest.raises(FxTaylorError, match=r"^Target needs 'resource' and 'fraction'; options: resource, fraction, tolerance$"):
        fxtaylor.Target()
    with pytest.raises(FxTaylorError, match=r"^Target needs 'fraction'"):
        fxtaylor.Target("flops")


@pytest.mark.parametrize("cls", OPTIONS, ids=lambda c: c.__name__)
def test_options_classes_stay_dataclasses(cls):
    """replace, pickling, deepcopy, equality, the signature and frozenness are the dataclass's."""
    obj = cls(**OPTIONS[cls])
    assert pickle.loads(pickle.dumps(obj)) == obj
    assert copy.deepcopy(obj) == obj
    field = dataclasses.fields(cls)[-1]
    assert dataclasses.replace(obj, **{field.name: getattr(obj, field.name)}) == obj
    with pytest.raises(FxTaylorError, match=f"unknown option 'bad' for {cls.__name__}"):
        dataclasses.replace(obj, bad=1)
    assert list(inspect.signature(cls).parameters) == [f.name for f in dataclasses.fields(cls)]
    if cls.__dataclass_params__.frozen:
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(obj, field.name, None)


def test_a_type_error_inside_init_is_not_reported_as_a_bad_call():
    """Only a call that does not bind becomes an options error: a TypeError raised by the
    class's own checks keeps its type and message."""
    from fxtaylor.errors import options_class

    @options_class
    @dataclasses.dataclass
    class Probe:
        a: int = 0

        def __post_init__(self):
            raise TypeError("raised inside")

    with pytest.raises(TypeError, match="raised inside") as e:
        Probe(a=1)
    assert not isinstance(e.value, FxTaylorError)


# -- the documented error classes are fxtaylor's top-level names --------------------------------

def documented_classes(text: str) -> set[str]:
    """Exception and warning class names a doc mentions that are not Python's own nor
    qualified by another package (``torch.cuda.OutOfMemoryError``)."""
    names = set()
    for m in re.finditer(r"(?<![\w.])((?:fxtaylor\.)?)([A-Z]\w*(?:Error|Warning))\b", text):
        if not hasattr(builtins, m.group(2)):
            names.add(m.group(2))
    return names


def errors_section() -> str:
    usage = (ROOT / "docs" / "usage.md").read_text()
    start = usage.index("### Errors")
    end = usage.find("\n## ", start)
    return usage[start:end if end >= 0 else None]


def test_classes_named_in_the_errors_section_are_top_level():
    named = documented_classes(errors_section())
    assert {"FxTaylorError", "TraceError", "PruneError", "WriteError"} <= named
    for name in named:
        assert name in fxtaylor.__all__ and issubclass(getattr(fxtaylor, name), (FxTaylorError, Warning)), name


def test_every_documented_error_class_is_top_level():
    docs = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    for path in docs:
        for name in documented_classes(path.read_text()):
            assert name in fxtaylor.__all__, f"{path.name} names {name}, which is not fxtaylor.{name}"


def test_every_error_class_is_exported():
    from fxtaylor import errors

    defined = {n for n, c in vars(errors).items() if inspect.isclass(c) and issubclass(c, FxTaylorError)}
    assert defined <= set(fxtaylor.__all__)


# -- no third-party noise -----------------------------------------------------------------------

def run_python(code: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}  # the user's default filters
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT) + os.pathsep + env.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=300)


def test_import_prints_nothing():
    """``import fxtaylor`` prints nothing: torch.utils.benchmark (the latency clock) imports
    torch.utils.cpp_extension, which logs "No CUDA runtime is found" on a CPU-only torch
    wherever a CUDA toolkit is found; fxtaylor mutes that one logger for the import. CUDA_HOME
    points at a folder that exists, so the message is logged on any machine without CUDA, and
    the logger works again after the import."""
    done = run_python("""
        import logging, os, sys
        os.environ["CUDA_HOME"] = os.getcwd()  # a toolkit "found": the message is logged where CUDA is absent
        import torch
        seen = []
        class Keep(logging.Handler):
            def emit(self, record):
                seen.append(record.getMessage())
        logging.getLogger("torch.utils.cpp_extension").addHandler(Keep())
        import fxtaylor
        assert "torch.utils.benchmark" in sys.modules
        torch.utils.cpp_extension.logger.warning("after the import: shown")
        print(seen, torch.cuda.is_available())
    """)
    assert done.returncode == 0, done.stderr
    assert [line for line in done.stderr.splitlines() if "shown" not in line] == []
    assert done.stdout in ("['after the import: shown'] False\n", "['after the import: shown'] True\n")


def test_commands_print_no_third_party_lines(tmp_path):
    """--help of every command, ``inspect`` at 32 px and ``report`` of a run: stderr holds
    nothing but fxtaylor's own lines (here: none at all)."""
    from test_report import make_report

    from fxtaylor import report

    report.write(tmp_path / "run", make_report())
    argvs = [["--help"], ["prune", "--help"], ["inspect", "--help"], ["export", "--help"], ["report", "--help"],
             ["inspect", "--model", "resnet18", "--input-size", "32"], ["report", str(tmp_path / "run")]]
    done = run_python(f"""
        import sys
        from fxtaylor.cli import main
        for argv in {argvs!r}:
            try:
                code = main(argv)
            except SystemExit as e:  # --help
                code = e.code
            print("exit", code, file=sys.stderr)
    """)
    assert done.returncode == 0, done.stderr
    others = [line for line in done.stderr.splitlines() if not line.startswith(("exit ", "fxtaylor"))]
    assert others == [], "\n".join(others)
    assert done.stderr.splitlines() == ["exit 0"] * len(argvs)
    assert "resnet18: 13 groups" in done.stdout and "report.json" in done.stdout


# -- the command line's model families ----------------------------------------------------------

FAMILY_DOC = "Detection, segmentation, video and optical flow"


@pytest.mark.parametrize("module, family", [("detection", "detection"), ("segmentation", "segmentation"),
                                            ("video", "video"), ("optical_flow", "optical-flow")])
def test_other_families_are_refused_with_their_family_and_the_python_way(capsys, module, family):
    name = torchvision.models.list_models(module=getattr(torchvision.models, module))[0]
    assert main(["inspect", "--model", name]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"fxtaylor: error: '{name}' is a torchvision {family} model; models are built by name "
                          "for classification only") and err.count("\n") == 1
    assert "fxtaylor.prune(model, loader" in err and f'docs/usage.md, "{FAMILY_DOC}"' in err
    assert ("batch_loss=" in err) == (family != "video")  # video (clips, labels) takes the default loss
    assert f"### {FAMILY_DOC}" in (ROOT / "docs" / "usage.md").read_text()  # the section it points to


def test_quantized_model_names_its_float_model(capsys):
    assert main(["inspect", "--model", "quantized_resnet18"]) == 2
    err = capsys.readouterr().err
    assert "is a torchvision quantized model" in err and "prune the float model 'resnet18'" in err


def test_unknown_model_suggests_close_names(capsys):
    assert main(["inspect", "--model", "resnet19"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fxtaylor: error: unknown model 'resnet19': not a torchvision classification model")
    assert "did you mean 'resnet18'" in err and err.count("\n") == 1


@pytest.mark.parametrize("command", ["prune", "inspect"])
def test_help_says_classification(command):
    from fxtaylor.cli import build_parser

    parser = build_parser()
    text = " ".join(parser.commands[command].format_help().split())
    assert "Classification models only" in text and "batch_loss" in text
    model_help = next(a.help for a in parser.commands[command]._actions if "--model" in a.option_strings)
    assert "classification model name" in model_help
    listing = " ".join(parser.format_help().split())
    assert "prune a classification model" in listing and "channel groups of a classification model" in listing
