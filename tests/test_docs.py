"""Documentation that cannot drift: every fenced block of README.md and docs/*.md is run,
checked or compared here, or says why not (tests/doc_snippets.py explains the markers). A
documented call whose signature changes, a renamed option, a flag a command no longer takes,
an output whose wording changed: each fails this file."""
from __future__ import annotations

import contextlib
import copy
import io
import itertools
import re

import pytest
import torch

import doc_snippets
from doc_snippets import Block, blocks, check_command, commands, matches

BLOCKS = blocks()


def _ids(kind):
    return [b for b in BLOCKS if b.mode == kind]


# -- what a fragment assumes -------------------------------------------------------------

def _digits_loaders(n_train=128, n_val=64, size=32):
    from torch.utils.data import DataLoader, Subset

    from fxtaylor.datasets import digits

    g = torch.Generator().manual_seed(0)
    train = DataLoader(Subset(digits("train", size=size, channels=3), range(n_train)), batch_size=32, shuffle=True, generator=g)
    val = DataLoader(Subset(digits("test", size=size, channels=3), range(n_val)), batch_size=n_val)
    return train, val


def setup_imports(ns):
    """What the pages import at their top (a fragment continues a page)."""
    import torch.nn as nn
    import torch.nn.functional as F
    import torchvision

    import fxtaylor

    ns.update(torch=torch, torchvision=torchvision, fxtaylor=fxtaylor, F=F, nn=nn)


def setup_classifier(ns):
    """A user's classifier and task: an untrained ResNet-18 on the bundled digits at 32 px
    (128 training images), its optimizer, a training step, an example input."""
    import torchvision

    setup_imports(ns)
    train, val = _digits_loaders()
    model = torchvision.models.resnet18(num_classes=10)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

    def train_step(model, batch):
        images, labels = batch
        loss = torch.nn.functional.cross_entropy(model(images), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss

    x = torch.randn(1, 3, 32, 32)
    ns.update(model=model, loader=train, train_loader=train, val_loader=val, opt=opt, x=x, example_inputs=x,
              batches=itertools.cycle(train), train_step=train_step, my_train_step=train_step)


def setup_pruned(ns):
    """:func:`setup_classifier` plus its channel graph and a pruned copy (``pruned``,
    ``pruned_model``)."""
    import fxtaylor

    setup_classifier(ns)
    pruned = copy.deepcopy(ns["model"])
    g = fxtaylor.trace(pruned, ns["x"])
    for group in g.prunable_groups[::2]:
        g.prune(group, list(range(group.size // 2)))
    ns.update(graph=fxtaylor.trace(ns["model"], ns["x"]), pruned=pruned, pruned_model=pruned)


def setup_extension(ns):
    """A model with a custom module (``MyGain``: a learned per-channel gain) and a custom
    function (``my_act``), as the page on adding a rule assumes; the global op table is
    restored after the block (the ``registry`` fixture)."""
    import torch.nn as nn

    from fxtaylor.graph import ops, rules

    setup_imports(ns)

    class MyGain(nn.Module):
        def __init__(self, n):
            super().__init__()
            self.register_buffer("gain", torch.ones(n))

        def forward(self, x):
            return x * self.gain[None, :, None, None]

    def my_act(x):
        return torch.relu(x) * 0.5

    def scale_by_channel(c):
        f = rules.factor_on(c.ann(0), 1)
        if f is not None:
            c.atoms.alias(c.name, "norm", "norm", f.atoms, type(c.module).__name__)
        return c.ann(0)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1, self.gain, self.conv2 = nn.Conv2d(3, 8, 3), MyGain(8), nn.Conv2d(8, 4, 3)

        def forward(self, x):
            return self.conv2(my_act(self.gain(self.conv1(x))))

    model = Net()
    ns.update(MyGain=MyGain, my_act=my_act, scale_by_channel=scale_by_channel, model=model, x=torch.randn(1, 3, 16, 16),
              OpSpec=ops.OpSpec, rules=rules, my_conv_spec=ops.OpSpec(rule=rules.passthrough))


def setup_convnext(ns):
    """A model whose channels are tied through layer norms over channels (ConvNeXt), at 32 px."""
    import torchvision

    setup_classifier(ns)
    model = torchvision.models.convnext_tiny(num_classes=10)
    ns.update(model=model, opt=torch.optim.SGD(model.parameters(), lr=1e-3))


def setup_families(ns):
    """What the per-family fragments assume besides the model: a batch's parts and the
    user's metrics (bound calls: they are not run)."""
    setup_classifier(ns)
    img = torch.rand(3, 64, 64)
    ns.update(images=[img], img1=img[None], img2=img[None], my_map=lambda m: 0.0, my_miou=lambda m: 0.0,
              my_negative_epe=lambda m: 0.0)


SETUPS = {"imports": setup_imports, "classifier": setup_classifier, "pruned": setup_pruned, "extension": setup_extension,
          "convnext": setup_convnext, "families": setup_families}


def _resolve(dotted: str):
    """``fxtaylor.latency.LatencyModel.build`` → (the object holding it, its name, the callable)."""
    import importlib

    parts = dotted.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        try:
            owner = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for name in parts[cut:-1]:
            owner = getattr(owner, name)
        return owner, parts[-1], getattr(owner, parts[-1])
    raise AssertionError(f"cannot resolve {dotted}")


def _autospec_result():
    """An autospec of :class:`fxtaylor.PruneResult` with its fields: ``result.export(...)``,
    ``result.before`` and ``result.save(...)`` are checked against the real class."""
    import dataclasses
    from unittest import mock

    from fxtaylor import PruneResult

    result = mock.create_autospec(PruneResult, instance=True)
    for f in dataclasses.fields(PruneResult):
        setattr(result, f.name, mock.MagicMock(name=f"result.{f.name}"))
    return result


def _bound(dotted: str, real):
    """What a bound call does instead of running: bind the arguments to ``real``'s signature
    (a TypeError names the keyword) and, for ``fxtaylor.prune``, check its options with the
    validators the real call runs first."""
    import inspect

    sig = inspect.signature(real)

    def call(*args, **kwargs):
        bound = sig.bind(*args, **kwargs)
        if {"target", "schedule", "options"} <= set(sig.parameters):  # fxtaylor.prune, fxtaylor.Pruner
            from fxtaylor.pruner.options import split_options

            a = bound.arguments
            split_options(a.get("target"), a.get("schedule"), dict(a.get("options", {})))  # target_flops=, ... by name
        if dotted == "fxtaylor.prune":
            return _autospec_result()
        from unittest import mock

        return mock.MagicMock(name=f"{dotted}(...)")
    return call


@contextlib.contextmanager
def _binding(names):
    from unittest import mock

    with contextlib.ExitStack() as stack:
        for dotted in names:
            owner, attr, real = _resolve(dotted)
            stack.enter_context(mock.patch.object(owner, attr, _bound(dotted, real)))
        yield


@pytest.fixture
def registry():
    """The global op table as it was: a documented ``ops.register`` must not leak into other tests."""
    from fxtaylor.graph import ops

    saved = {name: dict(getattr(ops, name)) for name in ("SPECS", "FUNCTION_RULES", "METHOD_RULES")}
    yield
    for name, table in saved.items():
        live = getattr(ops, name)
        for key in [k for k in live if k not in table or live[k] is not table[k]]:
            del live[key]  # item by item: the tables count their changes (ops._Table)
        for key in [k for k in table if k not in live]:
            live[key] = table[key]


SESSIONS: dict[str, dict] = {}


def run_block(b: Block, tmp_path_factory) -> dict:
    if b.session and b.session in SESSIONS:
        ns = SESSIONS[b.session]
    else:
        ns = {"__name__": "__doc__"}
        if b.session:
            ns["__cwd__"] = tmp_path_factory.mktemp(b.session.replace("/", "_"))
            SESSIONS[b.session] = ns
    cwd = ns.get("__cwd__") or tmp_path_factory.mktemp("doc")
    if b.setup:
        assert b.setup in SETUPS, f"{b.id}: unknown setup {b.setup!r}"
        SETUPS[b.setup](ns)
    code = compile(b.substituted(), b.id, "exec")
    printed = io.StringIO()
    with contextlib.chdir(cwd), _binding(b.binds), contextlib.redirect_stdout(printed):
        exec(code, ns)
    ns["__printed__"] = ns.get("__printed__", "") + printed.getvalue()
    return ns


def _session_order(b: Block) -> int:
    return BLOCKS.index(b)


@pytest.mark.parametrize("b", _ids("run"), ids=lambda b: b.id)
def test_python_block_runs(b, tmp_path_factory, registry):
    """Each Python block runs as documented (with its page's session and marked sizes)."""
    if b.session:  # a later block of a session runs after the earlier ones, even alone (-k)
        ns = SESSIONS.get(b.session, {})
        if b.id in ns.get("__ran__", ()):
            return  # an output check ran the session first
        for earlier in [e for e in BLOCKS if e.session == b.session and _session_order(e) < _session_order(b)]:
            if earlier.id not in SESSIONS.get(b.session, {}).get("__ran__", ()):
                run_block(earlier, tmp_path_factory).setdefault("__ran__", set()).add(earlier.id)
    ns = run_block(b, tmp_path_factory)
    ns.setdefault("__ran__", set()).add(b.id)


@pytest.mark.parametrize("b", _ids("check"), ids=lambda b: b.id)
def test_shell_block_names_what_exists(b):
    """Each command of a shell block is taken by what it names (parser, script, extra, path)."""
    cmds = commands(b.substituted())
    assert cmds, f"{b.id}: an empty shell block"
    for words, heredoc in cmds:
        check_command(words, heredoc, b.id)


@pytest.mark.parametrize("b", _ids("skip"), ids=lambda b: b.id)
def test_skipped_block_says_why(b):
    """A block that is not run names why; its Python still compiles and its commands exist."""
    assert len(b.reason) >= 12, f"{b.id}: say why it is not run, got {b.reason!r}"
    if b.lang == "python":
        compile(b.code, b.id, "exec")
    elif b.lang == "bash":
        for words, heredoc in commands(b.code):
            check_command(words, heredoc, b.id)


# -- documented output -------------------------------------------------------------------

def output_gate_error(tmp_path):
    """graph.md: the TraceError for a module with control flow on a tensor's value (the module
    lives in a file model.py, as the page's user's does)."""
    import importlib.util

    import fxtaylor

    (tmp_path / "model.py").write_text("\n" * 13 + GATE_MODULE)  # its branch on line 24, as the page shows
    spec = importlib.util.spec_from_file_location("doc_gate_model", tmp_path / "model.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    with pytest.raises(fxtaylor.TraceError) as e:
        fxtaylor.trace(mod.Net(), torch.randn(1, 3, 8, 8))
    return str(e.value)


GATE_MODULE = """import torch
import torch.nn as nn


class Gate(nn.Module):  # nothing else in the model: nothing of it traces
    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(4, 3, 3, 3))

    def forward(self, x):
        if x.mean() > 0:
            return torch.nn.functional.conv2d(x, self.weight)
        return x


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.gate = Gate()

    def forward(self, x):
        return self.gate(x)
"""


def output_partial_trace(tmp_path):
    """graph.md: what a partially traced detection model's graph says."""
    import torchvision

    import fxtaylor

    model = torchvision.models.detection.fasterrcnn_mobilenet_v3_large_320_fpn(weights=None, weights_backbone=None, num_classes=5)
    graph = fxtaylor.trace(model, [torch.rand(3, 128, 160)])
    return graph.summary()


def _cli(argv):
    from fxtaylor import cli

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert cli.main(argv) == 0
    return out.getvalue()


def output_latency_summary(tmp_path):
    """usage.md: the summary of a run to a latency target. Its wording is checked, not its
    numbers, so the latency is the control-logic tests' injected one (a function of the
    architecture, tests/test_latency_target.py): a real measurement costs a minute here."""
    import fxtaylor
    from test_latency_target import ConvCost, Injected, Net, conv_cost, loader

    torch.manual_seed(0)
    data = loader()
    result = fxtaylor.prune(Net(), data, val_loader=data, target_latency=0.5, measure_fn=Injected(conv_cost), cost=ConvCost(),
                            updates_between_prunes=2, maps_per_prune=4, progress=False)
    return result.summary()


def output_export_cli(tmp_path):
    """export.md: ``fxtaylor export RUN_DIR`` on the README session's pruned model."""
    from fxtaylor import report

    result = _session("readme")["result"]
    run = tmp_path / "runs" / "resnet18-doc"
    run.mkdir(parents=True)
    result.save(run / "model.pt")
    report.write(run, result.report("model.pt"))
    return _cli(["export", str(run)])


OUTPUTS = {"gate-error": output_gate_error, "partial-trace": output_partial_trace, "latency-summary": output_latency_summary,
           "export-cli": output_export_cli}


def _session(name):
    """The namespace of a page's session, its blocks run (in page order) if they have not."""
    for b in [e for e in BLOCKS if e.session == name and e.mode == "run"]:
        if name not in SESSIONS or b.id not in SESSIONS[name].get("__ran__", ()):
            run_block(b, _FACTORY[0]).setdefault("__ran__", set()).add(b.id)
    return SESSIONS[name]


_FACTORY = []


@pytest.fixture(autouse=True)
def _factory(tmp_path_factory):
    _FACTORY[:] = [tmp_path_factory]


@pytest.mark.parametrize("b", _ids("output"), ids=lambda b: b.id)
def test_documented_output_is_what_runs_print(b, tmp_path, monkeypatch):
    """Each output block is what the library prints now (numbers masked: they are one run's)."""
    assert b.output, f"{b.id}: an output block must name what makes it (<!-- doctest: output=NAME -->) or be skipped"
    shown = b.code
    monkeypatch.setenv("FXTAYLOR_CACHE", str(tmp_path / "cache"))
    if b.output == "command":  # "$ fxtaylor ..." and what it prints
        first, _, shown = shown.partition("\n")
        assert first.startswith("$ fxtaylor "), f"{b.id}: output=command shows the command on its first line"
        actual = _cli(first.split()[2:])
    elif b.output in OUTPUTS:
        actual = OUTPUTS[b.output](tmp_path)
    else:
        session, _, expr = b.output.partition(":")
        assert any(x.session == session for x in BLOCKS), f"{b.id}: unknown output {b.output!r}"
        actual = str(eval(expr, _session(session)))
    problem = matches(shown, actual)
    assert problem is None, f"{b.id}: {problem}"


def test_every_block_is_classified():
    """No block is left unchecked by accident: each page block is run, checked, compared or
    skipped with a reason, and sessions are used in page order."""
    kinds = {b.mode for b in BLOCKS}
    assert kinds <= {"run", "check", "output", "skip"}
    assert len(BLOCKS) >= 35, len(BLOCKS)
    for b in BLOCKS:
        assert b.lang in ("python", "bash", "text", ""), f"{b.id}: tag the block python, bash or text"
        if b.mode == "output":
            assert b.output, f"{b.id}: an untagged block is output: name what makes it or skip it"


def test_option_tables_are_generated_from_the_code():
    """Each option table is what tests/doc_tables.py generates from the parser and the option
    dataclasses (``python tests/doc_tables.py`` rewrites them): every option is in it."""
    import doc_tables

    found = []
    for page in doc_snippets.PAGES:
        for name, written, generated in doc_tables.tables(page.read_text()):
            found.append(name)
            assert written == generated, f"{page.name}: the table {name!r} is not what the code says; run python tests/doc_tables.py"
    assert {"cli prune", "fields fxtaylor.Schedule", "fields fxtaylor.Deployment"} <= set(found), found


@pytest.mark.parametrize("call, page, marker", [("fxtaylor.prune", "usage.md", "every documented keyword at once")])
def test_every_keyword_is_in_the_documented_call(call, page, marker):
    """The page's full call names every keyword the function takes (the bound run above checks
    the reverse: that each name it passes exists): a new keyword cannot be left out."""
    import inspect

    owner, attr, fn = _resolve(call)
    block = next(b for b in BLOCKS if b.page.name == page and marker in b.reason)
    named = set(re.findall(r"\b(\w+)=", block.code))
    params = [p.name for p in inspect.signature(fn).parameters.values()
              if p.kind is inspect.Parameter.KEYWORD_ONLY]
    missing = [p for p in params if p not in named]
    assert not missing, f"{block.id}: the documented {call}(...) leaves out {missing}"
