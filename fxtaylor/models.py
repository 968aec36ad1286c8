"""Architectures as data: how to rebuild a model without unpickling code.

An *arch record* is a small JSON-able dict that says how to build a model's architecture
(never its weights):

- ``{"kind": "torchvision", "name": "resnet18", "kwargs": {"num_classes": 10}}``
- ``{"kind": "timm", "name": "...", "kwargs": {...}}`` (when timm is installed)
- ``{"kind": "custom"}``: built by the caller, who passes the unpruned model as ``base``
- ``{"kind": "pruned", "base": <record>, "input_shape": [1, 3, 32, 32],
  "trace": {"ignored_layers": [...], "leaf_modules": [...]}, "removed_units": [...]}``:
  the base model traced with an input of that shape, minus those units of its channel graph.

Tracing is deterministic, so the unit ids of the base's channel graph are the same every time
it is traced; replaying the removal through :meth:`ChannelGraph.prune` rebuilds every pruned
shape with torch-pruning's surgery, for any model the graph handles. A pruned model can be
pruned again: its record becomes the ``base`` of the next one.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from .devices import device_of
from .errors import FxTaylorError
from .graph import ChannelGraph, trace


KINDS = ("torchvision", "timm", "custom", "pruned")  # the arch records :func:`build` knows


def build_named(name: str, **kwargs: Any) -> tuple[nn.Module, dict]:
    """An untrained model by name (torchvision first, then timm) and its arch record."""
    import torchvision

    if name in torchvision.models.list_models(module=torchvision.models):
        return torchvision.models.get_model(name, weights=None, **kwargs), {"kind": "torchvision", "name": name, "kwargs": kwargs}
    try:
        import timm
    except ImportError:
        timm = None
    if timm is not None and name in timm.list_models():
        return timm.create_model(name, pretrained=False, **kwargs), {"kind": "timm", "name": name, "kwargs": kwargs}
    known = ", ".join(torchvision.models.list_models(module=torchvision.models)[:6])
    hint = "" if timm is not None else " (install timm for timm models)"
    raise FxTaylorError(f"unknown model {name!r}: not a torchvision classification model{hint}; known names include {known}, ...")


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


def _zeros(shape: Any, device) -> Any:
    if isinstance(shape, dict):
        return {k: _zeros(v, device) for k, v in shape.items()}
    if isinstance(shape, list) and all(isinstance(d, int) for d in shape):
        return torch.zeros(shape, device=device)
    if isinstance(shape, list):
        return [_zeros(v, device) for v in shape]
    return shape


def replay(model: nn.Module, input_shape: list, trace_kwargs: dict, removed_units: list[int] | torch.Tensor) -> ChannelGraph:
    """Prune ``model`` (unpruned, on any device) by removing ``removed_units`` of its channel
    graph; returns the graph, which now describes the pruned model."""
    device = device_of(model)
    if all(isinstance(d, int) for d in input_shape):  # one input tensor
        x = torch.zeros(input_shape, device=device)
    else:  # the model's arguments (a detection model's list of images): zeros of each shape
        x = tuple(_zeros(a, device) for a in input_shape)
    graph = trace(model, x, **trace_kwargs)
    gone = torch.as_tensor(removed_units, dtype=torch.long)
    if gone.numel() and (int(gone.min()) < 0 or int(gone.max()) >= graph.group_of_unit.numel()):
        raise FxTaylorError("the architecture record names channels the base model does not have (was it saved with another model or library version?)")
    graph.prune_many([(g, torch.nonzero(torch.isin(g.units, gone)).flatten())
                      for g in (graph.groups[gi] for gi in torch.unique(graph.group_of_unit[gone]).tolist())])
    return graph


def build(arch: dict, base: nn.Module | None = None) -> nn.Module:
    """The architecture an arch record describes, with untrained (or ``base``'s) weights."""
    kind = arch.get("kind")
    if kind == "pruned":
        model = build(arch["base"], base)
        replay(model, arch["input_shape"], arch.get("trace", {}), arch["removed_units"])
        return model
    if kind == "custom":
        if base is None:
            raise FxTaylorError("this model was pruned from a custom architecture: pass the unpruned model as base=")
        return base
    if kind in ("torchvision", "timm"):
        return build_named(arch["name"], **arch.get("kwargs", {}))[0]
    raise FxTaylorError(f"unknown architecture record kind {kind!r}")


def base_name(arch: dict) -> str:
    """The model name at the root of a record, for titles and reports."""
    while arch.get("kind") == "pruned":
        arch = arch["base"]
    return arch.get("name", "custom model")
