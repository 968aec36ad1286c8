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

A model carries its own record (:mod:`fxtaylor.graph.arch_record`): every cut through a
channel graph and :func:`fxtaylor.load` set it, so ``fxtaylor.save(model, path)`` needs none;
``fxtaylor.graph.arch_of(model)`` reads it.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from .devices import device_of
from .errors import FxTaylorError
from .graph import ChannelGraph, trace
from .graph.arch_record import shapes  # noqa: F401  (models.shapes: a record's input_shape)


KINDS = ("torchvision", "timm", "custom", "pruned", "resized")  # the arch records :func:`build` knows


def build_named(name: str, **kwargs: Any) -> tuple[nn.Module, dict]:
    """An untrained model by name (torchvision first, then timm) and its arch record.

    Classification models only: models are built by name for the command line, whose data is
    an ImageFolder and whose loss is cross-entropy. A name of another torchvision family
    (detection, segmentation, video, optical flow, quantized) is refused with its family and
    how to prune it from Python instead; an unknown name with the closest known ones."""
    import difflib

    import torchvision

    classification = torchvision.models.list_models(module=torchvision.models)
    if name in classification:
        return torchvision.models.get_model(name, weights=None, **kwargs), {"kind": "torchvision", "name": name, "kwargs": kwargs}
    try:
        import timm
    except ImportError:
        timm = None
    if timm is not None and name in timm.list_models():
        return timm.create_model(name, pretrained=False, **kwargs), {"kind": "timm", "name": name, "kwargs": kwargs}
    families = {"detection": "detection", "segmentation": "segmentation", "video": "video", "optical_flow": "optical-flow",
                "quantization": "quantized"}  # torchvision's sub-modules listing the other families
    family = next((words for module, words in families.items()
                   if name in torchvision.models.list_models(module=getattr(torchvision.models, module))), None)
    if family == "quantized":  # int8 weights cannot be cut; a pruned float model quantizes as any other
        raise FxTaylorError(f"{name!r} is a torchvision quantized model (int8 modules fxtaylor cannot cut): prune the float model "
                            f"{name.removeprefix('quantized_')!r} and quantize the pruned model")
    if family is not None:
        how = ("fxtaylor.prune(model, loader, val_loader=...): its (clips, labels) batches take the default loss" if family == "video"
               else "fxtaylor.prune(model, loader, batch_loss=fn, example_inputs=...)")
        raise FxTaylorError(f"{name!r} is a torchvision {family} model; models are built by name for classification only (the "
                            f"command's data is an ImageFolder, its loss cross-entropy): build it in Python and prune it with "
                            f'{how} (docs/usage.md, "Detection, segmentation, video and optical flow")')
    close = list(dict.fromkeys(difflib.get_close_matches(name, classification + (timm.list_models() if timm else []), n=3)))
    hint = f" (did you mean {', '.join(map(repr, close))}?)" if close else ""
    where = " nor a timm model" if timm is not None else " (install timm for timm models)"
    raise FxTaylorError(f"unknown model {name!r}: not a torchvision classification model{where}{hint}; the names are "
                        "torchvision.models.list_models() (e.g. resnet18, mobilenet_v2) and timm.list_models()")


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
    graph = trace(model, example_of_shape(input_shape, device_of(model)), **trace_kwargs)
    gone = torch.as_tensor(removed_units, dtype=torch.long)
    if gone.numel() and (int(gone.min()) < 0 or int(gone.max()) >= graph.group_of_unit.numel()):
        raise FxTaylorError("the architecture record names channels the base model does not have (was it saved with another model or library version?)")
    graph.prune_many([(g, torch.nonzero(torch.isin(g.units, gone)).flatten())
                      for g in (graph.groups[gi] for gi in torch.unique(graph.group_of_unit[gone]).tolist())])
    return graph


def example_of_shape(input_shape: list, device: Any) -> Any:
    """Zeros of a record's ``input_shape``: one tensor, or the model's arguments (a detection
    model's list of images) as a tuple of zeros of each shape."""
    if all(isinstance(d, int) for d in input_shape):
        return torch.zeros(input_shape, device=device)
    return tuple(_zeros(a, device) for a in input_shape)


def resize(model: nn.Module, input_shape: list, trace_kwargs: dict, widths: list) -> ChannelGraph:
    """Cut ``model`` (its base architecture) so that each channel group has the width
    ``widths`` records (:func:`fxtaylor.graph.arch_record.group_widths` of the model it was
    saved from): the last channels of each group go — which ones does not change a shape, and
    the weights come from the file. Groups are matched by the spaces they span."""
    graph = trace(model, example_of_shape(input_shape, device_of(model)), **trace_kwargs)
    by_spaces = {tuple(map(tuple, sorted([m.name, m.role] for m in g.members))): g for g in graph.groups}
    cuts = []
    for spaces, width in widths:
        g = by_spaces.get(tuple(map(tuple, spaces)))
        if g is None or not isinstance(width, int) or not 0 < width <= g.size:
            raise FxTaylorError(f"the architecture record's channel groups are not the base model's (the group of "
                                f"{spaces[0][0] if spaces else '?'}): was it saved from another model, or another library version?")
        if width < g.size:
            cuts.append((g, list(range(width, g.size))))
    graph.prune_many(cuts)
    return graph


def build(arch: dict, base: nn.Module | None = None) -> nn.Module:
    """The architecture an arch record describes, with untrained (or ``base``'s) weights."""
    kind = arch.get("kind")
    if kind == "pruned":
        model = build(arch["base"], base)
        replay(model, arch["input_shape"], arch.get("trace", {}), arch["removed_units"])
        return model
    if kind == "resized":
        model = build(arch["base"], base)
        resize(model, arch["input_shape"], arch.get("trace", {}), arch["widths"])
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
    while arch.get("kind") in ("pruned", "resized"):
        arch = arch["base"]
    return arch.get("name", "custom model")
