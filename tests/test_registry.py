"""The op registry (fxtaylor/graph/ops.py): op specs for one trace (``trace(..., specs=...)``),
checked up front; and the layering that lets ops.py be the one registry — rules.py and
surgery.py hold only the functions its rows point to and never import it."""
import ast
import copy
from pathlib import Path

import pytest
import torch
import torch.nn as nn

import fxtaylor
from fxtaylor.errors import FxTaylorError
from fxtaylor.graph import ops, rules
from fxtaylor.graph.check import dead_channel_diff

from deadcheck import randomize_norms

X = torch.randn(1, 3, 16, 16)
GRAPH_DIR = Path(fxtaylor.__file__).parent / "graph"


def cbr(cin, cout):
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU())


class Gain(nn.Module):
    """A per-channel scale with its own forward: no global row, so fx traces into it."""

    def __init__(self, c):
        super().__init__()
        self.gain = nn.Parameter(torch.rand(c) + 0.5)

    def forward(self, x):
        return x * self.gain[None, :, None, None]


def scale_by_channel(c):
    """Gain's rule: its ``gain`` follows the channels on dim 1 (a 'norm' space)."""
    f = rules.factor_on(c.ann(0), 1)
    if f is not None:
        c.atoms.alias(c.name, "norm", "norm", f.atoms, type(c.module).__name__)
    return c.ann(0)


GAIN = ops.OpSpec(rule=scale_by_channel, channel_buffers=("gain",), cost=ops.SINGLE, same_shape=True)


def model():
    return randomize_norms(nn.Sequential(cbr(3, 8), Gain(8), cbr(8, 4)))


def spaces(graph, group):
    return {(m.name, m.role) for m in group.members}


def global_rows():
    return dict(ops.SPECS), ops.SPECS.version


# -- per-trace specs ------------------------------------------------------------------------------


@pytest.mark.parametrize("key", [Gain, f"{Gain.__module__}.{Gain.__qualname__}"], ids=["class", "name"])
def test_specs_for_one_trace_make_a_leaf_that_prunes_exactly(key):
    before = global_rows()
    m = model()
    graph = fxtaylor.trace(m, X, specs={key: GAIN})
    g = graph.group_of("0.0")
    assert graph.spec_of(m[1]) is GAIN and ops.spec_of(m[1]) is None  # the graph's row, not a global one
    assert g.prunable and ("1", "norm") in spaces(graph, g) and graph.opaque == []
    diff, same_shape = dead_channel_diff(m, X, g.index, [1, 6], relative=True, specs={key: GAIN})
    assert same_shape and diff <= 1e-5
    graph.prune(g, [1, 6])  # the surgery comes from the graph's rows: channel_buffers
    assert m[1].gain.numel() == 6 and m(X).shape == (1, 4, 16, 16)
    graph.check_current()  # the widths check reads the same rows
    assert global_rows() == before


def test_the_same_type_without_specs_is_traced_into_as_before():
    m = model()
    with_specs = fxtaylor.trace(copy.deepcopy(m), X, specs={Gain: GAIN})
    plain = fxtaylor.trace(m, X)  # after a trace with specs: nothing of them left behind
    g = plain.group_of("0.0")
    assert plain.spec_of(m[1]) is None and ops.spec_of(m[1]) is None
    assert ("1", "norm") not in spaces(plain, g) and ("1.gain", "param0") in spaces(plain, g)  # a free parameter
    assert ("1", "norm") in spaces(with_specs, with_specs.group_of("0.0"))
    assert Gain not in ops.SPECS


def test_specs_win_over_global_rows_for_that_trace_only():
    m = model()
    frozen = fxtaylor.trace(m, X, specs={nn.ReLU: ops.OpSpec(rules.frozen("a test's ReLU"))})
    assert "0.2: a test's ReLU" in frozen.group_of("0.0").frozen
    assert frozen.spec_of(m[0][2]).rule is not ops.spec_of(m[0][2]).rule
    assert fxtaylor.trace(m, X).group_of("0.0").prunable


def test_child_registry_sees_later_global_changes(monkeypatch):
    child = ops.REGISTRY.with_specs({Gain: GAIN})
    assert child.spec_of(nn.Identity()) is ops.SPECS[nn.Identity]  # cached now
    own = ops.OpSpec(rules.frozen("patched"))
    monkeypatch.setitem(ops.SPECS, nn.Identity, own)
    assert child.spec_of(nn.Identity()) is own and child.spec_of(Gain(2)) is GAIN


@pytest.mark.parametrize("specs", [
    [Gain],  # not a dict
    {Gain: scale_by_channel},  # a rule, not an OpSpec
    {"Gain": GAIN},  # not a qualified name
    {int: GAIN},  # not a module class
    {Gain(2): GAIN},  # an instance
], ids=["list", "rule", "bare-name", "not-a-module", "instance"])
def test_bad_specs_raise_one_line_and_modify_nothing(specs):
    before = global_rows()
    m = model()
    state = copy.deepcopy(m.state_dict())
    with pytest.raises(FxTaylorError) as e:
        fxtaylor.trace(m, X, specs=specs)
    assert "\n" not in str(e.value) and "specs" in str(e.value)
    assert global_rows() == before
    assert all(torch.equal(v, m.state_dict()[k]) for k, v in state.items())


def test_register_checks_its_row():
    with pytest.raises(FxTaylorError):
        ops.register(Gain, scale_by_channel)
    assert Gain not in ops.SPECS


# -- layering ---------------------------------------------------------------------------------


def graph_imports() -> dict[str, set[str]]:
    """For each module of fxtaylor/graph/ (the package's __init__ aside), the modules of the
    package it imports anywhere in its text, functions included."""
    names = {p.stem for p in GRAPH_DIR.glob("*.py") if p.stem != "__init__"}
    found = {}
    for name in names:
        deps = set()
        for node in ast.walk(ast.parse((GRAPH_DIR / f"{name}.py").read_text())):
            if isinstance(node, ast.ImportFrom):
                if node.level == 1 and node.module:  # from .rules import x
                    deps.add(node.module.split(".")[0])
                elif node.level == 1:  # from . import ops, rules
                    deps.update(a.name for a in node.names)
                elif node.level == 0 and (node.module or "").startswith("fxtaylor.graph."):
                    deps.add(node.module.split(".")[2])
                elif node.level == 0 and node.module == "fxtaylor.graph":
                    deps.update(a.name for a in node.names)
            elif isinstance(node, ast.Import):
                deps.update(a.name.split(".")[2] for a in node.names if a.name.startswith("fxtaylor.graph."))
        found[name] = deps & names
    return found


def reach(imports: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for d in imports[todo.pop()]:
            if d not in seen:
                seen.add(d)
                todo.append(d)
    return seen


def test_rules_and_surgery_do_not_import_the_registry():
    imports = graph_imports()
    assert {"rules", "surgery", "timm_rules", "vision_rules"} <= imports["ops"]
    for name in ("rules", "surgery", "call", "timm_rules", "vision_rules"):
        assert "ops" not in reach(imports, name), f"{name} imports ops (an import circle)"


def test_no_import_circle_in_the_graph_package():
    imports = graph_imports()
    circles = [name for name in imports if name in reach(imports, name)]
    assert not circles, f"import circles through {circles}"
