"""The user's selections of modules (``ignored_layers``, ``leaf_modules``), resolved once.

Both accept module objects and module names; ``leaf_modules`` also accepts module types, which
select every instance (``isinstance``: subclasses included). Everything is turned into the
model's module names here, for :func:`fxtaylor.trace` and for ``fxtaylor.prune``'s arch record
alike, so both match a selection the same way. An ignored container (a ``Sequential``, a
block) ignores every module inside it, as torch-pruning does; a leaf container is called as
one black box. Anything that names no module of the model is an error that names it.
"""
from __future__ import annotations

import difflib
from typing import Iterable

import torch.nn as nn

from ..errors import FxTaylorError


def names(model: nn.Module, items: Iterable, what: str = "ignored_layers", types_ok: bool = False) -> list[str]:
    """The model's names for ``items`` (modules, names, and types if ``types_ok``), in order,
    without duplicates. A module reachable under two names gets the first, as fx names it."""
    items = list(items)
    if not items:
        return []
    canonical = {id(m): n for n, m in model.named_modules()}
    by_name = dict(model.named_modules(remove_duplicate=False))
    out: dict[str, None] = {}
    for it in items:
        if isinstance(it, str):
            m = by_name.get(it)
            if m is None:
                close = difflib.get_close_matches(it, list(by_name), n=3)
                hint = f" (did you mean {', '.join(map(repr, close))}?)" if close else ""
                raise FxTaylorError(f"{what}: the model has no module named {it!r}{hint}")
            out[canonical[id(m)]] = None
        elif isinstance(it, nn.Module):
            if id(it) not in canonical:
                raise FxTaylorError(f"{what}: {type(it).__name__} {_short(it)} is not a module of this model")
            out[canonical[id(it)]] = None
        elif types_ok and isinstance(it, type) and issubclass(it, nn.Module):
            out.update((n, None) for n, m in model.named_modules() if isinstance(m, it))
        else:
            kinds = "modules, module names or module types" if types_ok else "modules or module names"
            raise FxTaylorError(f"{what}: cannot select {it!r}: pass {kinds}")
    return list(out)


def resolve(model: nn.Module, ignored_layers: Iterable = (), leaf_modules: Iterable = ()) -> tuple[set[str], set[str]]:
    """``(ignored, leaves)``: the names of every ignored module (containers expanded to all the
    modules inside them) and of every leaf module (types expanded to their instances)."""
    ignored: set[str] = set()
    chosen = names(model, ignored_layers, "ignored_layers")
    canonical = {id(m): n for n, m in model.named_modules()} if chosen else {}
    for name in chosen:
        ignored.update(canonical[id(m)] for m in model.get_submodule(name).modules())
    return ignored, set(names(model, leaf_modules, "leaf_modules", types_ok=True))


def _short(m: nn.Module) -> str:
    text = repr(m).splitlines()[0]
    return text if len(text) <= 60 else text[:57] + "..."


__all__ = ["names", "resolve"]
