"""The house rules, checked on the source by AST (imports inside functions included):

- the import graph of ``fxtaylor/`` has no circle;
- the library layers (``graph``, ``cost``, ``importance``, ``latency`` and the leaf modules)
  import nothing from the workload and front end (``pruner``, ``job``, ``cli``, ``report``)
  nor from the package root ``fxtaylor``;
- no module imports another module's private (leading-underscore) names, in ``fxtaylor/``,
  ``tests/`` and ``benchmarks/``: ``from m import _name`` and ``m._name`` with ``m`` bound to
  a project module by an import.

Import edges: ``from P import X`` imports ``P`` itself when ``X`` is a name in ``P``'s
``__init__`` (which imports its modules), and ``P.X`` when ``X`` is a submodule; importing
``a.b.c`` also runs the ``__init__`` of ``a.b`` unless the importer lives inside ``a.b``.
"""
from __future__ import annotations

import ast
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LIB = "fxtaylor"
LAYERS = ("graph", "cost", "importance", "latency")
LEAVES = ("errors", "files", "modes", "examples", "flops", "cache", "version", "datasets", "distributed", "optim",
          "saving", "models", "devices", "memory", "exporting", "optional", "to_onnx")
FRONT = ("pruner", "job", "cli", "report")


def _module_name(path: Path) -> str:
    """``fxtaylor/a/b.py`` → ``fxtaylor.a.b`` (a package's ``__init__`` → the package);
    ``tests/x.py`` and ``benchmarks/x.py`` → ``x`` (they import each other from ``sys.path``)."""
    rel = path.relative_to(ROOT).with_suffix("")
    parts = rel.parts
    if parts[0] != LIB:
        return parts[-1]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


FILES = [p for top in (LIB, "tests", "benchmarks") for p in sorted((ROOT / top).rglob("*.py"))
         if "__pycache__" not in p.parts]
MODULES = {}  # every project module by name (the two conftest.py files share one: nobody imports them)
for _path in FILES:
    MODULES.setdefault(_module_name(_path), _path)


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _absolute(module: str, path: Path, node: ast.ImportFrom) -> str:
    """The absolute module name of ``from <node.module> import ...`` written in ``module``."""
    if not node.level:
        return node.module or ""
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    base = package[: len(package) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


class Imports:
    """What one file imports: the project modules (with the line), the names bound to project
    modules, and the private names it takes from other project modules."""

    def __init__(self, path: Path):
        self.path, self.module = path, _module_name(path)
        with warnings.catch_warnings():  # a bad escape in someone's string is not this test's business
            warnings.simplefilter("ignore")
            self.tree = ast.parse(path.read_text(), str(path))
        self.edges: list[tuple[str, int]] = []  # (imported module, line)
        self.bound: dict[str, str] = {}  # local name → project module
        self.private: list[tuple[int, str]] = []  # (line, what)
        for node in ast.walk(self.tree):
            if isinstance(node, ast.Import):
                for a in node.names:
                    if a.name.split(".")[0] in MODULES:
                        self.edges.append((a.name, node.lineno))
                        if a.asname:
                            self.bound[a.asname] = a.name
                        else:
                            self.bound[a.name.split(".")[0]] = a.name.split(".")[0]
            elif isinstance(node, ast.ImportFrom):
                source = _absolute(self.module, path, node)
                if source not in MODULES:
                    continue
                for a in node.names:
                    sub = f"{source}.{a.name}"
                    if sub in MODULES:  # a submodule
                        self.edges.append((sub, node.lineno))
                        self.bound[a.asname or a.name] = sub
                    else:
                        self.edges.append((source, node.lineno))
                        if _private(a.name) and source != self.module:
                            self.private.append((node.lineno, f"from {source} import {a.name}"))
        for node in ast.walk(self.tree):
            if isinstance(node, ast.Attribute) and _private(node.attr):
                target = self._module_of(node.value)
                if target is not None and target != self.module and f"{target}.{node.attr}" not in MODULES:
                    self.private.append((node.lineno, f"{ast.unparse(node)} ({target}.{node.attr})"))

    def _module_of(self, node: ast.expr) -> str | None:
        """The project module an expression such as ``zoo`` or ``fxtaylor.latency`` names."""
        if isinstance(node, ast.Name):
            return self.bound.get(node.id)
        if isinstance(node, ast.Attribute):
            outer = self._module_of(node.value)
            if outer is not None and f"{outer}.{node.attr}" in MODULES:
                return f"{outer}.{node.attr}"
        return None

    def library_edges(self) -> set[tuple[str, int]]:
        """The ``fxtaylor`` modules this one imports, with the packages whose ``__init__`` that
        runs (less the packages this module lives in, which are already being imported)."""
        own = self.module.split(".")
        own_packages = {".".join(own[:i]) for i in range(1, len(own) + (self.path.name == "__init__.py"))}
        out = set()
        for name, line in self.edges:
            if name.split(".")[0] != LIB:
                continue
            parts = name.split(".")
            out.add((name, line))
            out |= {(".".join(parts[:i]), line) for i in range(1, len(parts))} - {(p, line) for p in own_packages}
        return {(n, line) for n, line in out if n != self.module}


def library() -> dict[str, Imports]:
    return {name: Imports(path) for name, path in MODULES.items() if name.split(".")[0] == LIB}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with a circle in them (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1 or v in graph.get(v, ()):
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_circle():
    mods = library()
    graph = {name: {n for n, _ in m.library_edges()} for name, m in mods.items()}
    lines = []
    for comp in _cycles(graph):
        lines.append("circle: " + ", ".join(comp))
        for name in comp:
            for target, line in sorted(mods[name].library_edges()):
                if target in comp:
                    lines.append(f"  {MODULES[name].relative_to(ROOT)}:{line}: {name} imports {target}")
    assert not lines, "the import graph of fxtaylor/ has circles:\n" + "\n".join(lines)


def _layer(name: str) -> bool:
    parts = name.split(".")
    return len(parts) > 1 and (parts[1] in LAYERS or (len(parts) == 2 and parts[1] in LEAVES))


def _front(name: str) -> bool:
    parts = name.split(".")
    return name == LIB or (len(parts) > 1 and parts[1] in FRONT)


def test_library_layers_import_no_front_end():
    known = set(LAYERS + LEAVES + FRONT) | {"__main__"}
    new = sorted({n.split(".")[1] for n in MODULES if n.startswith(LIB + ".")} - known)
    assert not new, f"fxtaylor modules not placed in this test's layers (add each to LAYERS, LEAVES or FRONT): {new}"
    found = []
    for name, m in sorted(library().items()):
        if _layer(name):
            explicit = {(n, line) for n, line in m.edges} | {(n, line) for n, line in m.library_edges() if n != LIB}
            for target, line in sorted(explicit):
                if _front(target):
                    found.append(f"{m.path.relative_to(ROOT)}:{line}: {name} imports {target}")
    assert not found, "library layers importing the front end or the package root:\n" + "\n".join(found)


def private_imports() -> list[str]:
    """``path:line: what`` for every private name one project module takes from another."""
    return [f"{path.relative_to(ROOT)}:{line}: {what}"
            for path in FILES for line, what in sorted(Imports(path).private)]


def test_no_private_names_across_modules():
    found = private_imports()
    assert not found, "private names used across modules (make them public or share a helper):\n" + "\n".join(found)


if __name__ == "__main__":
    print("\n".join(private_imports()))
