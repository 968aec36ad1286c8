"""The one argument every channel rule receives: a node of the fx graph, evaluated."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.fx as fx

from .atoms import Ann, Atoms, Factor


class Multi(tuple):
    """Annotation of an op with several tensor outputs (split, chunk): one ``Ann`` per output."""


@dataclass
class Call:
    node: fx.Node
    args: tuple  # concrete values, as the op received them
    kwargs: dict
    out: Any  # the op's concrete result
    anns: dict  # fx.Node -> annotation, for every node already run
    atoms: Atoms
    module: torch.nn.Module | None = None  # for call_module
    # the op registry (fxtaylor.graph.ops.Registry) the graph is traced with: what a rule may
    # ask about another module (a split, about the module that owns it). Typed loosely so that
    # rules, which only receive it, never import the registry (it imports them).
    registry: Any = None

    @property
    def name(self) -> str:
        """Qualified module name (call_module) or the op's readable name."""
        n = self.node
        name = str(n.target) if n.op == "call_module" else getattr(n.target, "__name__", str(n.target))
        where = n.meta.get("fxtaylor_untraced")  # recorded from code fx could not trace
        return f"{name} in {where}" if where else name

    def ann(self, i: int | str = 0) -> Ann:
        """Annotation of positional arg ``i`` (or kwarg ``i``); ``()`` when it carries none."""
        a = self.node.args[i] if isinstance(i, int) else self.node.kwargs.get(i)
        return self.anns.get(a, ()) if isinstance(a, fx.Node) else ()

    def arg(self, i: int, name: str, default: Any = None) -> Any:
        """Concrete value of an argument given by position ``i`` or keyword ``name``."""
        if len(self.args) > i:
            return self.args[i]
        return self.kwargs.get(name, default)

    def tensor_args(self) -> list[tuple[torch.Tensor, Ann]]:
        """(value, annotation) of every positional tensor argument."""
        out = []
        for raw, val in zip(self.node.args, self.args):
            if isinstance(val, torch.Tensor):
                out.append((val, self.anns.get(raw, ()) if isinstance(raw, fx.Node) else ()))
        return out

    def all_input_anns(self) -> list[Ann]:
        """Annotations of every node this one reads, through lists and dicts."""
        found: list = []
        fx.node.map_arg((self.node.args, self.node.kwargs), lambda n: found.append(self.anns.get(n, ())))
        flat: list[Ann] = []
        for a in found:
            flat.extend(a if isinstance(a, Multi) else [a])
        return flat

    def call_on(self) -> Callable:
        """The op as a function of its first argument, to replay it on index probes."""
        n = self.node
        rest, kwargs = self.args[1:], self.kwargs
        if n.op == "call_method":
            return lambda t: getattr(t, n.target)(*rest, **kwargs)
        if n.op == "call_module":
            return lambda t: self.module(t, *rest, **kwargs)
        return lambda t: n.target(t, *rest, **kwargs)


def factor_on(ann: Ann, dim: int) -> Factor | None:
    """The factor of ``ann`` whose dims include ``dim``."""
    for f in ann:
        if dim in f.dims:
            return f
    return None


def without(ann: Ann, dim: int) -> Ann:
    return tuple(f for f in ann if dim not in f.dims)
