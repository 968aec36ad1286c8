"""Checking what the user passed before anything is modified: one-line errors."""
from __future__ import annotations

from typing import Any, Iterable

import torch
import torch.nn as nn

from ..errors import FxTaylorError


def check(schedule, val_loader, evaluate, ckpt_dir, resume) -> None:
    """What the dataclasses cannot check alone (they check their own fields)."""
    if schedule.min_accuracy is not None and val_loader is None and evaluate is None:
        raise FxTaylorError("min_accuracy needs val_loader or evaluate to measure accuracy")
    if resume and ckpt_dir is None:
        raise FxTaylorError("resume=True needs the checkpoint_dir of the interrupted run")


def first_batch(loader: Iterable, custom: bool = False) -> tuple[torch.Tensor, Any]:
    """The first batch as (inputs, labels). ``custom``: a ``train_step`` reads the batch, so
    only its inputs (a tensor, or the first item of a tuple/list) must be found."""
    try:
        batch = next(iter(loader))
    except StopIteration:
        raise FxTaylorError("the training loader yields no batches") from None
    if custom:
        x = batch if isinstance(batch, torch.Tensor) else batch[0] if isinstance(batch, (tuple, list)) and batch else None
        if not isinstance(x, torch.Tensor) or x.dim() == 0 or x.shape[0] == 0:
            raise FxTaylorError(f"the training loader's batches must be a tensor or start with the input tensor; got {describe(batch)}")
        return x, None
    if not (isinstance(batch, (tuple, list)) and len(batch) >= 2 and all(isinstance(b, torch.Tensor) for b in batch[:2])):
        raise FxTaylorError(f"the training loader must yield (inputs, labels) tensor pairs; got {describe(batch)}")
    if batch[0].shape[0] == 0:
        raise FxTaylorError("the training loader yields empty batches")
    return batch[0], batch[1]


def describe(batch: Any) -> str:
    if isinstance(batch, torch.Tensor):
        return f"a single tensor of shape {tuple(batch.shape)} (no labels)"
    if isinstance(batch, (tuple, list)):
        return f"a {type(batch).__name__} of {len(batch)}: " + ", ".join(type(b).__name__ for b in batch[:3])
    return type(batch).__name__


def names(model: nn.Module, items: Iterable, types_ok: bool) -> list[str]:
    """Module names for ``ignored_layers`` / ``leaf_modules`` (types expand to every instance),
    so the arch record holds strings only."""
    names = {id(m): n for n, m in model.named_modules()}
    out = []
    for it in items:
        if isinstance(it, str):
            out.append(it)
        elif isinstance(it, nn.Module):
            out.append(names[id(it)])
        elif types_ok and isinstance(it, type):
            out += [n for n, m in model.named_modules() if type(m) is it]
        else:
            raise FxTaylorError(f"cannot name {it!r}: pass modules, module names or module types")
    return out
