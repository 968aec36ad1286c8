"""Module state set for a while, then restored module by module: train/eval flags, and the
attributes a forward (or a tracer) leaves on its modules."""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch.nn as nn


@contextlib.contextmanager
def in_eval(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` in eval mode inside the block; afterwards every module's own train/eval flag
    as it was — not the root's flag spread over all (a batch norm the user froze in eval while
    the rest trains must stay in eval)."""
    modes = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        yield model
    finally:
        for m, training in modes:
            m.training = training


@contextlib.contextmanager
def preserved(model: nn.Module) -> Iterator[nn.Module]:
    """Every module's attributes as they were after the block: a module that caches what its
    forward computed (torchvision's MultiScaleRoIAlign keeps its scales) would otherwise keep
    a value from the example run, or a Proxy from a torch.fx trace."""
    saved = [(m, dict(vars(m))) for m in model.modules()]
    try:
        yield model
    finally:
        for m, attrs in saved:  # no comparison: == on a Proxy would itself be traced
            vars(m).clear()
            vars(m).update(attrs)
