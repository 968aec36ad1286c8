"""Where and how a model will run: the settings every latency number depends on.

A latency is only meaningful for one device, batch size, dtype, memory format and CPU thread
count; :class:`Deployment` names them, fills the unset ones from the model and the device
(:meth:`Deployment.resolved`), and refuses settings the device cannot run before anything is
timed, each with a one-line :class:`~fxtaylor.errors.FxTaylorError`.
"""
from __future__ import annotations

import dataclasses
import functools
import platform
import re
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from ..devices import device_of
from ..errors import FxTaylorError, options_class
from .runtimes import RUNTIMES, run_once, runtime_of

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
MEMORY_FORMATS = {"channels_last": torch.channels_last, "contiguous": torch.contiguous_format}

# Per-device default memory format, used when Deployment.memory_format is None.
# CUDA: cuDNN's tensor-core kernels run NHWC natively; channels_last is the documented fast path
# for float16/bfloat16 (issue 12's H200 measurements used it; not measured here: no GPU).
# CPU: measured on this repository's 2-core Xeon (AVX-512, torch 2.14, oneDNN), dense torchvision
# ResNet-50 and MobileNetV2 at 224 px, batch 1, one thread, 7 alternating rounds: channels_last
# was 4 % and 23 % faster (docs/latency.md, "Measuring latency", gives the command).
DEFAULT_MEMORY_FORMAT = {"cuda": "channels_last", "cpu": "channels_last"}


@options_class  # an unknown or missing option is one FxTaylorError line, not a TypeError
@dataclass(frozen=True)
class Deployment:
    """How the model will run where it is deployed.

    ``device``: ``"cpu"``, ``"cuda"``, ``"cuda:1"``...; None: the device of the model's
    parameters. ``batch_size``: images per forward pass. ``dtype``: ``"float32"``,
    ``"float16"`` or ``"bfloat16"`` (the model and input are cast to it for timing).
    ``memory_format``: ``"channels_last"`` or ``"contiguous"`` (4-D tensors); None: the device's
    default (:data:`DEFAULT_MEMORY_FORMAT`; contiguous in a runtime without channels_last).
    ``threads``: CPU threads while timing; None: ``torch.get_num_threads()``. ``runtime``: what
    runs the model there — ``"eager"`` (PyTorch), ``"onnxruntime"`` (the exported ONNX file in
    ONNX Runtime), ``"torch.compile"`` or ``"tensorrt"`` (:mod:`.runtimes`; every latency is
    timed in it).

    Construction checks what can be checked without a model (names, batch size, threads);
    :meth:`resolved` checks the device and that it can run the dtype.
    """

    # metadata["help"]: the field's line in docs/usage.md's table (generated: tests/doc_tables.py)
    device: str | None = field(default=None, metadata={"help": "'cpu', 'cuda', 'cuda:1', ...; None: the device of the model's parameters"})
    batch_size: int = field(default=1, metadata={"help": "images per forward pass"})
    dtype: str = field(default="float32", metadata={"help": "'float32', 'float16' or 'bfloat16': the model and input are cast to it for timing"})
    memory_format: str | None = field(default=None, metadata={
        "help": "'channels_last' or 'contiguous'; None: the device's default (channels_last on CPU and CUDA; contiguous in a runtime without it)"})
    threads: int | None = field(default=None, metadata={"help": "CPU threads while timing; None: torch.get_num_threads()"})
    runtime: str = field(default="eager", metadata={
        "help": "what runs the model there, and so times it: 'eager' (PyTorch), 'onnxruntime', 'torch.compile', 'tensorrt' (docs/latency.md#runtimes)"})

    def __post_init__(self) -> None:
        if not isinstance(self.runtime, str) or self.runtime not in RUNTIMES:
            raise FxTaylorError(f"latency runtime {self.runtime!r} is unknown: use one of {', '.join(RUNTIMES)}")
        if self.device is not None:
            if not isinstance(self.device, (str, torch.device)):
                raise FxTaylorError(f"latency device must be a name such as 'cpu' or 'cuda:0', got {type(self.device).__name__} "
                                    f"{self.device!r}")
            try:
                kind = torch.device(self.device).type
            except (RuntimeError, TypeError):
                kind = None
            if kind not in ("cpu", "cuda"):
                raise FxTaylorError(f"latency device {str(self.device)!r} is unknown: use 'cpu' or 'cuda[:index]'")
            object.__setattr__(self, "device", str(self.device))
        if not isinstance(self.dtype, str) or self.dtype not in DTYPES:
            raise FxTaylorError(f"latency dtype {self.dtype!r} is unknown: use one of {', '.join(DTYPES)}")
        if self.memory_format is not None and (not isinstance(self.memory_format, str) or self.memory_format not in MEMORY_FORMATS):
            raise FxTaylorError(
                f"latency memory format {self.memory_format!r} is unknown: use one of {', '.join(MEMORY_FORMATS)}"
            )
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise FxTaylorError(f"latency batch size must be a whole number ≥ 1, got {self.batch_size!r}")
        if self.threads is not None and (isinstance(self.threads, bool) or not isinstance(self.threads, int) or self.threads < 1):
            raise FxTaylorError(f"latency threads must be a whole number ≥ 1, got {self.threads!r}")

    # -- filling in ----------------------------------------------------------------------------

    def resolved(self, model: nn.Module) -> "Deployment":
        """This deployment with every None filled: the model's device, the device's default
        memory format, torch's thread count. Raises FxTaylorError for a device that does not
        exist here or a dtype it cannot run (tried with a tiny conv, once per process)."""
        device = _check_device(self.device if self.device is not None else str(device_of(model)))
        runtime = runtime_of(self.runtime)
        runtime.check(device, self.memory_format)  # its package, its devices, a format it has
        fmt = self.memory_format or DEFAULT_MEMORY_FORMAT.get(torch.device(device).type, "contiguous")
        fmt = fmt if fmt in runtime.formats else "contiguous"
        threads = self.threads if self.threads is not None else torch.get_num_threads()
        check_runs(device, self.dtype, fmt, self.runtime)
        return dataclasses.replace(self, device=device, memory_format=fmt, threads=threads)

    def for_tables(self) -> "Deployment":
        """The deployment the per-layer latency tables are timed in: this one, but in the
        runtime's table runtime where it has one (torch.compile's tables are eager:
        :mod:`.runtimes`)."""
        return dataclasses.replace(self, runtime=runtime_of(self.runtime).tables or self.runtime)

    @property
    def torch_device(self) -> torch.device:
        return torch.device(self.device or "cpu")

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    @property
    def torch_memory_format(self) -> torch.memory_format:
        return MEMORY_FORMATS[self.memory_format or "contiguous"]

    # -- recording -----------------------------------------------------------------------------

    def as_dict(self) -> dict:
        """The settings plus the device's model name and torch's version (JSON-able): what a
        report needs to say where its latencies were measured."""
        d = dataclasses.asdict(self)
        d["device_name"] = device_name(self.device) if self.device is not None else None
        d["torch"] = torch.__version__
        d["runtime_version"] = runtime_of(self.runtime).version()
        return d

    def describe(self) -> str:
        """The whole deployment in words: ``"cpu, batch 1, float32, channels_last, 2 threads"``."""
        return describe(self.as_dict())

    def how_to_run(self) -> str:
        """How to run a model as it was measured here (:func:`how_to_run`)."""
        return how_to_run(self.as_dict())

    def key(self) -> str:
        """A stable file-name-safe string naming everything a latency depends on: device model
        (GPU name or CPU model), torch version, batch, dtype, format, threads. Call it on a
        :meth:`resolved` deployment (unset fields appear as ``auto``)."""
        dev = self.device or "auto"
        parts = [
            dev.replace(":", ""), device_name(self.device) if self.device else "auto", f"torch{torch.__version__}",
            f"b{self.batch_size}", self.dtype, self.memory_format or "auto", f"t{self.threads or 'auto'}",
        ]
        if self.runtime != "eager":  # eager keys stay what they were: caches measured before runtimes stay valid
            parts.append(f"{self.runtime}{runtime_of(self.runtime).version()}")
        return re.sub(r"[^A-Za-z0-9._+-]+", "_", "-".join(parts))


def _check_device(device: str) -> str:
    """The canonical name of ``device`` (``cuda`` → ``cuda:0``); FxTaylorError if there is no
    such device on this machine."""
    try:
        d = torch.device(device)
    except (RuntimeError, TypeError):
        raise FxTaylorError(f"latency device {device!r} is unknown: use 'cpu' or 'cuda[:index]'") from None
    if d.type == "cpu":
        return "cpu"
    if d.type == "cuda":
        if not torch.cuda.is_available():
            raise FxTaylorError(f"latency device {device!r}: CUDA is not available in this torch build or machine")
        index = d.index if d.index is not None else torch.cuda.current_device()
        if index >= torch.cuda.device_count():
            raise FxTaylorError(f"latency device {device!r}: only {torch.cuda.device_count()} CUDA device(s) here")
        return f"cuda:{index}"
    raise FxTaylorError(f"latency device {device!r} is unknown: use 'cpu' or 'cuda[:index]'")


@functools.lru_cache(maxsize=None)
def check_runs(device: str, dtype: str, memory_format: str, runtime: str = "eager") -> None:
    """Run a tiny conv in ``dtype``/``memory_format`` on ``device`` in ``runtime``: kernels
    missing for a dtype (float16 convolution on some CPU builds, in ONNX Runtime's CPU provider)
    fail here, once, not in the middle of a build."""
    try:
        conv = nn.Conv2d(4, 4, 3, padding=1).eval().requires_grad_(False)
        conv = conv.to(device, DTYPES[dtype], memory_format=MEMORY_FORMATS[memory_format])
        x = torch.randn(1, 4, 8, 8, device=device, dtype=DTYPES[dtype]).to(memory_format=MEMORY_FORMATS[memory_format])
        run_once(conv, (x,), Deployment(device=device, dtype=dtype, memory_format=memory_format, threads=1, runtime=runtime))
    except Exception as e:  # a missing kernel: RuntimeError, NotImplementedError, a runtime's own classes
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        where = f"{device} ({memory_format})" + ("" if runtime == Deployment.runtime else f" in {runtime}")
        raise FxTaylorError(f"latency dtype {dtype} cannot run on {where}: {first}") from None


@functools.lru_cache(maxsize=None)
def device_name(device: str) -> str:
    """The hardware model: the GPU's name, or the CPU's model name from /proc/cpuinfo."""
    d = torch.device(device)
    if d.type == "cuda" and torch.cuda.is_available():
        return torch.cuda.get_device_name(d)
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def describe(d: dict) -> str:
    """A deployment recorded by :meth:`Deployment.as_dict` (a report's ``config.deployment``)
    in words: device, batch, dtype, memory format and — on a CPU — threads."""
    parts = [str(d.get("device")), f"batch {d.get('batch_size')}", str(d.get("dtype"))]
    if d.get("memory_format"):
        parts.append(str(d["memory_format"]))
    if d.get("threads") and str(d.get("device")).startswith("cpu"):
        parts.append(f"{d['threads']} thread{'s' if d['threads'] != 1 else ''}")
    parts.append(runtime_words(d))
    return ", ".join(parts)


def runtime_words(d: dict) -> str:
    """The runtime of a recorded deployment in words (a report from before runtimes: eager)."""
    name = d.get("runtime") or "eager"
    label = RUNTIMES[name].label if name in RUNTIMES else name
    return f"{label} {d['runtime_version']}" if d.get("runtime_version") and name != "eager" else label


def how_to_run(d: dict) -> str:
    """How to run a model as the deployment ``d`` measured it: a latency holds only for the
    runtime, layout, dtype and threads it was measured with (a channels_last measurement says
    little about the contiguous layout a model gets by default). The runtime's row words it."""
    name = d.get("runtime") or "eager"
    return "; ".join(RUNTIMES[name if name in RUNTIMES else "eager"].how_to_run(d))
