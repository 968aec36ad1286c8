"""A model as a file another program runs: ONNX or torch.export, checked before it is written.

:func:`export` traces the model in eval mode (a copy: the model passed in is not touched),
serialises it to memory, loads those bytes back with the runtime a user would ship them to
(ONNX Runtime for ``.onnx``, ``torch.export.load`` for ``.pt2``), runs them on the example —
and, when the batch dimension is dynamic, on the example at another batch size too — and
compares the outputs with the PyTorch model's. Only bytes that passed are written, atomically
(:func:`fxtaylor.files.atomic_write`): a failure at any stage leaves no file behind.

The check passes when ``max |exported − torch| ≤ rtol · max |torch| + ATOL`` over all outputs.
Default ``rtol`` (:data:`RTOL`), chosen from measurement (docs/export.md, "Tolerance"):
eight torchvision models (ResNet-18/50, MobileNet-V2/V3-L, EfficientNet-B0, DenseNet-121,
ShuffleNet-V2, ConvNeXt-T; random weights, eval, 128 px, CPU, torch 2.14, ONNX Runtime 1.32)
gave max error / max |output| of at most 1.0e-6 through ONNX Runtime (EfficientNet-B0; most
were 4e-7) and exactly 0 through torch.export in float32, so the float32 default 1e-4 leaves a
margin of about 100×. In float16 the worst was 7.0e-4 (DenseNet-121, ONNX Runtime) against
1e-2 allowed (14×; MobileNets and EfficientNet-B0 are left out there: their random-weight
outputs, ~1e-9, underflow to exact zeros in float16). bfloat16 gets 5e-2: the float16 worst
scaled by the ratio of their epsilons (8×) is 5.6e-3, a 9× margin; through torch.export it
measured 0, and ONNX Runtime's CPU provider cannot run bfloat16 convolutions at all. A model
whose export changes its numbers (an op translated wrongly, a constant folded at the wrong
dtype, a batch-dependent reshape baked in) misses by orders of magnitude, not by a factor of two.

Imports only torch and fxtaylor's leaf modules; ``onnx``, ``onnxscript`` and ``onnxruntime``
are imported when an ONNX export is asked for (:mod:`fxtaylor.optional`), so ``import
fxtaylor`` never needs them.
"""
from __future__ import annotations

import copy
import io
import math
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn
from torch.utils import _pytree as pytree

from . import examples
from .devices import device_of, float_dtype
from .errors import FxTaylorError, WriteError
from .files import atomic_write, check_writable_dir
from .optional import require
from .to_onnx import batch_of, batch_shapes, batched, failure, first_line, program, quiet, widened, with_batch

FORMATS = {"onnx": ".onnx", "torch.export": ".pt2"}  # format → the file suffix it writes
# the packages each format needs at export time (torch.export needs only torch)
NEEDS = {"onnx": ("onnx", "onnxscript", "onnxruntime"), "torch.export": ()}
# default relative tolerance by the model's (lowest) floating dtype: module doc for the numbers
RTOL = {torch.float32: 1e-4, torch.float64: 1e-4, torch.float16: 1e-2, torch.bfloat16: 5e-2}
# absolute floor of the allowed error: only matters for an output that is (nearly) all zeros,
# where rtol · 0 would demand bit-exactness
ATOL = 1e-12
OTHER_BATCH = 3  # the second batch size a dynamic-batch export is checked at (the example's is usually 1)


@dataclass(frozen=True)
class Exported:
    """What :func:`export` wrote and how well it matched: ``max_error`` is max |exported −
    torch| over every output element of every checked run, ``scale`` max |torch output|; the
    check passed because ``max_error ≤ rtol · scale + ATOL``. ``seconds``: the whole call
    (trace, serialise, load back, check, write)."""

    path: Path
    format: str
    dynamic_batch: bool
    max_error: float
    scale: float
    rtol: float
    seconds: float

    @property
    def allowed(self) -> float:
        return allowed(self.rtol, self.scale)

    def describe(self) -> str:
        batch = "dynamic batch" if self.dynamic_batch else "fixed batch"
        return (f"{self.path}: {self.format}, {batch}, max error {self.max_error:.2e} ≤ {self.allowed:.2e} allowed "
                f"(rtol {self.rtol:g} × output scale {self.scale:.3g}), {self.seconds:.1f} s")


def allowed(rtol: float, scale: float) -> float:
    """The largest max-abs error the check accepts for outputs of magnitude ``scale``."""
    return rtol * scale + ATOL


def export(model: nn.Module, example_inputs: Any, path: str | os.PathLike, format: str = "onnx", *,
           dynamic_batch: bool = True, rtol: float | None = None) -> Exported:
    """Write ``model`` (exported in eval mode) to ``path`` as ``format`` — ``"onnx"`` or
    ``"torch.export"`` (:data:`FORMATS`) — after checking that the file, loaded back, computes
    what the model computes on ``example_inputs`` (module doc). ``example_inputs``: a tensor, or
    a tuple of the model's arguments, as everywhere in fxtaylor (:func:`fxtaylor.examples.resolve`).

    ``dynamic_batch``: export dimension 0 of the tensor arguments as a symbol, so the file runs
    at any batch size (checked at a second one); a model whose graph fixes its batch is exported
    with a fixed one instead, and ``Exported.dynamic_batch`` says which. ``rtol``: the allowed
    max error relative to the largest output magnitude; None: :data:`RTOL` for the model's dtype.

    Everything is checked before any work; every failure is one :class:`FxTaylorError`, nothing
    is written, and the model keeps its mode, weights, hooks and device."""
    t0 = time.perf_counter()
    examples.check_model(model)
    check_format(format)
    path = check_path(path, format)
    check_rtol(rtol)
    for package in NEEDS[format]:
        require(package, f"{format} export")
    args = examples.resolve(model, example_inputs)
    rtol = default_rtol(model) if rtol is None else float(rtol)
    frozen = eval_copy(model)
    if format == "onnx":
        data, dynamic = onnx_bytes(frozen, args, dynamic_batch)
    else:
        data, dynamic = pt2_bytes(frozen, args, dynamic_batch)
    del frozen
    run = load(data, format, device_of(model))
    max_error, scale = 0.0, 0.0
    for inputs in [args, *([with_batch(args, other_batch(args))] if dynamic else [])]:
        error, magnitude = compare(run, model, inputs, format)
        max_error, scale = max(max_error, error), max(scale, magnitude)
    if not max_error <= allowed(rtol, scale):  # NaN fails too
        raise FxTaylorError(
            f"the {format} export does not compute what the model computes: max error {max_error:.3g} > "
            f"{allowed(rtol, scale):.3g} allowed (rtol {rtol:g} × output scale {scale:.3g}); nothing written to {path}. "
            "An export that lost precision on purpose (a lower dtype) needs a larger rtol")
    atomic_write(path, data)
    return Exported(path, format, dynamic, max_error, scale, rtol, time.perf_counter() - t0)


def example_of(shape: Any, model: nn.Module) -> Any:
    """Random example inputs of a recorded input shape (:func:`fxtaylor.models.shapes`, as a run
    records it in ``config["input_shape"]``: ``[1, 3, 32, 32]`` for one tensor, a list of each
    argument's shapes otherwise) on the model's device and floating dtype. A single tensor gets
    batch 1: the recorded batch is whatever the run's example had, the deployment's is 1."""
    if not isinstance(shape, list) or not shape:
        raise FxTaylorError(f"no input shape recorded (got {shape!r:.40}): pass example_inputs")
    device, dtype = device_of(model), float_dtype(model)

    def rand(s: Any) -> Any:
        if isinstance(s, list) and s and all(isinstance(d, int) for d in s):
            return torch.randn(s, device=device, dtype=dtype)
        if isinstance(s, (list, tuple)):
            return [rand(v) for v in s]
        if isinstance(s, dict):
            return {k: rand(v) for k, v in s.items()}
        return s

    if all(isinstance(d, int) for d in shape):
        return rand([1, *shape[1:]])
    return tuple(rand(s) for s in shape)


# -- checks, all before any export work ---------------------------------------------------------

def check_format(format: Any) -> None:
    if format not in FORMATS:
        raise FxTaylorError(f"unknown export format {format!r:.40}: use one of {', '.join(map(repr, FORMATS))}")


def check_path(path: Any, format: str) -> Path:
    """``path`` as a :class:`Path` that can become the exported file: a path (not a directory),
    in an existing, writable directory, not named with another format's suffix (a ``.pt2``
    holding ONNX would mislead whoever loads it)."""
    if not isinstance(path, (str, os.PathLike)) or not str(path):
        raise FxTaylorError(f"path must be a file path (str or os.PathLike), got {type(path).__name__} {path!r:.60}")
    path = Path(path)
    if path.is_dir():
        raise WriteError(f"cannot write {path}: it is a directory; pass a file path (e.g. {path / ('model' + FORMATS[format])})")
    other = next((f for f, suffix in FORMATS.items() if path.suffix == suffix and f != format), None)
    if other is not None:
        raise FxTaylorError(f"{path} ends in {path.suffix}, the suffix of {other} files, but the format is {format!r}: "
                            f"export as {other!r} or name a {FORMATS[format]} file")
    parent = path.parent
    if not parent.is_dir():
        raise WriteError(f"cannot write {path}: directory {parent} does not exist (create it first)")
    try:
        check_writable_dir(parent, "the directory of path")
    except FxTaylorError as e:
        raise WriteError(str(e)) from None
    return path


def check_rtol(rtol: Any) -> None:
    if rtol is None:
        return
    if isinstance(rtol, bool) or not isinstance(rtol, (int, float)) or not math.isfinite(rtol) or rtol <= 0:
        raise FxTaylorError(f"rtol must be a finite number > 0 (or None for the default), got {rtol!r:.40}")


def default_rtol(model: nn.Module) -> float:
    """:data:`RTOL` for the lowest-precision floating dtype among the model's weights (float32
    for a model without any)."""
    dtypes = {t.dtype for t in [*model.parameters(), *model.buffers()] if t.is_floating_point()}
    return max((RTOL.get(d, RTOL[torch.float32]) for d in dtypes), default=RTOL[torch.float32])


# -- exporting to bytes -------------------------------------------------------------------------

def eval_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model`` in eval mode: the exporters run the model, may register hooks while
    they trace, and export whatever mode the module is in; the user's model must come out as it
    went in."""
    try:
        return copy.deepcopy(model).eval()
    except Exception as e:  # an attribute that cannot be copied (a lock, an open file)
        raise FxTaylorError(f"cannot export: the model cannot be copied ({type(e).__name__}: {e})"[:300]) from None


def onnx_bytes(model: nn.Module, args: tuple, dynamic_batch: bool) -> tuple[bytes, bool]:
    """The model as a serialised ONNX model (:func:`fxtaylor.to_onnx.program`, the exporter the
    latency runtime measures) and whether its batch is dynamic."""
    proto, dynamic = program(model, tuple(args), dynamic_batch=dynamic_batch)
    try:
        return proto.SerializeToString(), dynamic
    except ValueError as e:  # protobuf's 2 GiB limit
        raise FxTaylorError(f"the ONNX model cannot be serialised ({e}); models over 2 GiB need external data files, "
                            "which fxtaylor does not write: use format='torch.export'") from None


def pt2_bytes(model: nn.Module, args: tuple, dynamic_batch: bool) -> tuple[bytes, bool]:
    """The model as a serialised ``torch.export`` program (a ``.pt2`` archive) and whether its
    batch is dynamic: the same dynamic-batch rule as the ONNX export (traced at batch 2 when the
    example has batch 1, since torch.export specialises size-1 dimensions; static when the
    model's graph fixes its batch)."""
    ep, dynamic = None, False
    if dynamic_batch and batched(args):
        wide = widened(args)
        try:
            ep, dynamic = trace(model, wide, batch_shapes(wide)), True
        except FxTaylorError:
            pass  # the model fixes its batch: export it as it is
    if ep is None:
        ep = trace(model, tuple(args), None)
    buf = io.BytesIO()
    torch.export.save(ep, buf)
    return buf.getvalue(), dynamic


def trace(model: nn.Module, args: tuple, dynamic_shapes: Any) -> Any:
    try:
        with quiet():
            return torch.export.export(model, args, dynamic_shapes=dynamic_shapes)
    except Exception as e:  # torch.export's error classes are many and partly private: all mean "not exportable"
        raise FxTaylorError(f"torch.export cannot export this model: {failure(e)}{where(e)}") from None


def where(e: BaseException) -> str:
    """The model's source line an export error points at (a data-dependent branch names no op,
    only the line), as " (at file:line)"; "" when it names none."""
    found = re.findall(r'File "([^"]+)", line (\d+), in (\w+)', str(e))
    return f" (at {Path(found[-1][0]).name}:{found[-1][1]} in {found[-1][2]})" if found else ""


# -- loading back and comparing -----------------------------------------------------------------

def load(data: bytes, format: str, device: torch.device) -> Callable[[tuple], list[torch.Tensor]]:
    """The exported bytes loaded by the runtime they are for, as ``run(args) -> output tensors``
    (flattened, on the CPU, in float64). ONNX runs on ONNX Runtime's CUDA provider for a CUDA
    model where that provider exists, else on its CPU provider."""
    if format == "onnx":
        return onnx_runner(data, device)
    try:
        with quiet():
            module = torch.export.load(io.BytesIO(data)).module()
    except Exception as e:
        raise FxTaylorError(f"the exported program cannot be loaded back ({type(e).__name__}: {e})"[:300]) from None

    def run(args: tuple) -> list[torch.Tensor]:
        with torch.no_grad():
            return flat(module(*args))
    return run


def onnx_runner(data: bytes, device: torch.device) -> Callable[[tuple], list[torch.Tensor]]:
    ort = require("onnxruntime", "onnx export")
    providers = ["CPUExecutionProvider"]
    if device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: the check reports what matters
    try:
        session = ort.InferenceSession(data, options, providers=providers)
    except Exception as e:
        raise FxTaylorError(f"ONNX Runtime cannot load the exported model: {first_line(e)[:300]}") from None
    names = [i.name for i in session.get_inputs()]

    def run(args: tuple) -> list[torch.Tensor]:
        tensors = [t for t in pytree.tree_leaves(tuple(args)) if isinstance(t, torch.Tensor)]
        if len(tensors) != len(names):
            raise FxTaylorError(f"the exported ONNX model takes {len(names)} inputs, the example has {len(tensors)} tensors")
        feed = {n: t.detach().cpu().numpy() for n, t in zip(names, tensors)}
        try:
            outputs = session.run(None, feed)
        except Exception as e:
            raise FxTaylorError(f"ONNX Runtime cannot run the exported model: {first_line(e)[:300]}") from None
        return [torch.from_numpy(o).double() for o in outputs]
    return run


def compare(run: Callable[[tuple], list[torch.Tensor]], model: nn.Module, args: tuple, format: str) -> tuple[float, float]:
    """(max |exported − torch|, max |torch|) on ``args``, over every output tensor."""
    expected = flat(examples.run(model, tuple(args)))
    got = run(args)
    if len(got) != len(expected):
        raise FxTaylorError(f"the {format} export returns {len(got)} outputs, the model {len(expected)}")
    error = scale = 0.0
    for i, (g, e) in enumerate(zip(got, expected)):
        if g.shape != e.shape:
            raise FxTaylorError(f"the {format} export's output {i} has shape {tuple(g.shape)}, the model's "
                                f"{tuple(e.shape)} (at {examples.shape_of(args[0])})")
        if e.numel():
            error = max(error, float(difference(g, e).max()))
            scale = max(scale, float(e.abs().nan_to_num(0.0, 0.0, 0.0).max()))
    return error, scale


def difference(got: torch.Tensor, expected: torch.Tensor) -> torch.Tensor:
    """|got − expected| element-wise, where a NaN on one side only is an infinite difference (a
    plain max would drop it: ``max(0.0, nan)`` is 0.0) and NaN on both sides, or the same
    infinity, is none."""
    same = (got == expected) | (got.isnan() & expected.isnan())
    return torch.where(same, torch.zeros_like(got), (got - expected).abs().nan_to_num(math.inf, math.inf))


def flat(output: Any) -> list[torch.Tensor]:
    """Every tensor of a (nested) model output, in pytree order (the order both exporters
    flatten outputs in), on the CPU as float64 so differences are not rounded again."""
    return [t.detach().cpu().double() for t in pytree.tree_leaves(output) if isinstance(t, torch.Tensor)]


# -- batch sizes (the dynamic-batch rule itself is fxtaylor.to_onnx's) ---------------------------

def other_batch(args: tuple) -> int:
    """A batch size other than the example's, to check a dynamic batch at."""
    return OTHER_BATCH if batch_of(args) != OTHER_BATCH else OTHER_BATCH + 1

