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
"""
from __future__ import annotations

import contextlib
import io
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
    tensors = [a for a in args if isinstance(a, torch.Tensor)]
    if dynamic_batch and tensors and all(a.dim() > 0 for a in tensors) and len({a.shape[0] for a in tensors}) == 1:
        wide = tuple(_batch2(a) for a in args)
        batch = torch.export.Dim("batch", min=1)
        shapes = tuple({0: batch} if isinstance(a, torch.Tensor) else None for a in args)
        try:
            return _export(model, wide, shapes), True
        except FxTaylorError:
            pass  # the model fixes its batch (a reshape to a constant, a batch-dependent branch): export it as it is
    return _export(model, tuple(args), None), False


def layer(module: nn.Module, x: torch.Tensor) -> bytes:
    """One isolated layer as a serialized ONNX model at ``x``'s fixed shape (TorchScript
    exporter where torch still has it: module doc)."""
    require("onnx", "ONNX export")
    buf = io.BytesIO()
    try:
        with _quiet():
            torch.onnx.export(module, (x,), buf, dynamo=False, opset_version=OPSET, do_constant_folding=True)
        return buf.getvalue()
    except (TypeError, ValueError, RuntimeError):  # no TorchScript exporter in this torch
        return program(module, (x,), dynamic_batch=False)[0].SerializeToString()


def _batch2(a: Any) -> Any:
    if isinstance(a, torch.Tensor) and a.dim() > 0 and a.shape[0] == 1:
        return torch.cat([a, a])
    return a


def _export(model: nn.Module, args: tuple, dynamic_shapes) -> Any:
    try:
        with _quiet():
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
    reason = summary[0][1].strip() if summary else _first_line(chain[-1])
    reason = re.sub(r"\x1b\[[0-9;]*m", "", reason)
    return f"op {op.group(1)}: {reason}" if op else reason


def _first_line(e: BaseException) -> str:
    s = str(e).strip()
    return s.splitlines()[0] if s else type(e).__name__


@contextlib.contextmanager
def _quiet():
    """The exporters print progress and warn about deprecations and training mode: a command
    that exports says what it did itself."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        yield
