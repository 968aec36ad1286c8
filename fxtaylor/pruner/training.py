"""How the model trains and is judged between pruning steps: the :class:`Training` settings of a
run, and the default classification loss."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import torch
import torch.nn as nn

from ..errors import options_class

AUX_WEIGHT = 0.3  # GoogLeNet's (Szegedy et al. 2015) weight of each auxiliary classifier's loss


@options_class  # an unknown or missing option is one FxTaylorError line, not a TypeError
@dataclass
class Training:
    """Everything :func:`fxtaylor.prune` does besides pruning: the update (``loss_fn``, or the
    user's ``train_step`` or ``batch_loss``, with ``optimizer``), the evaluation
    (``val_loader`` or ``evaluate``), checkpoints, seeding, the arch record, the before/after
    latency (``measure_latency``, ``measure_fn``), progress and callbacks. Each field is the
    :func:`~fxtaylor.prune` argument of the same name, checked there before one is made; the
    loop reads its settings from this, the :class:`~fxtaylor.Target`, the
    :class:`~fxtaylor.Schedule` and the :class:`~fxtaylor.Deployment`, nothing else."""

    loss_fn: Callable[[Any, Any], torch.Tensor] | None = None
    train_step: Callable[[nn.Module, Any], Any] | None = None
    batch_loss: Callable[[nn.Module, Any], torch.Tensor] | None = None
    optimizer: torch.optim.Optimizer | None = None
    val_loader: Iterable | None = None
    evaluate: Callable[[nn.Module], float] | None = None
    checkpoint_dir: str | os.PathLike | None = None
    seed: int | None = None
    arch: dict | None = None
    measure_latency: bool = True
    measure_fn: Callable | None = None
    progress: bool = True
    on_step: Callable[[dict], None] | None = None
    on_start: Callable[[], None] | None = None

    @property
    def custom(self) -> Callable | None:
        """The user's own step or batch loss, which read the batch themselves (None: ours)."""
        return self.train_step if self.train_step is not None else self.batch_loss

    @property
    def loss_reduction(self) -> str:
        """How the loss reduces over the batch, which the Taylor criterion's scale needs."""
        if self.custom is not None:
            return "mean"
        return "sum" if getattr(self.loss_fn, "reduction", "mean") == "sum" else "mean"


def with_aux(loss_fn: Callable, out: Any, y: torch.Tensor) -> torch.Tensor:
    """The classification loss; a model with auxiliary heads (torchvision's GoogLeNet and
    Inception-v3 return ``(logits, aux_logits...)`` named tuples in train mode) adds
    ``AUX_WEIGHT`` × each auxiliary loss, so those heads train and are observed too."""
    if isinstance(out, tuple) and "logits" in getattr(out, "_fields", ()):
        aux = [getattr(out, f) for f in out._fields if f.startswith("aux") and getattr(out, f) is not None]
        return loss_fn(out.logits, y) + AUX_WEIGHT * sum(loss_fn(a, y) for a in aux)
    return loss_fn(out, y)
