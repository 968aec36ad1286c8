"""Example inputs as torch-pruning takes them, decided once per entry point.

Every public function that takes example inputs (``trace``, ``Pruner``, ``prune``, the
importance classes, the latency functions) passes them through :func:`resolve`, which runs the
model on them once — eval mode, no gradients, every module's train/eval flag restored — and
returns the model's positional arguments as :class:`Args`:

- a tensor ``x``: ``model(x)``;
- a tuple or list ``inputs``: ``model(*inputs)`` (a two-input model: ``(a, b)``); if that
  fails, ``model(inputs)`` (a detection model: ``[image]``) — torch-pruning's
  ``DependencyGraph`` tries the same two, in the same order;
- anything else (a dict): ``model(inputs)``.

``Args`` records the convention: the model is always called ``model(*args)`` afterwards
(``graph.example_args``, ``pruner.example``, ``importance.example_inputs``), and ``resolve``
returns an ``Args`` unchanged, without running the model again. When no convention runs,
one :class:`FxTaylorError` line says what was tried and why each failed.

Imports only torch and fxtaylor's errors and modes: the graph layer uses it too.
"""
from __future__ import annotations

import itertools
import math
from typing import Any, Iterator

import torch
import torch.nn as nn

from .devices import device_of
from .errors import FxTaylorError, describe
from .modes import in_eval, preserved

SHORT = 160  # characters of each wrapped error kept in a message


class Args(tuple):
    """The model's positional arguments, as :func:`resolve` decided them: ``model(*args)``."""

    __slots__ = ()

    def __repr__(self) -> str:
        return f"Args{tuple.__repr__(self)}"

    def __reduce__(self):  # pickled / deep-copied as what it is
        return (Args, (tuple(self),))


def check_model(model: Any, what: str = "model") -> None:
    """``model`` is an ``nn.Module`` that can run: not on the meta device, no uninitialised
    (lazy) parameters — running a lazy module would materialise them, changing the model."""
    if not isinstance(model, nn.Module):
        raise FxTaylorError(f"{what} must be a torch.nn.Module, got {_kind(model)}")
    lazy = next((n for n, t in itertools.chain(model.named_parameters(), model.named_buffers())
                 if isinstance(t, nn.parameter.UninitializedTensorMixin)), None)
    if lazy is not None:
        raise FxTaylorError(f"the {what} has uninitialised (lazy) parameters (first: {lazy}): run it once on an input "
                            "to materialise them, then pass it")
    meta = next((n for n, t in itertools.chain(model.named_parameters(), model.named_buffers()) if t.is_meta), None)
    if meta is not None:
        raise FxTaylorError(
            f"the {what}'s weights are on the meta device (not materialised; first: {meta}): nothing can run on it; "
            "create it on a real device, or call model.to_empty(device=...) and load its weights first")


def tensors(x: Any) -> Iterator[tuple[str, torch.Tensor]]:
    """Every tensor in ``x`` (tuples, lists and dicts walked) with where it is: ``[0][1]``."""
    if isinstance(x, torch.Tensor):
        yield "", x
    elif isinstance(x, (tuple, list)):
        for i, v in enumerate(x):
            for where, t in tensors(v):
                yield f"[{i}]{where}", t
    elif isinstance(x, dict):
        for k, v in x.items():
            for where, t in tensors(v):
                yield f"[{k!r}]{where}", t


def check_values(model: nn.Module | None, example: Any, what: str = "example_inputs", *, device: bool = True) -> None:
    """What can be told without running the model: the example holds tensors (not a string,
    not None), real ones (not on the meta device), on the model's device (``device``), without
    NaN."""
    if example is None or isinstance(example, (str, bytes, nn.Module)) or not any(True for _ in tensors(example)):
        raise FxTaylorError(f"{what} must be the model's example input: a tensor, or a tuple or list of its arguments "
                            f"(tensors), got {_kind(example)}")
    found = list(tensors(example))
    meta = next((w for w, t in found if t.is_meta), None)
    if meta is not None:
        raise FxTaylorError(f"{what}{meta} is on the meta device (shapes without values): pass real tensors, e.g. torch.randn(...)")
    own = device_of(model, default=None) if model is not None and device else None
    if own is not None:
        other = next(((w, t) for w, t in found if t.device != own), None)
        if other is not None:
            raise FxTaylorError(f"{what}{other[0]} is on {other[1].device}, the model on {own}: move the example there "
                                f"(x.to('{own}'))")
    nan = next((w for w, t in found if (t.is_floating_point() or t.is_complex()) and bool(torch.isnan(t).any())), None)
    if nan is not None:
        raise FxTaylorError(f"{what}{nan} holds NaN: pass finite example values (only shapes and dtypes matter: "
                            "torch.randn(...) or torch.zeros(...))")


def resolve(model: nn.Module, example: Any, what: str = "example_inputs", graph: Any = None,
            error: type[FxTaylorError] = FxTaylorError, run_tensor: bool = True) -> Args:
    """``example`` as the model's positional arguments, decided by running the model on it
    (module doc). An :class:`Args` is returned unchanged: it was decided and checked already;
    so is the example a channel ``graph`` of this model was traced from (its ``example_args``).
    ``error``: the class of the error raised when the model runs on neither (``TraceError``
    for ``trace``). ``run_tensor=False``: a lone tensor (no convention to decide) is checked
    without running the model — ``trace`` runs it on meta tensors anyway, where channel counts
    and dtypes are checked (a real run cost ``trace`` 3.5x its time on ResNet-50)."""
    if isinstance(example, Args):
        return example
    if graph is not None and getattr(graph, "model", None) is model and getattr(graph, "example_args", None) is not None \
            and example is getattr(graph, "given_example", None):
        return graph.example_args
    check_model(model)
    check_values(model, example, what)
    if not run_tensor and isinstance(example, torch.Tensor):
        return Args((example,))
    if isinstance(example, (tuple, list)):
        tries = [(f"model(*{what})", tuple(example)), (f"model({what})", (example,))]
    else:
        tries = [(f"model({what})", (example,))]
    failed = []
    for call, args in tries:
        try:
            run(model, args)
            return Args(args)
        except FxTaylorError:
            raise
        except Exception as e:
            failed.append((call, e))
    if len(failed) == 1:
        e = failed[0][1]
        raise error(f"the model cannot run on {what} ({shape_of(example)}): {_short(e)}") from e
    (c1, e1), (c2, e2) = failed
    n = len(example)
    raise error(
        f"the model cannot run on {what} ({shape_of(example)}), called either way: {c1} ({n} argument{'s' * (n != 1)}) "
        f"failed with {_short(e1)}; {c2} (one argument) failed with {_short(e2)}") from e2


def run(model: nn.Module, args: tuple) -> Any:
    """``model(*args)`` in eval mode without gradients; afterwards every module's attributes
    are as they were — its train/eval flag, and what a forward caches on its module (torchvision's
    MultiScaleRoIAlign keeps its scales) — so nothing about the model changes (no batch-norm
    statistic either: eval mode)."""
    with preserved(model), in_eval(model), torch.no_grad():
        return model(*args)


def single(args: Args) -> torch.Tensor | None:
    """The tensor when the model takes one tensor (``model(x)``), else None."""
    return args[0] if len(args) == 1 and isinstance(args[0], torch.Tensor) else None


def shape_of(x: Any) -> str:
    if isinstance(x, torch.Tensor):
        return f"inputs of shape {tuple(x.shape)}, {str(x.dtype).replace('torch.', '')}"
    if isinstance(x, (tuple, list)):
        inner = ", ".join(f"{tuple(v.shape)} {str(v.dtype).replace('torch.', '')}" if isinstance(v, torch.Tensor)
                          else type(v).__name__ for v in x[:3])
        return f"a {type(x).__name__} of {len(x)}: {inner}{', ...' if len(x) > 3 else ''}"
    return f"inputs of type {type(x).__name__}"


def _short(e: BaseException) -> str:
    text = describe(e)
    return text if len(text) <= SHORT else text[: SHORT - 3] + "..."


def _kind(x: Any) -> str:
    if isinstance(x, (str, bytes)):
        return f"{type(x).__name__} {x!r:.40}"
    if isinstance(x, float) and math.isnan(x):
        return "nan"
    return "None" if x is None else type(x).__name__
