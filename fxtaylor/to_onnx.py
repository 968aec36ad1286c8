"""A module as an ONNX model, by torch's exporters: the one place fxtaylor calls them.

:func:`program` is what :func:`fxtaylor.export` writes and what the ONNX Runtime latency
runtime measures (the same exporter, settings and dynamic batch, so the latency measured is the
latency of the file a user ships). :func:`layer` exports one isolated layer for a latency table
with the TorchScript exporter: the layer is one ONNX op either way, and the TorchScript exporter
takes 3.4 ms for a 3×3 conv where the dynamo exporter takes 0.58 s (measured here, torch 2.14,
docs/latency.md "Runtimes") — hundreds of grid points per model. Where a torch has no
TorchScript exporter any more, :func:`layer` uses :func:`program`.

Errors: an op the exporter cannot translate becomes one :class:`FxTaylorError` naming the op
and the exporter's reason; the exporter's own console output and warnings are kept quiet.

Also the one copy of what :mod:`fxtaylor.exporting`'s torch.export path shares with the ONNX
one: :func:`quiet`, :func:`failure` / :func:`first_line`, and the dynamic-batch rule
(:func:`batched`, :func:`widened`, :func:`batch_shapes`, :func:`with_batch`).
"""
from __future__ import annotations

import contextlib
import io
import logging
import re
import warnings
from typing import Any

import torch
import torch.nn as nn

from .errors import FxTaylorError
from .optional import require

OPSET = 18  # the dynamo exporter's default opset in torch 2.14; ONNX Runtime ≥ 1.14 runs it


def program(model: nn.Module, args: tuple, *, dynamic_batch: bool = True) -> tuple[Any, bool]:
    """``model`` (in eval mode, on its device and dtype) exported by torch's dynamo ONNX exporter
    with ``args`` as the example: the ``onnx.ModelProto`` and whether its batch dimension is
    dynamic. ``dynamic_batch``: dimension 0 of every tensor argument is exported as a symbol
    ``batch`` (the model is traced at batch 2 when the example has batch 1: torch.export fixes
    size-1 dimensions); a model whose graph fixes its batch is exported static instead."""
    require("onnx", "ONNX export")
    require("onnxscript", "ONNX export")
    if dynamic_batch and batched(args):
        wide = widened(args)
        try:
            return _export(model, wide, batch_shapes(wide)), True
        except FxTaylorError:
            pass  # the model fixes its batch (a reshape to a constant, a batch-dependent branch): export it as it is
    return _export(model, tuple(args), None), False


def layer(module: nn.Module, x: torch.Tensor) -> bytes:
    """One isolated layer as a serialized ONNX model at ``x``'s fixed shape (TorchScript
    exporter where torch still has it: module doc)."""
    require("onnx", "ONNX export")
    buf = io.BytesIO()
    try:
        with quiet():
            torch.onnx.export(module, (x,), buf, dynamo=False, opset_version=OPSET, do_constant_folding=True)
        return buf.getvalue()
    except (TypeError, ValueError, RuntimeError):  # no TorchScript exporter in this torch
        return program(module, (x,), dynamic_batch=False)[0].SerializeToString()


def _export(model: nn.Module, args: tuple, dynamic_shapes) -> Any:
    try:
        with quiet():
            prog = torch.onnx.export(model, args, dynamo=True, verbose=False, report=False, optimize=True,
                                     dynamic_shapes=dynamic_shapes, opset_version=OPSET)
    except Exception as e:  # the exporter's error classes are private; all of them mean "not exportable"
        raise FxTaylorError(f"the ONNX exporter cannot export this model: {failure(e)}") from None
    if prog is None or prog.model_proto is None:
        raise FxTaylorError("the ONNX exporter returned no model")
    return prog.model_proto


def failure(e: BaseException) -> str:
    """The op an exporter failed on and why, from its (long, multi-part) error: the first
    ``torch.ops`` target named anywhere in the chain of causes, and the innermost reason."""
    chain, seen = [], set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        chain.append(e)
        e = e.__cause__ or e.__context__
    text = "\n".join(str(c) for c in chain)
    op = re.search(r"target=(torch\.ops\.[\w.]+)", text) or re.search(r"\b(aten[.:]{1,2}\w+(?:\.\w+)?)", text)
    summary = re.findall(r"<class '([\w.]+)'>: (.+)", text)  # the exporter's own "Exception summary", innermost first
    reason = summary[0][1].strip() if summary else first_line(chain[-1])
    reason = re.sub(r"\x1b\[[0-9;]*m", "", reason)
    return f"op {op.group(1)}: {reason}" if op else reason


def first_line(e: BaseException) -> str:
    """``e``'s message's first line, or its type's name when it has none."""
    s = str(e).strip()
    return s.splitlines()[0] if s else type(e).__name__


@contextlib.contextmanager
def quiet():
    """The exporters (torch.onnx's and torch.export) print progress, warn about deprecations,
    specialisations and training mode, and log the graph of every failed attempt: the error,
    or what a command that exports says it did, is what matters."""
    # every torch logger that exists by now (a failed guard logs the whole graph from deep inside)
    loggers = [logging.getLogger(name) for name in list(logging.root.manager.loggerDict)
               if name == "torch" or name.startswith("torch.")]
    levels = [lg.level for lg in loggers]
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        try:
            for lg in loggers:
                lg.setLevel(logging.CRITICAL)
            yield
        finally:
            for lg, level in zip(loggers, levels):
                lg.setLevel(level)


# -- the dynamic batch ----------------------------------------------------------------------------

def batched(args: tuple) -> bool:
    """Whether the arguments have one batch dimension to make dynamic: every top-level tensor
    argument has a dimension 0, all of the same size."""
    tensors = [a for a in args if isinstance(a, torch.Tensor)]
    return bool(tensors) and all(a.dim() > 0 for a in tensors) and len({a.shape[0] for a in tensors}) == 1


def batch_of(args: tuple) -> int:
    """The batch size of :func:`batched` arguments."""
    return next(a.shape[0] for a in args if isinstance(a, torch.Tensor))


def with_batch(args: tuple, n: int) -> tuple:
    """``args`` with every top-level tensor at batch ``n``, its samples repeated in turn."""
    def grow(a: Any) -> Any:
        if not isinstance(a, torch.Tensor):
            return a
        return a[torch.arange(n, device=a.device) % a.shape[0]]
    return type(args)(grow(a) for a in args)


def widened(args: tuple) -> tuple:
    """:func:`batched` arguments as a plain tuple to trace a dynamic batch at: at batch 2 when
    they have batch 1 (torch.export specialises size-1 dimensions, so batch 1 cannot become a
    symbol), else as they are. A plain tuple: torch.export matches ``dynamic_shapes`` to the
    arguments by pytree type, and a tuple subclass (:class:`fxtaylor.examples.Args`) is not one."""
    return tuple(with_batch(args, 2) if batch_of(args) == 1 else args)


def batch_shapes(args: tuple) -> tuple:
    """The ``dynamic_shapes`` that make dimension 0 of every tensor argument one symbol ``batch``."""
    batch = torch.export.Dim("batch", min=1)
    return tuple({0: batch} if isinstance(a, torch.Tensor) else None for a in args)
