"""The arch record a model carries: how to rebuild it, kept up to date by every cut.

An arch record (:mod:`fxtaylor.models`) says how to rebuild a model's architecture without
unpickling code. A model pruned through a channel graph carries its own, so that
``fxtaylor.save(model, path)`` needs nothing else:

- :func:`fxtaylor.trace` notes the model's record as it is then (the *base*: the record the
  model already carries, e.g. from :func:`fxtaylor.load` or an earlier pruning, else
  ``{"kind": "custom"}``), the example's shapes and the trace settings;
- every cut (:meth:`ChannelGraph.prune_many`) sets the model's record to ``{"kind": "pruned",
  "base": <base>, "input_shape": ..., "trace": ..., "removed_units": <every unit this graph
  removed>}``. A pruned model traced again and pruned more chains: its record becomes the base
  of the next.

The record lives in a plain attribute of the root module (plain data: a deep copy keeps it,
``state_dict`` does not change), with the state-dict shapes it rebuilds, so that a model
changed afterwards by other means (torch-pruning directly, a layer replaced by hand) is told
from one the record rebuilds, and refused at save time instead of being written as a file that
cannot load; and with the shapes of the unpruned root model, so that a record given for it
(``{"kind": "torchvision", ...}``) can be checked against them without building it for real.

Imports only torch: the graph layer writes the record, :mod:`fxtaylor.saving` reads it.
"""
from __future__ import annotations

import copy
import weakref
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn

ATTR = "_fxtaylor_arch_record"  # the attribute of the root module holding the record
# what each model was at its last trace (its base, input and trace settings): beside the model,
# not in it, because tracing leaves a model as it was; weak, so a model that goes is forgotten
TRACED: "weakref.WeakKeyDictionary[nn.Module, dict]" = weakref.WeakKeyDictionary()
BASED = ("pruned", "resized")  # the record kinds built from a "base" record


def shapes(x: Any) -> Any:
    """The shapes of a model's example input, as recorded in an arch record: ``[1, 3, 32, 32]``
    for one tensor; for a tuple of arguments, a list with the shapes of each (lists and dicts
    kept), e.g. ``[[[3, 480, 640]]]`` for a detection model's list of one image."""
    if isinstance(x, torch.Tensor):
        return list(x.shape)
    if isinstance(x, (list, tuple)):
        return [shapes(v) for v in x]
    if isinstance(x, dict):
        return {k: shapes(v) for k, v in x.items()}
    return None


def args_shape(args: tuple) -> Any:
    """The ``input_shape`` of a record for the model's positional arguments (as traced): one
    tensor's shape for ``model(x)``, as ``fxtaylor.prune`` records it, else each argument's."""
    if len(args) == 1 and isinstance(args[0], torch.Tensor):
        return list(args[0].shape)
    return shapes(tuple(args))


def state_shapes(model: nn.Module) -> dict[str, list[int]]:
    """Every state-dict entry's shape: what loading a file checks, and what a record rebuilds."""
    return {k: list(v.shape) for k, v in model.state_dict().items()}


def holder(model: nn.Module) -> dict | None:
    """What ``model`` carries: ``{"arch": record, "shapes": state-dict shapes it rebuilds,
    "root_shapes": the unpruned root model's shapes or None}``, or None."""
    found = model.__dict__.get(ATTR) if isinstance(model, nn.Module) else None
    return found if isinstance(found, dict) and isinstance(found.get("arch"), dict) else None


def current(model: nn.Module, now: dict[str, list[int]] | None = None) -> dict | None:
    """:func:`holder`, where its record still rebuilds the model (every shape as recorded)."""
    found = holder(model)
    if found is None:
        return None
    return found if found.get("shapes") == (now if now is not None else state_shapes(model)) else None


def put(model: nn.Module, arch: dict, root_shapes: dict | None = None, now: dict | None = None) -> None:
    """Set ``model``'s record (``arch``, plain data; copied by the caller where it may change)."""
    model.__dict__[ATTR] = {"arch": arch, "shapes": now if now is not None else state_shapes(model),
                            "root_shapes": root_shapes}


def arch_of(model: nn.Module) -> dict | None:
    """The arch record ``model`` carries (a copy), if it still rebuilds the model: set by
    :func:`fxtaylor.load`, by a model built by name, and by every cut through a channel graph.
    None for a model fxtaylor neither built, loaded nor pruned, and for one changed since by
    other means. ``fxtaylor.save(model, path)`` writes this record."""
    found = current(model)
    return copy.deepcopy(found["arch"]) if found is not None else None


@dataclass
class Pending:
    """What a channel graph knows of its model's record from the trace on: the base, the trace
    settings, and the units it has removed so far (global ids, in the order they went)."""

    base: dict
    root_shapes: dict | None
    input_shape: Any
    trace: dict
    removed: list[int] = field(default_factory=list)

    def arch(self) -> dict:
        return pruned(self.base, self.input_shape, self.trace, self.removed) if self.removed else self.base


def pruned(base: dict, input_shape: Any, trace: dict, removed: list[int]) -> dict:
    """The record of ``base`` traced with an input of ``input_shape`` and ``trace`` settings,
    minus the ``removed`` units of its channel graph (:func:`fxtaylor.models.replay`)."""
    return {"kind": "pruned", "base": base, "input_shape": input_shape, "trace": trace, "removed_units": list(removed)}


def start(model: nn.Module, args: tuple, trace_kwargs: dict) -> Pending:
    """At trace time: the model's record so far becomes the base; a model without one (or
    changed since its record was set) is its own base, ``{"kind": "custom"}`` — rebuilt from
    the model passed as ``base=`` when it is loaded. The model also keeps what it was at this
    trace (:func:`traced`): cut afterwards by other means (torch-pruning's own pruners), it is
    saved as that base resized to its widths (``fxtaylor.saving``)."""
    now = state_shapes(model)
    found = current(model, now)
    pending = (Pending(found["arch"], found.get("root_shapes"), args_shape(args), trace_kwargs) if found is not None
               else Pending({"kind": "custom"}, now, args_shape(args), trace_kwargs))
    TRACED[model] = {"arch": pending.base, "root_shapes": pending.root_shapes, "input_shape": pending.input_shape,
                              "trace": trace_kwargs, "shapes": now}
    return pending


def traced(model: nn.Module) -> dict | None:
    """What ``model`` was at its last :func:`fxtaylor.trace`: ``{"arch": its record then (or
    custom), "root_shapes", "input_shape", "trace", "shapes"}``, or None if never traced."""
    return TRACED.get(model) if isinstance(model, nn.Module) else None


def retraced(model: nn.Module, then: dict | None) -> None:
    """Put back what ``model`` was at its last trace (``then``, from :func:`traced`) after a
    trace made for another purpose (saving) replaced it."""
    if then is not None:
        TRACED[model] = then


def group_widths(graph: Any) -> list[list]:
    """Each channel group of ``graph`` as ``[[[module, role], ...], width]``: the spaces it
    spans (what names the same group in another trace of the same architecture) and its
    channel count. A ``"resized"`` record is its base cut to these widths."""
    return [[sorted([m.name, m.role] for m in g.members), g.size] for g in graph.groups]


def after_cut(model: nn.Module, pending: Pending, gone: list[int]) -> None:
    """A cut removed ``gone`` (global unit ids): the model's record says so."""
    pending.removed.extend(gone)
    put(model, pending.arch(), pending.root_shapes)


def root_of(arch: dict) -> dict:
    """The record at the bottom of a chain of pruned records: the unpruned model's."""
    while isinstance(arch, dict) and arch.get("kind") in BASED and isinstance(arch.get("base"), dict):
        arch = arch["base"]
    return arch


def with_root(arch: dict, root: dict) -> dict:
    """``arch`` with the record at the bottom of its chain replaced by ``root``."""
    if arch.get("kind") in BASED and isinstance(arch.get("base"), dict):
        return {**arch, "base": with_root(arch["base"], root)}
    return root
