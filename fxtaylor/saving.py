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
from .devices import device_of
from .errors import FxTaylorError, WriteError, describe
from .graph import arch_record, selection, trace
from .graph.arch_record import arch_of  # noqa: F401  (fxtaylor.saving.arch_of)
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
    return arch_record.state_shapes(model)


def save(model: nn.Module, path: str | os.PathLike, arch: dict | None = None, **meta: Any) -> None:
    """Save ``model`` as its arch record plus a plain state dict (see :func:`load`).

    ``arch=None``: the record the model carries (:func:`arch_of`) — a model pruned through
    fxtaylor (``fxtaylor.prune``, ``Pruner``, ``graph.prune``), loaded by :func:`load`, or
    both, records how; pruned from a model fxtaylor did not build or load, its base is
    ``{"kind": "custom"}`` (load it with ``base=`` the unpruned model), unless ``arch`` names
    it. ``arch``: a record; for a pruned model, the *unpruned* model's record
    (``{"kind": "torchvision", "name": "resnet50", "kwargs": {...}}``) is taken as the base
    of its pruning record, so the file rebuilds by name.

    Checked first, nothing written otherwise: a module with real weights, a path that can be a
    file, ``meta`` of plain data (what :func:`load` reads back without code), and a record that
    rebuilds the model's shapes — a model changed by other means after fxtaylor pruned it,
    or a record of another architecture, is refused with why.
    """
    if not isinstance(model, nn.Module):
        raise FxTaylorError(f"cannot save: model must be a torch.nn.Module, got {type(model).__name__}")
    path = as_path(path)
    if path.is_dir():
        raise WriteError(f"cannot write {path}: it is a directory; pass a file path (e.g. {path / 'model.pt'})")
    if arch is not None and not (isinstance(arch, dict) and arch.get("kind") in models.KINDS):
        raise FxTaylorError(f"cannot save {path}: arch must be an arch record, a dict whose 'kind' is one of "
                            f"{', '.join(models.KINDS)} (fxtaylor.models), or None for the model's own record; got {arch!r:.80}")
    for what, value in (("arch", arch), *((f"meta {k!r}", v) for k, v in meta.items())):
        where = _plain(value)
        if where is not None:
            raise FxTaylorError(f"cannot save {path}: {what} must be plain data (dicts, lists, numbers, strings, tensors): "
                                f"{what}{where} is not, and loading it would need pickled code")
    on_meta = [k for k, v in model.state_dict().items() if v.is_meta]
    if on_meta:
        raise FxTaylorError(f"cannot save {path}: the model's weights are on the meta device (not materialised; first: {on_meta[0]})")
    arch = record_for(model, arch, f"cannot save {path}")
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    atomic_save({"format": MODEL_FORMAT, "arch": arch, "state_dict": state, "meta": meta}, path)


# -- which record a file gets ------------------------------------------------------------------

_NO_RECORD = ('pass arch=, its record: {"kind": "torchvision", "name": "resnet18", "kwargs": {"num_classes": 10}} '
              '(or "timm"), or {"kind": "custom"} and load it with fxtaylor.load(path, base=YourModel())')


def record_for(model: nn.Module, arch: dict | None = None, where: str = "cannot save") -> dict:
    """The arch record a file of ``model`` gets (see :func:`save`); an error beginning with
    ``where`` when none rebuilds it. Nothing is modified."""
    now = arch_record.state_shapes(model)
    found = arch_record.holder(model)
    own = found if found is not None and found.get("shapes") == now else None
    if own is not None and arch is None:
        return copy.deepcopy(own["arch"])
    if own is None and arch is None:
        resized = _resized(model, now, where)  # cut by other means after fxtaylor traced it: torch-pruning's pruners
        if resized is not None:
            return resized
    if found is not None and own is None:  # its record rebuilds the model as it was, not as it is
        changed = _changed(found["shapes"], now)
        if arch is None or (arch.get("kind") == "pruned" and _fits(_levels(arch, model), _levels(found["arch"], model))):
            raise FxTaylorError(
                f"{where}: the model was changed by other means after fxtaylor last pruned or loaded it ({changed}), so its "
                "arch record no longer rebuilds it: make every cut through fxtaylor (fxtaylor.trace(model, x), then "
                'graph.prune), or save it with arch={"kind": "custom"} and load it with fxtaylor.load(path, base=<a model of its '
                "current architecture>)")
    if arch is None:
        raise FxTaylorError(f"{where}: fxtaylor has no arch record of this model (it did not build, load or prune it): "
                            + _NO_RECORD)
    if own is not None:
        return _combine(own, arch, model, where)
    _check_rebuilds(arch, now, where)
    return arch


def _resized(model: nn.Module, now: dict, where: str) -> dict | None:
    """For a model whose channels were cut by other means since fxtaylor last traced it (a
    torch-pruning pruner driven by :class:`~fxtaylor.TaylorImportance`): its record then — its
    base — resized to the channel groups' widths now (models.resize), or None where it was
    never traced, or not changed since. Which channels went is not known and not needed: the
    shapes follow from the widths, the weights from the file. Traced again here (the trace
    leaves the model as it was); a named root is rebuilt and checked against every shape."""
    then = arch_record.traced(model)
    if then is None or then.get("shapes") == now or set(then.get("shapes", {})) != set(now):
        return None  # never traced, unchanged since, or tensors added or removed: not a channel cut
    if any(len(now[k]) != len(then["shapes"][k]) or any(a > b for a, b in zip(now[k], then["shapes"][k])) for k in now):
        return None  # a tensor grew: not a channel cut
    try:
        graph = trace(model, models.example_of_shape(then["input_shape"], device_of(model)), **then["trace"])
    except FxTaylorError as e:
        raise FxTaylorError(f"{where}: the model was cut by other means since fxtaylor traced it, and tracing it again to "
                            f"record its widths failed: {e}") from e
    finally:
        arch_record.retraced(model, then)  # this trace is the save's, not the user's
    arch = {"kind": "resized", "base": copy.deepcopy(then["arch"]), "input_shape": then["input_shape"],
            "trace": then["trace"], "widths": arch_record.group_widths(graph)}
    _check_rebuilds(arch, now, where)
    return arch


def _combine(own: dict, given: dict, model: nn.Module, where: str) -> dict:
    """``given`` for a model whose own record ``own`` rebuilds it: an unpruned model's record
    names the root of its pruning; a pruning record must describe its last prunings."""
    mine = own["arch"]
    if given.get("kind") != "pruned":
        root = _checked_root(given, mine, own.get("root_shapes"), where)
        return copy.deepcopy(arch_record.with_root(mine, root))
    ours, theirs = _levels(mine, model), _levels(given, model)
    if not _fits(theirs, ours):
        n_mine = sum(len(level[2]) for level in ours)
        n_given = sum(len(level[2]) for level in theirs)
        raise FxTaylorError(
            f"{where}: arch does not describe how this model was pruned (it removes {n_given} channels over "
            f"{len(theirs)} pruning(s), the model's own record {n_mine} over {len(ours)}): save it with "
            "fxtaylor.save(model, path), which writes the record the model carries")
    root = _checked_root(arch_record.root_of(given), mine, own.get("root_shapes"), where)
    if len(theirs) == len(ours):
        return copy.deepcopy(arch_record.with_root(given, root))  # the record given, as given where it is complete
    # fewer levels: the given root stands for the model before the last prunings, which fxtaylor
    # had pruned already: it names the root of the model's own chain
    return copy.deepcopy(arch_record.with_root(mine, root))


def _checked_root(root: dict, mine: dict, root_shapes: dict | None, where: str) -> dict:
    """The unpruned model's record for the model ``mine`` records: ``root`` (given) where it
    builds the model the pruning started from, the recorded one where ``root`` says less."""
    recorded = arch_record.root_of(mine)
    if root.get("kind") not in ("torchvision", "timm") or root == recorded:
        return recorded if root.get("kind") == "custom" else root
    if recorded.get("kind") in ("torchvision", "timm"):
        want, what = _built_shapes(recorded, where), f"{_name(recorded)} (the model's own record)"
    elif root_shapes is not None:
        want, what = root_shapes, "the model before pruning"
    else:
        return root  # nothing known to check it against: as before, the load checks every shape
    got = _built_shapes(root, where)
    if got != want:
        raise FxTaylorError(
            f"{where}: arch builds {_name(root)}, which is not the model this one was pruned from "
            f"({_differ(got, want, 'arch', what)}): pass the unpruned model's record, or save without arch= "
            "(fxtaylor.save(model, path): the model records its pruning)")
    return root


def _check_rebuilds(arch: dict, now: dict, where: str) -> None:
    """For a model without a record of its own: ``arch`` rebuilds its shapes. A named record is
    built on the meta device (no memory, ~30 ms for ResNet-50); a pruning record of a named
    model is rebuilt for real; a custom one cannot be checked here (``load`` checks it)."""
    kind, root = arch.get("kind"), arch_record.root_of(arch)
    if root.get("kind") not in ("torchvision", "timm"):
        return
    if kind in arch_record.BASED:
        try:
            got = arch_record.state_shapes(models.build(arch))
        except FxTaylorError as e:
            raise FxTaylorError(f"{where}: arch cannot be rebuilt: {e}") from e
        except Exception as e:
            raise FxTaylorError(f"{where}: arch cannot be rebuilt ({describe(e)})") from e
    else:
        got = _built_shapes(arch, where)
    if got == now:
        return
    fewer = _fewer(now, got)
    why = ("this model has fewer channels: it was pruned, and the unpruned model's record cannot rebuild it; a model "
           "pruned through fxtaylor (fxtaylor.prune, Pruner, graph.prune) records its pruning and saves with "
           "fxtaylor.save(model, path), and so does one cut by other means (torch-pruning's pruners) after "
           "fxtaylor.trace or TaylorImportance traced it (its widths are recorded)") if fewer and kind != "pruned" else (
           "pass the record of this model's architecture")
    raise FxTaylorError(f"{where}: arch does not rebuild this model ({_differ(got, now, 'arch', 'the model')}): {why}")


def _built_shapes(arch: dict, where: str) -> dict[str, list[int]]:
    """The state-dict shapes a named record builds: on the meta device (shapes, no memory); on
    the CPU where a model cannot be built there (an ``.item()`` in its constructor)."""
    try:
        with torch.device("meta"):
            return arch_record.state_shapes(models.build(arch))
    except FxTaylorError as e:
        raise FxTaylorError(f"{where}: arch cannot be built: {e}") from e
    except Exception:
        pass
    try:
        return arch_record.state_shapes(models.build(arch))
    except FxTaylorError as e:
        raise FxTaylorError(f"{where}: arch cannot be built: {e}") from e
    except Exception as e:
        raise FxTaylorError(f"{where}: arch cannot be built ({describe(e)})") from e


def _levels(arch: dict, model: nn.Module) -> list[tuple]:
    """Each pruning of a chain of records, outermost first, as what decides the shapes: the
    input (one tensor's batch size aside), the trace settings (names resolved in ``model``)
    and the set of units removed."""
    out = []
    while isinstance(arch, dict) and arch.get("kind") == "pruned":
        removed = frozenset(arch.get("removed_units") or ())
        if removed:  # a pruning that removed nothing (a run without a cut) rebuilds its base
            trace = arch.get("trace") if isinstance(arch.get("trace"), dict) else {}
            try:
                ignored, leaves = selection.resolve(model, trace.get("ignored_layers", ()), trace.get("leaf_modules", ()))
                settings: Any = (frozenset(ignored), frozenset(leaves), bool(trace.get("exact", True)))
            except FxTaylorError:  # names this model does not have: compared as written
                settings = _frozen(trace)
            out.append((_input_key(arch.get("input_shape")), settings, removed))
        arch = arch.get("base")
    return out


def _fits(theirs: list[tuple], ours: list[tuple]) -> bool:
    """``theirs`` describes the last prunings of ``ours`` (no pruning only where there was none)."""
    return theirs == ours[: len(theirs)] and (bool(theirs) or not ours)


def _input_key(shape: Any) -> Any:
    if isinstance(shape, list) and len(shape) == 1 and isinstance(shape[0], list) and all(isinstance(d, int) for d in shape[0]):
        shape = shape[0]  # [[1, 3, 32, 32]]: the arguments of model(x), the same input as [1, 3, 32, 32]
    if isinstance(shape, list) and shape and all(isinstance(d, int) for d in shape):
        return ("tensor", tuple(shape[1:]))  # the batch size does not change the graph
    return _frozen(shape)


def _frozen(x: Any) -> Any:
    if isinstance(x, dict):
        return tuple(sorted((str(k), _frozen(v)) for k, v in x.items()))
    if isinstance(x, (list, tuple)):
        return tuple(_frozen(v) for v in x)
    return x


def _name(arch: dict) -> str:
    kwargs = arch.get("kwargs") or {}
    args = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
    return f"{arch.get('kind')} {arch.get('name')}({args})"


def _differ(a: dict, b: dict, a_name: str, b_name: str) -> str:
    """How two sets of state-dict shapes differ, in a few words: count and first difference."""
    bad = [k for k in a if k in b and a[k] != b[k]]
    only_a, only_b = [k for k in a if k not in b], [k for k in b if k not in a]
    if bad:
        k = bad[0]
        return f"{_count(len(bad), 'tensor')} of other shapes; first: {k}: {a_name} {a[k]}, {b_name} {b[k]}"
    k = (only_a + only_b)[0]
    return f"{_count(len(only_a) + len(only_b), 'tensor')} in one only; first: {k}, only in {a_name if k in a else b_name}"


def _count(n: int, what: str) -> str:
    return f"{n} {what}{'s' * (n != 1)}"


def _changed(then: dict, now: dict) -> str:
    bad = [k for k in now if k in then and now[k] != then[k]]
    if bad:
        return f"{bad[0]} is {now[bad[0]]}, its record rebuilds {then[bad[0]]}; {_count(len(bad), 'tensor')} differ"
    other = sorted(set(now) ^ set(then))
    return f"{other[0]} {'is new' if other[0] in now else 'is gone'}; {_count(len(other), 'tensor')} added or removed"


def _fewer(small: dict, big: dict) -> bool:
    """The shapes of a model pruned from ``big``: every tensor of ``small`` at most as wide as
    ``big``'s in every dimension, and narrower ones in more than one module (a cut narrows its
    producer and its readers; another class count narrows the classifier alone)."""
    if small.keys() != big.keys():
        return False
    bad = [k for k in small if small[k] != big[k]]
    owners = {k.rpartition(".")[0] for k in bad}
    return len(owners) > 1 and all(len(small[k]) == len(big[k]) and all(a <= b for a, b in zip(small[k], big[k])) for k in bad)


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
    load_state(model, state, path, arch)
    # the model carries its record: pruned further, it saves with fxtaylor.save(model, path)
    custom_root = arch_record.root_of(arch).get("kind") == "custom"
    arch_record.put(model, copy.deepcopy(arch), shapes_of(base) if base is not None and custom_root else None)
    return model


def load_state(model: nn.Module, state: dict[str, torch.Tensor], path: Any, arch: dict | None = None) -> nn.Module:
    """Load a state dict whose shapes must match exactly: a mismatch means the architecture was
    rebuilt differently from how it was saved. ``arch``: the record it was rebuilt from, for
    the error to say what went wrong."""
    have = shapes_of(model)
    bad = [k for k, v in state.items() if k in have and have[k] != list(v.shape)]
    missing, extra = sorted(set(have) - set(state)), sorted(set(state) - set(have))
    if bad or missing or extra:
        first = (bad + missing + extra)[0]
        shown = f"{first}: saved {list(state[first].shape)}, rebuilt {have[first]}" if bad else first
        raise FxTaylorError(
            f"{path}: the rebuilt architecture does not match the saved weights ({len(bad)} shape "
            f"mismatches, {len(missing)} missing, {len(extra)} unexpected; first: {shown})"
            + (_mismatch_hint(arch, have, {k: list(v.shape) for k, v in state.items()}) if arch is not None else "")
        )
    model.load_state_dict(state)
    return model


def _mismatch_hint(arch: dict, have: dict, saved: dict) -> str:
    """Why a record did not rebuild its file's weights, and what to do: the common mistakes."""
    root = arch_record.root_of(arch)
    if root.get("kind") == "custom":
        return ("; the base= model must be the unpruned model this one was pruned from (the same class, widths and "
                "settings)")
    if arch.get("kind") != "pruned":
        if _fewer(saved, have):
            return (f"; the weights have fewer channels than {_name(arch)}: the model was pruned and saved with its "
                    "unpruned architecture's record, and which channels went is not in the file. Save the pruned model "
                    "with fxtaylor.save(model, path) (its pruning is recorded) or result.save(path)")
        return f"; the weights are not those of {_name(arch)}: the file was saved with another model's record"
    return (f"; its pruning record of {_name(root)} does not rebuild the saved weights (a file written by another "
            "version of fxtaylor, torchvision or timm, or with another pruning's record): save the pruned model again "
            "with fxtaylor.save(model, path)")
