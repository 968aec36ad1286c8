"""Pruning under ``torch.distributed`` (torchrun + DistributedDataParallel).

Every rank trains on its own shard of the data, so every rank's criterion has seen different
examples. Pruning stays one decision taken by all ranks alike:

1. before the first prune, every rank's architecture hash is compared (a rank built with
   another model gets a clear error instead of a hang in the first collective);
2. before each ranking, the criterion's accumulators are all-reduced
   (:meth:`GraphImportance.all_reduce`: Taylor sums its per-example totals and example counts),
   so every rank ranks the global average over the union of the examples;
3. ranking is deterministic (float64 scores, stable sort, ties by unit id), so every rank
   removes the same channels; this is verified after each cut (hash of the removed units);
4. the DistributedDataParallel wrapper is rebuilt for the new parameter shapes;
5. only rank 0 writes files; the checkpoint holds every rank's RNG and data position, so a
   resume under torchrun continues each rank where it stopped.

Nothing here runs unless a process group with more than one rank is initialised.
"""
from __future__ import annotations

import datetime
import hashlib
import os
from typing import Any

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel as DDP

from .devices import device_of
from .errors import FxTaylorError


def active() -> bool:
    """A process group with more than one rank is running."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    """Rank 0, or the only process: the one that writes files and prints."""
    return rank() == 0


def is_ddp(model: nn.Module) -> bool:
    return isinstance(model, DDP)


def unwrap(model: nn.Module) -> tuple[nn.Module, dict[str, Any] | None]:
    """The module inside a DistributedDataParallel wrapper and the wrapper's settings (None
    for a bare module), so the wrapper can be rebuilt after the parameters change shape."""
    if not isinstance(model, DDP):
        return model, None
    kw = {"device_ids": model.device_ids, "output_device": model.output_device,
          "broadcast_buffers": model.broadcast_buffers, "find_unused_parameters": model.find_unused_parameters,
          "gradient_as_bucket_view": model.gradient_as_bucket_view}
    return model.module, kw


def wrap(model: nn.Module, ddp_kwargs: dict[str, Any] | None, old: nn.Module | None = None) -> nn.Module:
    """``model`` wrapped for training: in DDP when distributed (the user's settings, or the
    device's defaults), bare otherwise. A collective call: every rank must make it.

    ``old``: the wrapper this one replaces, released first (:func:`release`)."""
    release(old)
    if not active():
        return model
    if ddp_kwargs is None:
        device = device_of(model)
        ddp_kwargs = {"device_ids": [device]} if device.type == "cuda" else {}
    return DDP(model, **ddp_kwargs)


def release(wrapper: nn.Module | None) -> None:
    """Remove a DDP wrapper's gradient hooks (nothing for anything else). A reducer keeps them
    on every parameter it saw for as long as it lives, so every wrapper ever built would fire on
    the parameters that survived all cuts, and one whose bucket holds only such parameters could
    launch all-reduces of its own. A precaution: with the hooks left in place, the tests still
    gave the single-process weights (small models fill one bucket, which never completes)."""
    if isinstance(wrapper, DDP):
        wrapper._remove_autograd_hooks()  # the one DDP method for this (private in torch 2.14)


def architecture(model: nn.Module) -> list:
    """Names, shapes and dtypes of every parameter and buffer: equal iff the ranks hold the
    same architecture (the weights themselves are DDP's business)."""
    return [(k, tuple(v.shape), str(v.dtype)) for k, v in model.state_dict().items()]


def check_same(what: str, value: Any) -> None:
    """Raise the same clear error on every rank if the ranks' ``value`` differ (an
    architecture, settings, the units removed); a hash of its ``repr`` is what travels. A
    collective call, so every rank gets past it or fails together."""
    if not active():
        return
    values = gather(hashlib.sha256(repr(value).encode()).hexdigest())
    if len(set(values)) > 1:
        odd = [r for r, v in enumerate(values) if v != values[0]]
        raise FxTaylorError(
            f"the ranks disagree on the {what}: rank(s) {odd} differ from rank 0 "
            f"(every rank must start from the same model and settings)"
        )


def all_reduce_(tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """In-place all-reduce over the ranks (sum or max); unchanged when not distributed."""
    if active():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX)
    return tensor


def broadcast(value: Any) -> Any:
    """Rank 0's ``value`` on every rank (accuracy, stop decisions: one rank decides)."""
    if not active():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather(value: Any) -> list[Any]:
    """Every rank's ``value``, in rank order, on every rank."""
    if not active():
        return [value]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, value)
    return out


def init_from_env(device: str) -> str:
    """Under torchrun (``WORLD_SIZE`` > 1 in the environment) start the process group — NCCL on
    CUDA, gloo on CPU — and return this rank's device; otherwise return ``device`` unchanged."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or active():
        return device
    cuda = device.startswith("cuda") and torch.cuda.is_available()
    if cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    timeout = datetime.timedelta(seconds=float(os.environ.get("FXTAYLOR_DIST_TIMEOUT", "1800")))
    dist.init_process_group("nccl" if cuda else "gloo", timeout=timeout)
    return device


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


__all__ = ["active", "rank", "world_size", "is_main", "is_ddp", "unwrap", "wrap", "release", "architecture", "check_same", "all_reduce_",
           "broadcast", "gather", "init_from_env", "shutdown"]
