"""Peak activation memory of an inference forward pass: estimated by liveness, and measured.

*Peak activation memory* is the most memory the tensors a forward pass creates occupy at
once, in eval mode without gradients, at a given batch size and dtype: what the forward adds
on top of the memory held before it. Parameters, buffers and the model's inputs are held before
the forward and are not counted; the outputs are (they are created by it).

:func:`estimate` counts it without running the model's kernels: the forward runs eagerly on
``meta`` tensors (shapes, no data) under a ``TorchDispatchMode`` that sees every aten op. An op
whose output has a new storage allocates its bytes (views and in-place ops allocate nothing);
a storage is freed when its last tensor dies, which a weak reference notices before the next
op, exactly when eager PyTorch would free it. The peak is the maximum of the live bytes after
each allocation. This works on any model that runs eagerly (no torch.fx trace needed: detection
models that trace only in parts too); a model whose forward reads tensor values (NMS) cannot run
on meta and is run on real tensors instead, tracked the same way.

Every allocation keeps the module that produced it and where its channels (dim 1) came from —
which layer's output channels, through elementwise ops, concatenations and channel slices —
so the peak can be re-computed for narrower layers without running anything
(:meth:`Liveness.peak_at`), and attributed to layers (:meth:`Liveness.by_layer`).

:func:`measure` is the ground truth the estimate is judged by: on CUDA
``torch.cuda.max_memory_allocated`` over the forward minus the memory allocated before it; on
CPU the allocator events of ``torch.profiler`` (``profile_memory=True``) summed in time order.
Measurements include what kernels allocate internally (oneDNN weight copies on CPU, cuDNN
workspaces on CUDA), which the estimate does not see (``onednn=True`` adds the CPU weight
copies, approximately): docs/memory.md gives the agreement.

A leaf module: imports only torch and fxtaylor's errors, modes and examples.
"""
from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

import torch
import torch.nn as nn
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_map
from torch.utils.weak import WeakIdKeyDictionary

from . import examples
from .devices import device_of
from .errors import FxTaylorError
from .modes import in_eval, preserved

Parts = tuple  # ((layer name or None, channels), ...) along dim 1; None part: fixed width
_CAT = {torch.ops.aten.cat.default}
_CONV = torch.ops.aten.convolution.default
_SLICES = {torch.ops.aten.slice.Tensor, torch.ops.aten.narrow.default}
_SPLITS = {torch.ops.aten.split.Tensor, torch.ops.aten.split_with_sizes.default,
           torch.ops.aten.split_with_sizes_copy.default, torch.ops.aten.split_copy.Tensor}


@dataclass
class Liveness:
    """What :func:`estimate` saw: every allocation, in order, and when it was freed.

    ``nbytes[i]``, ``module[i]`` (the innermost module running when it was allocated, "" at the
    top level), ``parts[i]`` (its channels by origin, or None: not a feature map, fixed) describe
    allocation ``i``; ``events`` is the timeline (``i`` allocated: ``i``; freed: ``~i``).
    ``peak`` is the maximum live bytes; ``live`` the allocations live at that moment.
    """

    nbytes: list[int] = field(default_factory=list)
    module: list[str] = field(default_factory=list)
    parts: list[Parts | None] = field(default_factory=list)
    dense: list[str | None] = field(default_factory=list)  # also scales with this layer's input channels
    events: list[int] = field(default_factory=list)
    batch_size: int | None = None
    dtype: torch.dtype = torch.float32
    on_meta: bool = True  # False: the model could not run on meta and ran on real tensors

    @property
    def peak(self) -> int:
        return self._walk(self.nbytes)[0]

    @property
    def live(self) -> list[int]:
        """The allocations live at the peak (the first moment it is reached)."""
        return self._walk(self.nbytes)[1]

    def _walk(self, nbytes: list[float]) -> tuple[Any, list[int]]:
        now, best, at, live = 0, 0, -1, set()
        for k, e in enumerate(self.events):
            now += nbytes[e] if e >= 0 else -nbytes[~e]
            if e >= 0 and now > best:
                best, at = now, k
        for e in self.events[: at + 1]:
            live.add(e) if e >= 0 else live.discard(~e)
        return best, sorted(live)

    def by_layer(self, layers: Iterable[str] | None = None) -> dict[str, float]:
        """Bytes live at the peak per layer of origin (channel share of each tensor); key None:
        the bytes no layer's width changes. ``layers``: count only these names (the rest: None)."""
        keep = set(layers) if layers is not None else None
        out: dict[str | None, float] = {}
        for i in self.live:
            for name, share in self.shares(i):
                name = name if keep is None or name in keep else None
                out[name] = out.get(name, 0.0) + share
        return out

    def shares(self, i: int) -> list[tuple[str | None, float]]:
        """Allocation ``i``'s bytes split by the origin of its channels (None: fixed)."""
        p = self.parts[i]
        if not p:
            return [(None, float(self.nbytes[i]))]
        c = sum(n for _, n in p)
        return [(name, self.nbytes[i] * n / c) for name, n in p]

    def peak_at(self, scale: Mapping[str, float], scale_in: Mapping[str, float] | None = None) -> float:
        """The peak with each layer's output channels scaled by ``scale[name]`` (missing: 1)
        and, for the kernel transients of dense layers (a re-laid-out weight), its input
        channels by ``scale_in[name]``: every tensor shrinks by the share of its channels that
        go, and the maximum over time is taken again (the peak may move to another moment)."""
        scale_in = scale_in or {}
        sized = []
        for i, b in enumerate(self.nbytes):
            p, d = self.parts[i], self.dense[i]
            if p and any(name in scale for name, _ in p):
                b = b * sum(n * scale.get(name, 1.0) for name, n in p) / sum(n for _, n in p)
            sized.append(b * scale_in.get(d, 1.0) if d is not None else b)
        return self._walk(sized)[0]


def batched(args: tuple, batch_size: int | None, dtype: torch.dtype | None = None, device: torch.device | str | None = None,
            memory_format: torch.memory_format | None = None) -> tuple:
    """``args`` at ``batch_size``: a lone tensor input has its per-sample shape repeated
    (random values: memory depends on shapes); other inputs (a detection model's list of
    images) are kept as given. Floating tensors are cast to ``dtype``; 4-D ones to
    ``memory_format``."""
    single = len(args) == 1 and isinstance(args[0], torch.Tensor)

    def fit(t):
        if not isinstance(t, torch.Tensor):
            return t
        if single and batch_size is not None and t.dim() >= 1 and t.shape[0] != batch_size:
            t = torch.randn((batch_size, *t.shape[1:]), dtype=t.dtype, device=t.device) if t.is_floating_point() \
                else t[:1].expand(batch_size, *t.shape[1:]).clone()
        t = t.to(device=device if device is not None else t.device,
                 dtype=dtype if dtype is not None and t.is_floating_point() else t.dtype)
        return t.contiguous(memory_format=memory_format) if memory_format is not None and t.dim() == 4 else t

    return tuple(tree_map(fit, list(args)))


class _Tracker(TorchDispatchMode):
    """Sees every aten op: records the storages it creates and frees the dead ones first."""

    def __init__(self, run: Liveness, stack: list[str], widths: Mapping[str, int] | None, leaves: set[str],
                 transients: bool):
        super().__init__()
        self.run, self.stack, self.widths, self.leaves, self.transients = run, stack, widths, leaves, transients
        self.alive: dict[StorageWeakRef, int] = {}  # storage -> allocation index
        self.parts = WeakIdKeyDictionary()  # tensor (views included) -> its Parts

    def collect(self) -> None:
        dead = [k for k in self.alive if k.expired()]
        for k in dead:
            self.run.events.append(~self.alive.pop(k))

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.collect()  # what died since the last op is freed before this one allocates
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        ins = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        outs = [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]
        for k, t in enumerate(outs):
            self.parts[t] = p = self._parts(func, args, kwargs, ins, t, k)
            try:
                ref = StorageWeakRef(t.untyped_storage())
            except (NotImplementedError, RuntimeError):  # a tensor without storage (sparse): none
                continue
            if ref in self.alive or any(_same_storage(t, x) for x in ins):
                continue  # a view or an in-place result: nothing allocated
            n = t.untyped_storage().nbytes()
            if n:
                self.alive[ref] = self._allocate(n, p)
        if self.transients and func is _CONV and outs:
            self._weight_copy(args, outs[0])
        return out

    def _allocate(self, n: int, parts: Parts | None, dense: str | None = None) -> int:
        i = len(self.run.nbytes)
        self.run.events.append(i)
        self.run.nbytes.append(int(n))
        self.run.module.append(self.stack[-1] if self.stack else "")
        self.run.parts.append(parts)
        self.run.dense.append(dense)
        return i

    def _weight_copy(self, args, out: torch.Tensor) -> None:
        """oneDNN on CPU copies a conv's weight into its blocked layout on every call (kernels
        larger than 1x1, feature maps not tiny; measured, docs/memory.md): live with the output,
        freed at once."""
        w, groups = args[1], args[8] if len(args) > 8 else 1
        if w.dim() < 3 or all(k == 1 for k in w.shape[2:]):
            return
        here = self.stack[-1] if self.stack else None
        p = self.run.parts[-1] if self.run.parts and out.dim() >= 2 else None
        p = ((here, out.shape[1]),) if here is not None and self._is_source(here, out.shape[1]) else p
        i = self._allocate(w.numel() * w.element_size(), p, here if groups == 1 and p else None)
        self.run.events.append(~i)

    def _is_source(self, here: str | None, c: int) -> bool:
        if self.widths is None:
            return here in self.leaves
        return here in self.widths and self.widths[here] == c

    def _parts(self, func, args, kwargs, ins, t, k) -> Parts | None:
        """Where ``t``'s channels (dim 1) come from (module doc)."""
        if t.dim() < 2:
            return None
        c = t.shape[1]
        here = self.stack[-1] if self.stack else None
        if self._is_source(here, c):
            return ((here, c),)
        if func in _CAT:
            dim = args[1] if len(args) > 1 else kwargs.get("dim", 0)
            if dim % t.dim() == 1:
                return _joined([self._of(x) for x in args[0]])
        src = args[0] if args and isinstance(args[0], torch.Tensor) else None
        if src is not None and src.dim() == t.dim() and src.shape[1] != c:
            dim = args[1] if len(args) > 1 else kwargs.get("dim", 0)
            if func in _SLICES and dim % t.dim() == 1:
                start = args[2] if len(args) > 2 and args[2] is not None else 0
                start = max(start + src.shape[1], 0) if start < 0 else min(start, src.shape[1])
                return _sliced(self._of(src), start, c)
            if func in _SPLITS and (args[2] if len(args) > 2 else kwargs.get("dim", 0)) % t.dim() == 1:
                sizes = args[1] if isinstance(args[1], (list, tuple)) else [args[1]] * -(-src.shape[1] // args[1])
                return _sliced(self._of(src), sum(sizes[:k]), c)
        same = [x for x in ins if x.dim() == t.dim() and x.shape[1] == c and self.parts.get(x) is not None]
        return self.parts[max(same, key=lambda x: x.numel())] if same else None

    def _of(self, x: torch.Tensor) -> Parts:
        p = self.parts.get(x) if isinstance(x, torch.Tensor) else None
        return p if p is not None else ((None, x.shape[1]),)


def _same_storage(a: torch.Tensor, b: torch.Tensor) -> bool:
    try:
        return a.untyped_storage()._cdata == b.untyped_storage()._cdata
    except (NotImplementedError, RuntimeError):
        return False


def _joined(parts: list[Parts]) -> Parts:
    out: list[tuple[str | None, int]] = []
    for p in parts:
        for name, n in p:
            if out and out[-1][0] == name:
                out[-1] = (name, out[-1][1] + n)
            else:
                out.append((name, n))
    return tuple(out)


def _sliced(p: Parts, start: int, length: int) -> Parts:
    """Channels ``start:start+length`` of ``p``."""
    out, pos = [], 0
    for name, n in p:
        lo, hi = max(start, pos), min(start + length, pos + n)
        if hi > lo:
            out.append((name, hi - lo))
        pos += n
    return _joined([tuple(out)])


def _enter(stack: list[str], name: str) -> None:  # a hook returning a value would replace the input
    stack.append(name)


def _leave(stack: list[str], name: str) -> None:  # ... or the output
    if stack and stack[-1] == name:
        stack.pop()


@contextlib.contextmanager
def _module_stack(model: nn.Module, stack: list[str]):
    """``stack`` holds the names of the modules running, innermost last."""
    handles = []
    names = {}
    for name, m in model.named_modules():
        names.setdefault(id(m), name)
    seen = set()
    for m in model.modules():
        if id(m) in seen:
            continue
        seen.add(id(m))
        name = names[id(m)]
        handles.append(m.register_forward_pre_hook(lambda *_, n=name: _enter(stack, n)))
        handles.append(m.register_forward_hook(lambda *_, n=name: _leave(stack, n), always_call=True))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def estimate(model: nn.Module, example_inputs: Any, *, batch_size: int | None = None, dtype: torch.dtype | None = None,
             memory_format: torch.memory_format | None = None, widths: Mapping[str, int] | None = None,
             onednn: bool = False, meta: bool = True) -> Liveness:
    """The liveness count of ``model``'s inference forward on ``example_inputs`` (module doc).

    ``batch_size``: a lone tensor input is resized to it (None: as given). ``dtype``: the
    parameters and floating inputs are taken in it (None: as they are). ``widths``: layer name
    -> output channels, the layers channels are attributed to when they produce a tensor of
    that width (other ops pass their input's origin on; None: every leaf module is a layer).
    ``onednn``: also count a copy of the weight for each conv with a kernel larger than 1x1, the
    blocked layout oneDNN re-lays weights into on CPU — on large feature maps; on small ones
    (≤ 4x4 measured) it picks an algorithm without the copy, and it pads some widths to its
    block: approximate (docs/memory.md). ``meta=False``: run
    the real kernels (slower; what ``meta`` falls back to). The model itself is not modified.
    """
    args = examples.resolve(model, example_inputs, run_tensor=False)
    options = (batch_size, dtype, memory_format, None if widths is None else dict(widths), onednn)
    if meta:
        try:
            return _run(model, args, *options, meta=True)
        except FxTaylorError:
            raise
        except Exception:  # the forward reads tensor values (NMS, .item()): real tensors then
            pass
    return _run(model, args, *options, meta=False)


def _run(model, args, batch_size, dtype, memory_format, widths, onednn, meta: bool) -> Liveness:
    run = Liveness(batch_size=batch_size, on_meta=meta)
    stack: list[str] = []
    state = {k: v for k, v in [*model.named_parameters(remove_duplicate=False), *model.named_buffers(remove_duplicate=False)]}
    if meta or dtype is not None:
        state = {k: v.to(device="meta" if meta else v.device, dtype=dtype if dtype is not None and v.is_floating_point() else v.dtype)
                 for k, v in state.items()}
    x = batched(args, batch_size, dtype, "meta" if meta else None, memory_format)
    run.dtype = next((t.dtype for t in tree_flatten(list(x))[0] if isinstance(t, torch.Tensor) and t.is_floating_point()),
                     dtype or torch.float32)
    leaves = {n for n, m in model.named_modules() if next(m.children(), None) is None}
    tracker = _Tracker(run, stack, widths, leaves, onednn)
    with torch.no_grad(), in_eval(model), preserved(model), _module_stack(model, stack):
        with tracker:
            out = torch.func.functional_call(model, state, tuple(x), strict=False, tie_weights=False)
            tracker.collect()
        del out
    return run


def measure(model: nn.Module, example_inputs: Any, *, batch_size: int | None = None, dtype: torch.dtype | None = None,
            memory_format: torch.memory_format | None = None, warmup: int = 1) -> int:
    """The peak memory a real forward pass of ``model`` allocates beyond what was allocated
    before it, in bytes: eval mode, no gradients, on the model's device (module doc). Inputs
    as :func:`estimate` takes them, made on that device. ``dtype``: run the model cast to it
    (on a copy). ``warmup`` forwards first, so one-time allocations (cuDNN autotuning, the cuBLAS
    workspace, lazy kernels) are not counted."""
    args = examples.resolve(model, example_inputs, run_tensor=False)
    p = next(model.parameters(), None)
    device = device_of(model)
    cast = dtype is not None and p is not None and p.dtype != dtype
    relaid = memory_format is not None and any(
        t.dim() == 4 and not t.is_contiguous(memory_format=memory_format) for t in model.parameters())
    if cast or relaid:  # deployed as the deployment runs it (a weight re-laid out per call would count)
        model = copy.deepcopy(model)
        model.to(dtype=dtype if cast else None, memory_format=memory_format if relaid else torch.preserve_format)
    x = batched(args, batch_size, dtype, device, memory_format)
    with torch.no_grad(), in_eval(model), preserved(model):
        for _ in range(warmup):
            model(*x)
        if device.type == "cuda":
            return _cuda_peak(model, x, device)
        return _profiled_peak(model, x)


def _cuda_peak(model: nn.Module, x: tuple, device: torch.device) -> int:
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    out = model(*x)
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device) - before
    del out
    return int(peak)


def _profiled_peak(model: nn.Module, x: tuple) -> int:
    """The running sum of the CPU allocator's events during one forward, at its maximum."""
    from torch._C._profiler import _EventType
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        out = model(*x)
    del out
    allocs, todo = [], list(prof.profiler.kineto_results.experimental_event_tree())
    while todo:
        e = todo.pop()
        todo.extend(e.children)
        if e.tag == _EventType.Allocation and str(e.extra_fields.device).startswith("cpu"):
            f = e.extra_fields
            allocs.append((e.start_time_ns, f.total_allocated, f.alloc_size))
    if not allocs:
        return 0
    # each event carries the allocator's running total after it: no ordering of same-time events needed
    allocs.sort(key=lambda a: a[0])
    before = allocs[0][1] - allocs[0][2]
    return int(max(total for _, total, _ in allocs) - before)


def format_bytes(n: float, like: float | None = None) -> str:
    """``n`` bytes for people: "812 B", "3.4 KiB", "12.3 MiB", "1.20 GiB"; ``like``: pick the
    unit for this value instead (numbers side by side in one unit)."""
    v = abs(like if like is not None else n)
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if v >= size:
            return f"{n / size:.2f} {unit}" if unit == "GiB" else f"{n / size:.1f} {unit}"
    return f"{n:.0f} B"
