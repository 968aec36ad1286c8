"""Keeping an optimizer right across a cut, and noticing when one was not.

torch-pruning's surgery replaces every pruned parameter with a new, smaller ``nn.Parameter``;
an optimizer built before the cut still holds the old ones and their state (momentum, Adam
moments) at the old shapes. Stepping it raises nothing: it updates tensors the model no longer
uses, and the cut layers silently stop training.

:func:`following` keeps a given optimizer right. It runs the surgery on *index probes*: each
touched parameter temporarily holds ``arange(numel)`` in float64 (exact below 2**53), so after
the surgery the new parameter holds the flat index, in the old one, of every element it kept.
One gather then gives the new weights and the new optimizer state, and the optimizer is
re-pointed at the new parameters in place (schedulers holding it keep working). Nothing here
knows which dimension a layer type prunes: that stays torch-pruning's business.

Every cut also remembers the parameters it replaced (weak references, so nothing is kept
alive), and one global optimizer step pre-hook, registered at the first cut, warns
(:class:`StaleOptimizerWarning`, once per optimizer) when an optimizer is about to step one of
them: one that was not passed to the cut, or that the user built before it and kept. The hook
costs one dict test per step while no replaced parameter is alive, and one pass over the
optimizer's parameters per cut otherwise.
"""
from __future__ import annotations

import contextlib
import os
import sys
import warnings
import weakref
from typing import Any, Iterable, Iterator

import torch
import torch.nn as nn
from torch.optim.optimizer import register_optimizer_step_pre_hook

from ..errors import FxTaylorError


class StaleOptimizerWarning(UserWarning):
    """An optimizer is about to step parameters a pruning cut replaced: the layers they belonged
    to no longer train. Pass ``optimizer=`` to the cut, or build the optimizer after it."""


def check_optimizer(optimizer: Any) -> None:
    """``optimizer`` is a ``torch.optim.Optimizer`` or None (checked before anything is cut)."""
    if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
        raise FxTaylorError(f"optimizer must be a torch.optim.Optimizer or None, got {type(optimizer).__name__}")


def touched(model: nn.Module, modules: Iterable[str], free: Iterable[str]) -> dict[str, nn.Parameter]:
    """The parameters a cut of ``modules`` (names; their children too, for a row whose handler
    cuts inside the module) and of the free parameters at the paths ``free`` may replace, by
    name; a parameter shared under two names once (a probe set twice would lose its values)."""
    out: dict[str, nn.Parameter] = {}
    seen: set[int] = set()

    def add(name: str, p: Any) -> None:
        if isinstance(p, nn.Parameter) and id(p) not in seen:
            seen.add(id(p))
            out[name] = p

    for name in modules:
        for pname, p in model.get_submodule(name).named_parameters(prefix=name, remove_duplicate=False):
            add(pname, p)
    for path in free:
        owner, _, attr = path.rpartition(".")
        add(path, model.get_submodule(owner)._parameters.get(attr))
    return out


def _param_at(model: nn.Module, name: str) -> Any:
    owner, _, attr = name.rpartition(".")
    try:
        return model.get_submodule(owner)._parameters.get(attr)
    except AttributeError:  # the module is gone: nothing to follow
        return None


@contextlib.contextmanager
def following(model: nn.Module, params: dict[str, nn.Parameter], optimizer: torch.optim.Optimizer | None) -> Iterator[None]:
    """Around a cut's surgery: with ``optimizer``, its parameters and state follow the cut
    (module doc); with or without, the parameters the surgery replaced are remembered for the
    step hook's warning."""
    real: dict[str, torch.Tensor] = {}
    if optimizer is not None:
        for name, p in params.items():
            real[name] = p.data
            p.grad = None  # a stale gradient would be pruned too; the next step recomputes it
            p.data = torch.arange(p.numel(), dtype=torch.float64, device=p.device).view(p.shape)
    try:
        yield
    finally:
        replaced: list[tuple[str, nn.Parameter]] = []
        swap: dict[int, nn.Parameter] = {}
        for name, old in params.items():
            new = _param_at(model, name)
            if optimizer is not None:
                target = new if isinstance(new, nn.Parameter) else old
                kept = target.data.long().flatten()
                target.data = real[name].flatten()[kept].view(target.shape)
                if target is not old:
                    old.data = real[name]
                    swap[id(old)] = target
                if target is not old or kept.numel() != real[name].numel():  # a parameter cut in place moves too
                    _move_state(optimizer, old, target, kept, real[name].shape)
            if new is not old:
                replaced.append((name, old))
        if optimizer is not None:
            for pg in optimizer.param_groups:
                pg["params"] = [swap.get(id(p), p) for p in pg["params"]]
        remember(replaced)


def _move_state(optimizer: torch.optim.Optimizer, old: nn.Parameter, new: nn.Parameter, kept: torch.Tensor,
                old_shape: torch.Size) -> None:
    state = optimizer.state.pop(old, None)
    if state is None:
        return
    moved = {}
    for k, v in state.items():
        if isinstance(v, torch.Tensor) and v.shape == old_shape:
            moved[k] = v.flatten()[kept].view(new.shape).clone()
        else:
            moved[k] = v  # step counters and other per-parameter scalars
    optimizer.state[new] = moved


# -- the warning -------------------------------------------------------------------------------

# id(old parameter) -> (weak reference to it, its name in the model): the parameters cuts
# replaced that are still alive somewhere. An entry leaves when its parameter is freed.
_replaced: dict[int, tuple[weakref.ref, str]] = {}
_generation = 0  # counts cuts that replaced parameters: an optimizer is checked again after each
_checked: "weakref.WeakKeyDictionary[torch.optim.Optimizer, tuple[int, int]]" = weakref.WeakKeyDictionary()
_warned: "weakref.WeakSet[torch.optim.Optimizer]" = weakref.WeakSet()
_hook: Any = None
# frames in these folders are not where the user stepped (torch's step wrappers, fxtaylor's loops)
_INTERNAL = (os.path.dirname(torch.__file__) + os.sep, os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep)


def remember(replaced: list[tuple[str, nn.Parameter]]) -> None:
    """Note parameters a cut replaced (name, old parameter), for the step hook."""
    global _generation, _hook
    if not replaced:
        return
    for name, old in replaced:
        key = id(old)
        ref = weakref.ref(old, lambda r, key=key: _forget(key, r))
        _replaced[key] = (ref, name)
    _generation += 1
    if _hook is None:
        _hook = register_optimizer_step_pre_hook(_before_step)


def _forget(key: int, ref: weakref.ref) -> None:
    entry = _replaced.get(key)
    if entry is not None and entry[0] is ref:  # not a newer parameter that reused the id
        del _replaced[key]


def stale_parameters(optimizer: torch.optim.Optimizer) -> list[str]:
    """The names of the parameters ``optimizer`` holds that a cut replaced (empty when it is
    right): what the warning reports."""
    out = []
    for pg in optimizer.param_groups:
        for p in pg["params"]:
            entry = _replaced.get(id(p))
            if entry is not None and entry[0]() is p:
                out.append(entry[1])
    return out


def _before_step(optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
    if not _replaced:
        return None
    try:
        if optimizer in _warned:
            return None
        size = sum(len(pg["params"]) for pg in optimizer.param_groups)
        if _checked.get(optimizer) == (_generation, size):  # checked since the last cut
            return None
        _checked[optimizer] = (_generation, size)
    except TypeError:  # an optimizer that cannot be weakly referenced: checked every step
        pass
    stale = stale_parameters(optimizer)
    if stale:
        with contextlib.suppress(TypeError):
            _warned.add(optimizer)
        n = len(stale)
        warnings.warn(
            f"{type(optimizer).__name__}.step() updates {n} parameter{'s' * (n != 1)} that a pruning cut replaced "
            f"(first: {stale[0]}); the model no longer uses them, so those layers stop training: pass optimizer= to "
            "graph.prune / graph.prune_many / fxtaylor.Pruner so it follows the cut, or build the optimizer again "
            "after the cut", StaleOptimizerWarning, stacklevel=_user_level())
    return None


def _user_level() -> int:
    """``warnings.warn``'s stacklevel for the first caller outside torch and fxtaylor (the
    user's ``opt.step()``), so the warning names their line."""
    frame, level = sys._getframe(1), 1  # level 1: the function that calls warnings.warn
    while frame is not None and frame.f_code.co_filename.startswith(_INTERNAL):
        frame, level = frame.f_back, level + 1
    return level if frame is not None else 2
