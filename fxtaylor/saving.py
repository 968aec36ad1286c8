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
import re
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from . import models
from .errors import FxTaylorError, WriteError, describe
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


def as_path(path: Any, what: str = "path") -> Path:
    """``path`` as a :class:`Path`; a one-line error for anything that is not a path."""
    if isinstance(path, (str, os.PathLike)) and str(path):
        return Path(path)
    raise FxTaylorError(f"{what} must be a file path (str or os.PathLike), got {type(path).__name__} {path!r:.60}")


def safe_load(path: str | os.PathLike, what: str = "file", map_location: Any = "cpu") -> dict:
    """``torch.load(weights_only=True)`` with one-line errors for missing, corrupt, foreign and
    unsafe files (a directory, a text file, random bytes, a pickled module: nothing is
    unpickled but plain data and tensors)."""
    path = as_path(path, what)
    _check_map_location(map_location)
    if path.is_dir():
        raise FxTaylorError(f"{path} is a directory, not a {what}")
    if not path.is_file():
        raise FxTaylorError(f"no {what} at {path}")
    try:
        with open(path, "rb") as f:
            head = f.read(256)
    except OSError as e:
        raise FxTaylorError(f"cannot read {what} {path}: {e.strerror or e}") from None
    if not head:
        raise FxTaylorError(f"{what} {path} is corrupt or truncated (empty)")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        needs = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
        if needs:  # a pickled class or function: loading it would run code
            raise FxTaylorError(f"refusing to load {path}: it needs pickled code ({needs.group(1)}), and fxtaylor only "
                                "loads weights") from None
        raise FxTaylorError(f"{what} {path} is corrupt or truncated, or not a file torch.save wrote{_looks_like(head)}") from None
    except Exception as e:  # torch raises RuntimeError, EOFError, KeyError, IndexError... on foreign bytes
        raise FxTaylorError(f"{what} {path} is corrupt or truncated, or not a file torch.save wrote{_looks_like(head)} "
                            f"({type(e).__name__})") from None
    if not isinstance(obj, dict):
        raise FxTaylorError(f"{path} is not an fxtaylor {what} (it holds a {type(obj).__name__})")
    return obj


def _looks_like(head: bytes) -> str:
    try:
        text = head[:200].decode("utf-8")
    except UnicodeDecodeError:
        return ""
    return " (it is a text file)" if all(c.isprintable() or c.isspace() for c in text) else ""


def _check_map_location(map_location: Any) -> None:
    if map_location is None or callable(map_location) or isinstance(map_location, (dict, torch.device)):
        return
    if isinstance(map_location, str):
        try:
            torch.device(map_location)
            return
        except RuntimeError:
            pass
    raise FxTaylorError(f"map_location must be a device (e.g. 'cpu', 'cuda:0'), a dict or a function, got {map_location!r:.60}")


def _plain(obj: Any, depth: int = 0) -> str | None:
    """Where ``obj`` holds something ``torch.load(weights_only=True)`` would refuse (it would
    need pickled code), or None: plain data and tensors only."""
    if depth > 50:
        return "nesting too deep"
    if obj is None or isinstance(obj, (bool, int, float, str, torch.Tensor, torch.dtype, torch.device)):
        return None
    if isinstance(obj, (list, tuple)) and type(obj) in (list, tuple):
        return next((f"[{i}]{w}" for i, v in enumerate(obj) if (w := _plain(v, depth + 1)) is not None), None)
    if type(obj) is dict:
        bad_key = next((k for k in obj if not isinstance(k, (str, int))), None)
        if bad_key is not None:
            return f" (key {bad_key!r:.40})"
        return next((f"[{k!r}]{w}" for k, v in obj.items() if (w := _plain(v, depth + 1)) is not None), None)
    return f" ({type(obj).__name__})"


def shapes_of(model: nn.Module) -> dict[str, list[int]]:
    return {k: list(v.shape) for k, v in model.state_dict().items()}


def save(model: nn.Module, path: str | os.PathLike, arch: dict, **meta: Any) -> None:
    """Save ``model`` as its arch record plus a plain state dict (see :func:`load`). Checked
    first, nothing written otherwise: a module with real weights, a path that can be a file,
    an arch record and ``meta`` of plain data (what :func:`load` reads back without code)."""
    if not isinstance(model, nn.Module):
        raise FxTaylorError(f"cannot save: model must be a torch.nn.Module, got {type(model).__name__}")
    path = as_path(path)
    if path.is_dir():
        raise WriteError(f"cannot write {path}: it is a directory; pass a file path (e.g. {path / 'model.pt'})")
    if not (isinstance(arch, dict) and arch.get("kind") in models.KINDS):
        raise FxTaylorError(f"cannot save {path}: arch must be an arch record, a dict whose 'kind' is one of "
                            f"{', '.join(models.KINDS)} (fxtaylor.models), got {arch!r:.80}")
    for what, value in (("arch", arch), *((f"meta {k!r}", v) for k, v in meta.items())):
        where = _plain(value)
        if where is not None:
            raise FxTaylorError(f"cannot save {path}: {what} must be plain data (dicts, lists, numbers, strings, tensors): "
                                f"{what}{where} is not, and loading it would need pickled code")
    on_meta = [k for k, v in model.state_dict().items() if v.is_meta]
    if on_meta:
        raise FxTaylorError(f"cannot save {path}: the model's weights are on the meta device (not materialised; first: {on_meta[0]})")
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
    if base is not None and not isinstance(base, nn.Module):
        raise FxTaylorError(f"base must be the unpruned model (a torch.nn.Module) or None, got {type(base).__name__}")
    if base is not None:
        from .examples import check_model

        check_model(base, "base model")
    obj = safe_load(path, "model file", map_location)
    path = Path(path)
    if obj.get("format") != MODEL_FORMAT:
        if obj and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
            raise FxTaylorError(f"{path} is a plain state dict ({len(obj)} tensors), not an fxtaylor model file: load it into "
                                "your model (model.load_state_dict(torch.load(path, weights_only=True))); fxtaylor.save "
                                "writes model files")
        raise FxTaylorError(f"{path} is not an fxtaylor model file (format {obj.get('format')!r:.60})")
    return model_from(obj, path, base), obj["arch"]


def model_from(obj: dict, path: Any, base: nn.Module | None = None) -> nn.Module:
    """The model of an already-read model file (its arch record built, its weights loaded)."""
    arch, state = obj.get("arch"), obj.get("state_dict")
    if not (isinstance(arch, dict) and arch.get("kind") in models.KINDS):
        raise FxTaylorError(f"{path} is not a valid fxtaylor model file: its arch record is {arch!r:.60}")
    if not (isinstance(state, dict) and all(isinstance(v, torch.Tensor) for v in state.values())):
        raise FxTaylorError(f"{path} is not a valid fxtaylor model file: its state_dict is not a dict of tensors")
    try:
        model = models.build(arch, copy.deepcopy(base) if base is not None else None)
    except FxTaylorError:
        raise
    except Exception as e:  # a record naming kwargs this torchvision does not take, a base it cannot trace...
        raise FxTaylorError(f"{path}: the architecture of its arch record cannot be built ({describe(e)})") from e
    return load_state(model, state, path)


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
