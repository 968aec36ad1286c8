"""The runtime a model is deployed in, and so timed in: one row per runtime.

The same cut is not the same speed-up everywhere: ResNet-50 cut to half its FLOPs ran at 0.544
of the dense latency in eager PyTorch but 0.663 in ONNX Runtime (batch 1, one thread, issue
21's measurement; docs/latency.md "Runtimes" has this machine's table). A latency target is
therefore measured in the runtime the model will ship in — :attr:`Deployment.runtime` names
it, and every timing (:func:`fxtaylor.latency.timing.time_calls`: latency tables, the check of
each cut, the before/after numbers) asks its row for a *runner*: a no-argument callable that
runs the prepared module on the prepared input the way that runtime does.

A row (:class:`Runtime`) states:

- ``name``, ``label`` and the ``package`` it needs (imported only when used; missing → one
  :class:`~fxtaylor.errors.FxTaylorError` saying what to install);
- ``devices`` it runs on and ``formats``: the memory formats that mean something in it (ONNX
  graphs are NCHW: channels_last does not exist there);
- ``tables``: the runtime the per-layer latency tables are timed in — itself, unless building
  a runner per grid point costs too much (torch.compile: 0.73 s per layer configuration here,
  hundreds per model; its tables are eager, its whole-model measurements compiled);
- ``builds``: whether a runner is built from the module (an export, a compile), a step that can
  refuse a model eager PyTorch runs — what :func:`fxtaylor.latency.timing.check_runtime`
  checks up front;
- ``runner(module, args, dep)``; :func:`run_once` builds one and runs it once.

Adding a runtime = adding a row to :data:`RUNTIMES`.
"""
from __future__ import annotations

import collections
import contextlib
import functools
import hashlib
from typing import Any, Callable

import torch
import torch.nn as nn

from ..errors import FxTaylorError
from ..optional import require

Runner = Callable[[], Any]
SESSIONS = 4  # ONNX Runtime sessions kept per process (LRU): the dense model, the model now, the last cuts. Each keeps its memory arena at its peak (ResNet-50 at batch 32: gigabytes), so few


class Runtime:
    """One runtime (module doc). Subclasses override :meth:`runner`; the rest is data."""

    name = ""
    label = ""
    package: str | None = None
    devices: tuple[str, ...] = ("cpu", "cuda")
    formats: tuple[str, ...] = ("channels_last", "contiguous")
    tables: str | None = None  # None: tables are timed in this runtime
    builds = True  # the runner is built from the module (an export, a compile), which can fail on its own

    def version(self) -> str:
        if self.package is None:
            return torch.__version__
        mod = require(self.package, f"the {self.name} latency runtime")
        return str(getattr(mod, "__version__", "?"))

    def check(self, device: str, memory_format: str | None) -> None:
        """FxTaylorError unless this runtime can run on ``device`` in ``memory_format``: the
        package is importable, the device type is one it runs on, the format means something."""
        if self.package is not None:
            require(self.package, f"the {self.name} latency runtime (--latency-runtime {self.name})")
        kind = torch.device(device).type
        if kind not in self.devices:
            raise FxTaylorError(f"the {self.name} latency runtime runs on {' or '.join(self.devices)}, not {kind}")
        if memory_format is not None and memory_format not in self.formats:
            raise FxTaylorError(f"the {self.name} latency runtime has no {memory_format} memory format "
                                f"(it runs {', '.join(self.formats)}): leave the format unset")

    def describe(self) -> str:
        return f"{self.label} {self.version()}"

    def multiple(self, device: str) -> int:
        """The channel multiple this runtime's kernels need on ``device`` whatever a sweep
        measures (1: none known; the latency tables' alignment sweep decides alone)."""
        return 1

    def how_to_run(self, d: dict) -> list[str]:
        """The steps that run a model as the recorded deployment ``d`` (``Deployment.as_dict``)
        timed it, in words: a latency holds only for the runtime, layout, dtype and threads it
        was measured with."""
        steps = [f"model.to({d.get('device')!r}, dtype=torch.{d.get('dtype')}).eval()"]
        if d.get("memory_format") == "channels_last":
            steps.append("model.to(memory_format=torch.channels_last) and each input x.to(memory_format=torch.channels_last)")
        steps += self.wrap(d)
        if d.get("threads") and str(d.get("device")).startswith("cpu"):
            steps.append(f"torch.set_num_threads({d['threads']})")
        steps.append(f"batches of {d.get('batch_size')}")
        return steps

    def wrap(self, d: dict) -> list[str]:
        """The step that puts the model in this runtime (none for eager)."""
        return []

    @contextlib.contextmanager
    def timing(self, n: int):
        """Around the building and timing of ``n`` runners at once."""
        yield

    def runner(self, module: nn.Module, args: tuple, dep: Any) -> Runner:
        raise NotImplementedError


class Eager(Runtime):
    name, label = "eager", "eager PyTorch"
    builds = False  # the runner is the module itself: it runs wherever the module ran

    def runner(self, module: nn.Module, args: tuple, dep: Any) -> Runner:
        return functools.partial(module, *args)


class Compiled(Runtime):
    """``torch.compile(module, dynamic=False)`` with the default inductor backend.

    Compile time: a runner is compiled on its first call, which the timing's untimed warm-up
    makes (:attr:`Timing.setup_s` records it: 22 s for the first ResNet-18 in a process here,
    0.6 s for a second instance at the same widths, seconds for each new width — every cut a
    check measures is a new graph). Dynamo keeps compiled code per Python code object and
    falls back to eager, silently, past ``recompile_limit`` graphs of it; a pruning run measures
    many widths of one model class, so each timing starts from ``torch._dynamo.reset()``,
    raises the limit to the number of runners it compiles, and turns hitting it into an error
    (``fail_on_recompile_limit_hit``) rather than an eager timing reported as compiled. That reset also drops any compiled
    code of the caller's own in this process (it recompiles on its next call).
    """

    name, label = "torch.compile", "torch.compile (inductor)"
    tables = "eager"  # a runner per grid point would compile hundreds of graphs: module doc

    def wrap(self, d: dict) -> list[str]:
        return ["model = torch.compile(model) (its first call compiles: make it before timing)"]

    @contextlib.contextmanager
    def timing(self, n: int):
        import torch._dynamo

        torch._dynamo.reset()
        # past the limit dynamo would run eager and we would time that: make it an error instead
        with torch._dynamo.config.patch(recompile_limit=max(8, n + 1), fail_on_recompile_limit_hit=True):
            yield

    def runner(self, module: nn.Module, args: tuple, dep: Any) -> Runner:
        return functools.partial(torch.compile(module, dynamic=False), *args)


class OnnxRuntime(Runtime):
    """ONNX Runtime (CPU execution provider; CUDA provider on a GPU): the module exported by
    :mod:`fxtaylor.to_onnx` — whole models as :func:`fxtaylor.export` writes them (dynamo
    exporter, dynamic batch), isolated layers by the fast path — run by an ``InferenceSession``
    with the deployment's threads as ``intra_op_num_threads``, one inter-op thread, sequential
    execution and every graph optimisation (ORT's defaults but for the threads).

    Each model (or layer configuration) is exported once per process: sessions are cached by
    the module's structure (its repr, parameter and buffer shapes and dtypes), the input
    shapes and the deployment — not by weight values, which do not change a dense kernel's time
    (:data:`SESSIONS` kept). Exporting ResNet-50 takes about 4 s here; a layer, milliseconds.
    """

    name, label, package = "onnxruntime", "ONNX Runtime", "onnxruntime"
    formats = ("contiguous",)

    def how_to_run(self, d: dict) -> list[str]:
        threads = d.get("threads") if str(d.get("device")).startswith("cpu") else None
        so = f" with so.intra_op_num_threads = {threads}, so.inter_op_num_threads = 1" if threads else ""
        return ["the file of fxtaylor.export(model, x, 'model.onnx') or `fxtaylor export RUN_DIR`",
                f"onnxruntime.InferenceSession('model.onnx', so){so}",
                f"{d.get('dtype')} NCHW inputs in batches of {d.get('batch_size')}"]

    def multiple(self, device: str) -> int:
        """ONNX Runtime's CPU convolutions run in a channel-blocked layout (NCHWc) whose block
        is one vector register of float32: 16 channels with AVX-512, 8 with AVX/AVX2, 4 else.
        A count that is not a multiple costs what the next multiple costs (a 3×3 conv with 256
        inputs at 2×2 here, AVX-512: 61.9 µs at 240 outputs, 74.7 µs at 244, 73.6 µs at 256),
        and cuts off the multiples were measured slower than none: the digits ResNet-18 pruned
        to ``target_latency=0.5`` in ONNX Runtime stopped at 0.59 ("no cut measured faster") at
        the multiple of 4 its sweep found, and reached 0.50 in a third of the time at 16
        (docs/latency.md, "Runtimes"). The sweep does not see the block on small layers, so
        the runtime states it."""
        if torch.device(device).type != "cpu":
            return 1
        return vector_floats()

    def __init__(self) -> None:
        self.sessions: collections.OrderedDict[str, Any] = collections.OrderedDict()
        self.exports = 0  # sessions built in this process (tests read it: a cache hit builds none)

    def runner(self, module: nn.Module, args: tuple, dep: Any) -> Runner:
        ort = require("onnxruntime", "the onnxruntime latency runtime")
        tensors = [a for a in args if isinstance(a, torch.Tensor)]
        if len(tensors) != len(args):
            raise FxTaylorError("the onnxruntime latency runtime times models whose inputs are tensors; this one takes "
                                f"{', '.join(type(a).__name__ for a in args)}")
        key = fingerprint(module, tensors, dep)
        sess = self.sessions.get(key)
        if sess is None:
            sess = self._session(ort, module, tuple(tensors), dep)
            self.sessions[key] = sess
            while len(self.sessions) > SESSIONS:
                self.sessions.popitem(last=False)
        self.sessions.move_to_end(key)
        names = [i.name for i in sess.get_inputs()]
        if torch.device(dep.device or "cpu").type == "cuda":
            return _bound(sess, names, tensors)
        feed = {n: t.detach().cpu().contiguous().numpy() for n, t in zip(names, tensors)}
        return functools.partial(sess.run, None, feed)

    def _session(self, ort: Any, module: nn.Module, args: tuple, dep: Any) -> Any:
        from .. import to_onnx

        leaf = not any(True for _ in module.children())
        blob = to_onnx.layer(module, args[0]) if leaf and len(args) == 1 else to_onnx.program(module, args)[0].SerializeToString()
        so = ort.SessionOptions()
        so.intra_op_num_threads = dep.threads or torch.get_num_threads()
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.log_severity_level = 3  # errors only: ORT's warnings about unused initializers are noise here
        cuda = torch.device(dep.device or "cpu").type == "cuda"
        if cuda and "CUDAExecutionProvider" not in ort.get_available_providers():
            raise FxTaylorError("the onnxruntime latency runtime on CUDA needs onnxruntime-gpu (this onnxruntime has "
                                f"{', '.join(ort.get_available_providers())}): pip install onnxruntime-gpu")
        providers = [("CUDAExecutionProvider", {"device_id": torch.device(dep.device).index or 0})] if cuda else ["CPUExecutionProvider"]
        try:
            sess = ort.InferenceSession(blob, so, providers=providers)
        except Exception as e:  # ORT raises its own (pybind) classes: a kernel missing for a dtype, an op it lacks
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise FxTaylorError(f"ONNX Runtime cannot run this model ({dep.dtype}): {first}") from None
        self.exports += 1
        return sess


def _bound(sess: Any, names: list[str], tensors: list[torch.Tensor]) -> Runner:
    """A CUDA runner: inputs bound in place from the torch tensors, outputs left on the device
    (no host copies in the timed call). Not run here: this machine has no GPU."""
    binding = sess.io_binding()
    for n, t in zip(names, tensors):
        t = t.contiguous()
        binding.bind_input(n, "cuda", t.device.index or 0, _np_dtype(t.dtype), list(t.shape), t.data_ptr())
    for o in sess.get_outputs():
        binding.bind_output(o.name, "cuda", tensors[0].device.index or 0)
    return functools.partial(sess.run_with_iobinding, binding)


def _np_dtype(dtype: torch.dtype):
    import numpy as np

    return {torch.float32: np.float32, torch.float16: np.float16}.get(dtype, np.float32)


class TensorRT(Runtime):
    """TensorRT through torch-tensorrt's dynamo path, on CUDA only, in the deployment's dtype
    (HALP's runtime; its tables are timed in TensorRT too, as HALP's are). Where torch-tensorrt
    or a GPU is missing, choosing it fails up front. Not run here: this machine has no GPU."""

    name, label, package = "tensorrt", "TensorRT (torch-tensorrt)", "torch_tensorrt"
    devices = ("cuda",)
    formats = ("contiguous",)

    def wrap(self, d: dict) -> list[str]:
        return [f"model = torch_tensorrt.compile(model, ir='dynamo', inputs=[x], enabled_precisions={{torch.{d.get('dtype')}}})"]

    def runner(self, module: nn.Module, args: tuple, dep: Any) -> Runner:
        trt = require("torch_tensorrt", "the tensorrt latency runtime")
        compiled = trt.compile(module, ir="dynamo", inputs=list(args), enabled_precisions={dep.torch_dtype})
        return functools.partial(compiled, *args)


@functools.lru_cache(maxsize=None)
def vector_floats() -> int:
    """float32 values in one vector register of this CPU: 16 (AVX-512F), 8 (AVX), 4 (other)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        flags = []
    return 16 if "avx512f" in flags else 8 if "avx" in flags else 4


RUNTIMES: dict[str, Runtime] = {r.name: r for r in (Eager(), OnnxRuntime(), Compiled(), TensorRT())}


def runtime_of(name: str) -> Runtime:
    """The row of runtime ``name`` (``Deployment`` has checked the name already)."""
    try:
        return RUNTIMES[name]
    except KeyError:
        raise FxTaylorError(f"latency runtime {name!r} is unknown: use one of {', '.join(RUNTIMES)}") from None


def run_once(module: nn.Module, args: tuple, dep: Any) -> None:
    """Build ``dep.runtime``'s runner for ``module`` (prepared: eval, device, dtype, format) on
    ``args`` and run it once in inference mode: what a runtime cannot take (a kernel missing for
    a dtype, an op the exporter lacks, a graph the compiler rejects) raises here, as the
    runtime raised it. A runner the runtime caches (ONNX Runtime's sessions) stays cached."""
    rt = runtime_of(dep.runtime)
    with rt.timing(1):
        run = rt.runner(module, args, dep)
        with torch.inference_mode():
            run()


def fingerprint(module: nn.Module, tensors: list[torch.Tensor], dep: Any) -> str:
    """What a module's runtime latency depends on: its structure and shapes, the inputs' shapes
    and the deployment — not its weight values."""
    parts = [repr(module), dep.key()]
    parts += [f"{n}:{tuple(t.shape)}:{t.dtype}" for n, t in (*module.named_parameters(), *module.named_buffers())]
    parts += [f"in:{tuple(t.shape)}:{t.dtype}" for t in tensors]
    return hashlib.sha1("\n".join(parts).encode()).hexdigest()
