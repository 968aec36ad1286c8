"""Files that are safe to write and safe to read.

Writes are atomic: a temporary file in the target directory, flushed to disk, then renamed
over the target, so a crash or kill mid-write leaves the previous file intact. Reads use
``torch.load(..., weights_only=True)``: tensors and plain containers only, so loading a file
can never run code. A model file therefore holds an arch record (:mod:`fxtaylor.models`) and a
state dict, not a pickled module.
"""
from __future__ import annotations

import copy
import io
import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from . import models
from .errors import FxTaylorError, WriteError
from .files import atomic_write

MODEL_FORMAT = "fxtaylor.model/1"


def atomic_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` to memory, then :func:`fxtaylor.files.atomic_write` (temporary sibling,
    fsync, rename over ``path``)."""
    path = Path(path)
    make_parent(path)
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write(path, buf.getbuffer())


def make_parent(path: Path) -> None:
    """Create the folder ``path`` goes in; a one-line error when it cannot be (a file in the
    way, no permission)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise WriteError(f"cannot write {path}: {e.strerror or e} ({e.filename or path.parent})") from e


def safe_load(path: str | os.PathLike, what: str = "file", map_location: Any = "cpu") -> dict:
    """``torch.load(weights_only=True)`` with one-line errors for missing, corrupt and unsafe
    files."""
    path = Path(path)
    if not path.is_file():
        raise FxTaylorError(f"no {what} at {path}")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise FxTaylorError(f"refusing to load {path}: it needs pickled code, and fxtaylor only loads weights ({first})") from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError) as e:
        raise FxTaylorError(f"{what} {path} is corrupt or truncated ({type(e).__name__})") from None
    if not isinstance(obj, dict):
        raise FxTaylorError(f"{path} is not an fxtaylor {what}")
    return obj


def shapes_of(model: nn.Module) -> dict[str, list[int]]:
    return {k: list(v.shape) for k, v in model.state_dict().items()}


def save(model: nn.Module, path: str | os.PathLike, arch: dict, **meta: Any) -> None:
    """Save ``model`` as its arch record plus a plain state dict (see :func:`load`)."""
    if not (isinstance(arch, dict) and arch.get("kind") in models.KINDS):
        raise FxTaylorError(f"cannot save {path}: arch must be an arch record, a dict whose 'kind' is one of "
                            f"{', '.join(models.KINDS)} (fxtaylor.models), got {arch!r:.80}")
    meta = [k for k, v in model.state_dict().items() if v.is_meta]
    if meta:
        raise FxTaylorError(f"cannot save {path}: the model's weights are on the meta device (not materialised; first: {meta[0]})")
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    atomic_save({"format": MODEL_FORMAT, "arch": arch, "state_dict": state, "meta": meta}, path)


def load(path: str | os.PathLike, base: nn.Module | None = None, map_location: Any = "cpu") -> nn.Module:
    """Rebuild a model saved by fxtaylor, without unpickling any code.

    ``base``: for a model pruned from a custom architecture, the unpruned model (it is copied,
    not modified). Torchvision and timm architectures are rebuilt by name.
    """
    return load_with_arch(path, base, map_location)[0]


def load_with_arch(path: str | os.PathLike, base: nn.Module | None = None, map_location: Any = "cpu") -> tuple[nn.Module, dict]:
    """:func:`load`, also returning the model's arch record (to prune it again)."""
    obj = safe_load(path, "model file", map_location)
    if obj.get("format") != MODEL_FORMAT:
        raise FxTaylorError(f"{path} is not an fxtaylor model file (format {obj.get('format')!r})")
    return model_from(obj, path, base), obj["arch"]


def model_from(obj: dict, path: Any, base: nn.Module | None = None) -> nn.Module:
    """The model of an already-read model file (its arch record built, its weights loaded)."""
    model = models.build(obj["arch"], copy.deepcopy(base) if base is not None else None)
    return load_state(model, obj["state_dict"], path)


def load_state(model: nn.Module, state: dict[str, torch.Tensor], path: Any) -> nn.Module:
    """Load a state dict whose shapes must match exactly: a mismatch means the architecture was
    rebuilt differently from how it was saved."""
    have = shapes_of(model)
    bad = [k for k, v in state.items() if k in have and have[k] != list(v.shape)]
    missing, extra = sorted(set(have) - set(state)), sorted(set(state) - set(have))
    if bad or missing or extra:
        first = (bad + missing + extra)[0]
        raise FxTaylorError(
            f"{path}: the rebuilt architecture does not match the saved weights ({len(bad)} shape "
            f"mismatches, {len(missing)} missing, {len(extra)} unexpected; first: {first})"
        )
    model.load_state_dict(state)
    return model
