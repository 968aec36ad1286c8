"""Train/eval flags: set for a while, then restored module by module."""
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
