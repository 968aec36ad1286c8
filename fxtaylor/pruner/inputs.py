"""Checking what the user passed before anything is modified: one-line errors."""
from __future__ import annotations

from typing import Any, Iterable

import torch
import torch.nn as nn

from ..errors import FxTaylorError


def check(target, lam, n, k, floor, val_loader, evaluate, eval_every, final, tol, ckpt_dir, resume) -> None:
    if not (isinstance(target, (int, float)) and 0 < target < 1):
        raise FxTaylorError(f"target_flops must be a fraction of the original FLOPs in (0, 1), got {target!r}")
    if not (isinstance(lam, (int, float)) and lam >= 0):
        raise FxTaylorError(f"flops_reg (λ) must be >= 0, got {lam!r}")
    if not (isinstance(n, int) and n >= 1):
        raise FxTaylorError(f"updates_between_prunes must be an integer >= 1, got {n!r}")
    if k is not None and not (isinstance(k, int) and k >= 1):
        raise FxTaylorError(f"maps_per_prune must be an integer >= 1 or None, got {k!r}")
    if not (isinstance(eval_every, int) and eval_every >= 1) or not (isinstance(final, int) and final >= 0):
        raise FxTaylorError("eval_every must be >= 1 and final_updates >= 0")
    if not 0 <= tol < 1:
        raise FxTaylorError(f"tolerance must be in [0, 1), got {tol!r}")
    if floor is not None:
        if val_loader is None and evaluate is None:
            raise FxTaylorError("min_accuracy needs val_loader or evaluate to measure accuracy")
        if not 0 <= floor <= 1:
            raise FxTaylorError(f"min_accuracy is a fraction in [0, 1], got {floor!r}")
    if resume and ckpt_dir is None:
        raise FxTaylorError("resume=True needs the checkpoint_dir of the interrupted run")


def first_batch(loader: Iterable) -> tuple[torch.Tensor, torch.Tensor]:
    try:
        batch = next(iter(loader))
    except StopIteration:
        raise FxTaylorError("the training loader yields no batches") from None
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
