"""Where a model lives: the one device lookup every part of fxtaylor uses.

A model's device is that of its first parameter, else of its first buffer (a parameter-free
model that holds only buffers, such as a fixed filter bank), else the CPU: a model with no
tensors at all runs wherever its inputs are, and the CPU is where fxtaylor creates them.
"""
from __future__ import annotations

import itertools

import torch
import torch.nn as nn


def float_dtype(model: nn.Module, default: torch.dtype | None = torch.float32) -> torch.dtype | None:
    """The dtype of ``model``'s first floating parameter or buffer; ``default`` when it has none."""
    for t in itertools.chain(model.parameters(), model.buffers()):
        if t.is_floating_point():
            return t.dtype
    return default


def device_of(model: nn.Module, default: torch.device | None = torch.device("cpu")) -> torch.device | None:
    """The device of ``model``'s first parameter or buffer; ``default`` when it has neither."""
    for t in itertools.chain(model.parameters(), model.buffers()):
        return t.device
    return default
