"""What a run must save to continue exactly where it stopped: random-number generators and the
position in the data stream. (The model, optimizer and criterion are saved by the loop.)

Resuming replays the uninterrupted run bit for bit (on CPU; see docs/usage.md) because every
source of randomness is restored: the RNG state at the step boundary, and the RNG state at the
moment the current epoch's iterator was created, which fixed its shuffle order and its workers'
seeds. The iterator is re-created from that state and the batches already used are skipped.
"""
from __future__ import annotations

import random
from typing import Any, Iterable

import torch

from ..errors import FxTaylorError

try:
    import numpy as np
except ImportError:  # numpy is optional for torch; only restore it when present
    np = None


def rng_state() -> dict:
    """Every global RNG a training step can draw from, as weights_only-loadable values."""
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    if np is not None:
        kind, keys, pos, has_gauss, gauss = np.random.get_state()
        state["numpy"] = (kind, torch.from_numpy(keys.astype("int64")), int(pos), int(has_gauss), float(gauss))
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(_tuples(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if "numpy" in state and np is not None:
        kind, keys, pos, has_gauss, gauss = state["numpy"]
        np.random.set_state((kind, keys.numpy().astype("uint32"), pos, has_gauss, gauss))


def _tuples(x: Any) -> Any:
    """random.setstate wants the nested tuples it gave; a round trip may return lists."""
    return tuple(_tuples(v) for v in x) if isinstance(x, (list, tuple)) else x


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    random.seed(seed)
    if np is not None:
        np.random.seed(seed % 2**32)


class Batches:
    """An endless stream of batches from a loader, epoch after epoch, that knows its position."""

    def __init__(self, loader: Iterable):
        self.loader = loader
        self.epoch, self.index = 0, 0
        self._it = None
        self._epoch_rng: dict | None = None

    def next(self) -> Any:
        for _ in range(2):
            if self._it is None:
                self._epoch_rng = self._rng()
                self._start_epoch()
            try:
                batch = next(self._it)
            except StopIteration:
                self._it = None
                self.epoch, self.index = self.epoch + 1, 0
                continue
            self.index += 1
            return batch
        raise FxTaylorError(  # it was not empty up front (and not a one-shot iterator)
            f"the training loader yielded no batches when read again (epoch {self.epoch}): it must yield its batches "
            "every time it is iterated")

    def _start_epoch(self) -> None:
        sampler = getattr(self.loader, "sampler", None)
        if hasattr(sampler, "set_epoch"):  # DistributedSampler: a new shuffle every epoch, the same on every rank
            sampler.set_epoch(self.epoch)
        self._it = iter(self.loader)

    def _generator(self) -> torch.Generator | None:
        """A DataLoader given ``generator=`` shuffles with it, not with the global RNG."""
        return getattr(self.loader, "generator", None)

    def _rng(self) -> dict:
        rng = rng_state()
        if self._generator() is not None:
            rng["loader"] = self._generator().get_state()
        return rng

    def position(self) -> dict:
        return {"epoch": self.epoch, "index": self.index, "epoch_rng": self._epoch_rng}

    def restore(self, position: dict) -> None:
        """Continue after ``position``: same epoch order, the used batches skipped. The caller
        restores the step's RNG state afterwards."""
        self.epoch, self.index = position["epoch"], 0
        self._it = None
        if position["epoch_rng"] is None:
            return
        set_rng_state(position["epoch_rng"])
        if "loader" in position["epoch_rng"]:
            self._generator().set_state(position["epoch_rng"]["loader"])
        self._epoch_rng = position["epoch_rng"]
        self._start_epoch()
        for _ in range(position["index"]):
            next(self._it)
        self.index = position["index"]
