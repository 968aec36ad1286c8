"""Numbers a run reports: parameters, top-1 accuracy, widths, environment (latency:
:func:`fxtaylor.latency.measure`)."""
from __future__ import annotations

import platform
from typing import Any, Iterable

import torch
import torch.nn as nn

from ..devices import device_of
from ..graph import ops
from ..modes import in_eval


def params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def accuracy(model: nn.Module, loader: Iterable) -> float:
    """Top-1 accuracy over ``loader``'s (inputs, labels) batches, in eval mode."""
    device = device_of(model)
    right = total = 0
    with in_eval(model), torch.no_grad():
        for x, y, *_ in loader:
            out = model(x.to(device, non_blocking=True))
            right += int((out.argmax(1) == y.to(device)).sum())
            total += int(y.numel())
    return right / total if total else float("nan")


def out_channels(model: nn.Module) -> dict[str, int]:
    """Output channels of every conv and linear (every module whose op spec has in and out
    widths), in model order: the per-layer widths a run reports before and after."""
    out = {}
    for name, m in model.named_modules():
        spec = ops.spec_of(m)
        if spec is not None and spec.widths is not None:
            out[name] = spec.widths(m)[1]
    return out


def environment(device: torch.device) -> dict[str, Any]:
    import fvcore
    import torch_pruning
    import torchvision

    return {
        "python": platform.python_version(), "torch": torch.__version__, "torchvision": torchvision.__version__,
        "torch_pruning": getattr(torch_pruning, "__version__", "?"), "fvcore": getattr(fvcore, "__version__", "?"),
        "platform": platform.platform(), "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor(),
        "threads": torch.get_num_threads(),
    }
