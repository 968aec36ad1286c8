"""Partial tracing: one channel graph for a model torch.fx cannot trace whole.

A detection model's ``forward`` resizes images, generates anchors and runs NMS with Python
control flow on tensor values, so ``fx.symbolic_trace`` fails at the top. Its backbone, FPN
and heads are ordinary conv nets. This module runs the model once on the example inputs and
builds one fx graph of that run:

- **parts**: going down from the root, each module called is first tried as a whole with
  torch.fx (its list/dict arguments given as real lists/dicts of placeholders, its other
  arguments as the constants they were); the largest traceable modules are *parts*, and their
  fx graphs are inlined with qualified names. A module with a channel rule of its own (conv,
  batch norm, ...) or declared in ``leaf_modules`` is called as one node, as fx would.
- **glue**: the code between parts (the untraceable ``forward`` bodies) is recorded op by op
  with a ``TorchFunctionMode``, but only ops that read a tensor some earlier node produced: so
  what flows from one part to the next through glue code (a feature dict handed to the RPN and
  box heads, a view and a cat) is followed by the same channel rules as traced code, and an op
  without a rule freezes the channels it reads, with a reason naming the untraced module and
  why fx could not trace it. Python values read from a tensor (``.tolist()``, ``.item()``) count
  as reads: those channels freeze too. Shape queries do not read values and are not recorded.
- tensors that appear from nowhere (inputs, tensors built from Python data) become placeholders
  holding the value they had.

The graph is what ran for these inputs: Python branches in glue code are fixed at the example,
as a ``self.training`` branch is fixed by fx. The model itself is not modified.
"""
from __future__ import annotations

import operator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn
import torch.utils._pytree as pytree
from torch.overrides import TorchFunctionMode

from ..errors import TraceError
from ..modes import in_eval, preserved
from . import ops
from .propagate import Tracer, user_line

# Tensor attributes and methods that read metadata, never values: not recorded.
_METADATA = {
    "size", "dim", "ndimension", "numel", "nelement", "element_size", "is_floating_point", "is_complex",
    "is_contiguous", "get_device", "__len__", "stride", "storage_offset", "data_ptr", "is_nonzero_shape",
    "__hash__", "type", "__format__", "__repr__", "__dir__",
}
# Tensor dunder methods and the operator function fxtaylor's rules know them by; r-variants swap.
_DUNDER = {
    "__add__": operator.add, "__sub__": operator.sub, "__mul__": operator.mul, "__truediv__": operator.truediv,
    "__floordiv__": operator.floordiv, "__getitem__": operator.getitem, "__neg__": operator.neg,
    "__iadd__": operator.iadd, "__isub__": operator.isub, "__imul__": operator.imul, "__itruediv__": operator.itruediv,
    "__matmul__": operator.matmul, "__pow__": operator.pow, "__mod__": operator.mod,
    "__and__": operator.and_, "__or__": operator.or_, "__eq__": operator.eq, "__ne__": operator.ne,
    "__lt__": operator.lt, "__le__": operator.le, "__gt__": operator.gt, "__ge__": operator.ge,
}
_RDUNDER = {"__radd__": operator.add, "__rsub__": operator.sub, "__rmul__": operator.mul, "__rtruediv__": operator.truediv,
            "__rmatmul__": operator.matmul, "__rpow__": operator.pow}


@dataclass
class Partial:
    """What partial tracing did: modules traced whole by fx, and those it could not trace (and
    why). Shown by ``ChannelGraph.summary()`` and ``fxtaylor inspect``."""

    traced: list[str] = field(default_factory=list)
    untraced: dict[str, str] = field(default_factory=dict)  # module path -> trace error

    def describe(self) -> str:
        lines = [f"partially traced: {len(self.traced)} parts traced by torch.fx, "
                 f"{len(self.untraced)} modules recorded op by op"]
        lines += [f"  traced: {p or '<root>'}" for p in self.traced]
        lines += [f"  not traced: {p or '<root>'}: {e}" for p, e in self.untraced.items()]
        return "\n".join(lines)


class _PartTracer(Tracer):
    """Traces a part held as child ``p`` of a wrapper; leaf decisions use the part's real path."""

    def __init__(self, leaves: tuple, prefix: str, registry: ops.Registry):
        super().__init__(leaves, registry)
        self.prefix = prefix

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if qualname == "p":
            return False
        return super().is_leaf_module(m, _join(self.prefix, qualname[2:]))


class _Wrapper(nn.Module):
    """``forward(*tensors)`` = the part called on its arguments rebuilt around those tensors."""

    def __init__(self, part: nn.Module, args: tuple, kwargs: dict):
        super().__init__()
        self.p = part
        self.structure = (args, kwargs)

    def forward(self, *flat):
        it = iter(flat)
        args, kwargs = _rebuild(self.structure, it)
        return self.p(*args, **kwargs)


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix and name else prefix or name


def _tensors(x: Any) -> list[torch.Tensor]:
    """Tensors inside lists, tuples and dicts, in pytree order."""
    return [t for t in pytree.tree_leaves(x) if isinstance(t, torch.Tensor)]


def _rebuild(x: Any, it) -> Any:
    """``x`` with every tensor replaced by the next item of ``it`` (same order as :func:`_tensors`)."""
    return pytree.tree_map(lambda t: next(it) if isinstance(t, torch.Tensor) else t, x)


_PLAIN = (int, float, bool, str, type(None), torch.Size, torch.dtype, torch.device, slice, type(Ellipsis))


def _hidden_tensor(x: Any) -> str | None:
    """Name of an argument type that may hide tensors fx would bake in as constants."""
    if isinstance(x, (torch.Tensor,) + _PLAIN):
        return None
    if isinstance(x, (list, tuple)):
        return next((r for r in map(_hidden_tensor, x) if r), None)
    if isinstance(x, dict):
        return next((r for r in map(_hidden_tensor, x.values()) if r), None)
    return type(x).__name__


def _walk(value: Any, mapped: Any, found: list) -> None:
    """Pair each tensor of a concrete output with the fx node that stands for it."""
    if isinstance(value, torch.Tensor):
        if isinstance(mapped, fx.Node):
            found.append((value, mapped))
    elif isinstance(value, (list, tuple)) and isinstance(mapped, (list, tuple)) and len(value) == len(mapped):
        for v, m in zip(value, mapped):
            _walk(v, m, found)
    elif isinstance(value, dict) and isinstance(mapped, dict):
        for k, v in value.items():
            if k in mapped:
                _walk(v, mapped[k], found)


class Recorder(TorchFunctionMode):
    """Runs the model once and builds the merged graph (see the module docstring)."""

    def __init__(self, model: nn.Module, leaves: tuple, registry: ops.Registry = ops.REGISTRY):
        super().__init__()
        self.model = model
        self.leaves = leaves
        self.registry = registry  # which modules are leaves (they have a row)
        self.names = {id(m): n for n, m in model.named_modules()}
        self.graph = fx.Graph()
        self.node_of: dict[int, fx.Node] = {}  # id(tensor) -> node standing for it
        self.alive: list[Any] = []  # every tensor mapped, kept so its id is never reused
        self.inputs: list[tuple[fx.Node, torch.Tensor]] = []
        self.partial = Partial()
        self.stack: list[Any] = []  # per module call: a part being run, or the path of glue code
        self.depth = 0  # > 0 inside a part: its ops are in its own graph
        self.paused = False
        self.cache: dict[tuple, Any] = {}

    # -- tensors <-> nodes -------------------------------------------------------------------

    def _bind(self, t: torch.Tensor, node: fx.Node) -> None:
        self.node_of[id(t)] = node
        self.alive.append(t)

    def _node(self, t: torch.Tensor) -> fx.Node:
        """The node standing for ``t``; an unknown tensor becomes a placeholder holding its value."""
        n = self.node_of.get(id(t))
        if n is None:  # placeholders stay first, in the order of self.inputs (the run's arguments)
            last = self.inputs[-1][0] if self.inputs else None
            with self.graph.inserting_after(last) if last is not None else self.graph.inserting_before(None):
                n = self.graph.placeholder(f"input_{len(self.inputs)}")
            self.inputs.append((n, t))
            self._bind(t, n)
        return n

    def _arg(self, x: Any) -> Any:
        """``x`` with its tensors replaced by the nodes standing for them."""
        return pytree.tree_map(lambda t: self._node(t) if isinstance(t, torch.Tensor) else t, x)

    def _known(self, x: Any) -> bool:
        return any(id(t) in self.node_of for t in _tensors(x))

    def _outputs(self, value: Any, node: fx.Node) -> None:
        """Bind the tensors of an op's result: the result itself, or getitem nodes into it."""
        if isinstance(value, torch.Tensor):
            self._bind(value, node)
        elif isinstance(value, (list, tuple)):
            for i, v in enumerate(value):
                if isinstance(v, torch.Tensor):
                    self._bind(v, self.graph.call_function(operator.getitem, (node, i)))

    # -- glue: torch functions outside parts --------------------------------------------------

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if self.paused or self.depth or not self._known((args, kwargs)):
            return out
        name = getattr(func, "__name__", "")
        if (name == "__get__" or name in _METADATA) and not _tensors(out):
            return out  # shape, dtype, device...: no values read (x.type(dtype) or .T give tensors: ops)
        where = self._where()
        owner = getattr(func, "__objclass__", None) or getattr(getattr(func, "__self__", None), "__class__", None)
        if name in _RDUNDER:
            node = self.graph.call_function(_RDUNDER[name], self._arg((args[1], args[0])), self._arg(kwargs))
        elif name in _DUNDER:
            node = self.graph.call_function(_DUNDER[name], self._arg(tuple(args)), self._arg(kwargs))
        elif owner in (torch._C.TensorBase, torch.Tensor) or getattr(func, "__qualname__", "").split(".")[0] in ("Tensor", "TensorBase"):
            # a Tensor method (C or Python); F.unfold is a function though Tensor.unfold exists
            node = self.graph.call_method(name, self._arg(tuple(args)), self._arg(kwargs))
        else:
            node = self.graph.call_function(func, self._arg(tuple(args)), self._arg(kwargs))
        node.meta["fxtaylor_untraced"] = where
        self._outputs(out, node)
        return out

    def _where(self) -> str:
        for item in reversed(self.stack):  # the innermost module whose code is running
            if isinstance(item, str):
                name = item or "<root>"
                return f"{name} (not traced, see graph.partial)" if item in self.partial.untraced else name
        return "<root>"

    # -- module calls: parts, or glue code to record -------------------------------------------

    def pre_hook(self, module: nn.Module, args: tuple, kwargs: dict):
        if self.paused:  # fx is tracing a part: its module calls are fx's business
            return None
        if self.depth:
            self.depth += 1
            return None
        path = self.names.get(id(module))
        if path is None:  # a module not in the model (created on the fly): its ops are glue
            self.stack.append("")
            return None
        part = self._part(module, path, args, kwargs)
        if part is None:
            self.stack.append(path)
        else:
            self.stack.append(part)
            self.depth = 1
        return None

    def post_hook(self, module: nn.Module, args: tuple, kwargs: dict, output: Any):
        if self.paused:
            return None
        if self.depth > 1:
            self.depth -= 1
            return None
        item = self.stack.pop()
        if self.depth == 1:
            self.depth = 0
            self._emit(item, args, kwargs, output)
        return None

    def _part(self, module: nn.Module, path: str, args: tuple, kwargs: dict):
        """("leaf", path) / ("traced", path, graph) for a part, None for glue code."""
        tracer = Tracer(self.leaves, self.registry)
        if tracer.is_leaf_module(module, path):
            return ("leaf", path, None)
        if not self._known((args, kwargs)) and not _tensors((args, kwargs)):
            return None
        hidden = _hidden_tensor((args, kwargs))
        if hidden:
            self.partial.untraced[path] = f"an argument of type {hidden}"
            return None
        key = (path, _signature((args, kwargs)))
        if key not in self.cache:
            self.cache[key] = self._try_trace(module, path, args, kwargs)
        got = self.cache[key]
        if isinstance(got, str):
            self.partial.untraced.setdefault(path, got)
            return None
        if path not in self.partial.traced:
            self.partial.traced.append(path)
        return ("traced", path, got)

    def _try_trace(self, module: nn.Module, path: str, args: tuple, kwargs: dict) -> fx.Graph | str:
        wrapper = _Wrapper(module, args, kwargs)
        n = len(_tensors((args, kwargs)))
        self.paused = True
        try:
            with preserved(wrapper):
                graph = _PartTracer(self.leaves, path, self.registry).trace(wrapper, concrete_args=tuple(fx.PH for _ in range(n)))
        except Exception as e:  # fx raises TraceError, TypeError, RuntimeError... alike
            return f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}{user_line(e)}"
        finally:
            self.paused = False
        if any(nd.op == "get_attr" and not nd.target.startswith("p.") for nd in graph.nodes):  # a _tensor_constant
            return "uses a tensor that is neither an argument, a parameter nor a buffer"
        return graph

    def _emit(self, part: tuple, args: tuple, kwargs: dict, output: Any) -> None:
        kind, path, sub = part
        if kind == "leaf":
            node = self.graph.call_module(path, self._arg(tuple(args)), self._arg(kwargs))
            self._outputs(output, node)
            return
        inputs = iter(self._node(t) for t in _tensors((args, kwargs)))
        env: dict[fx.Node, Any] = {}
        for nd in sub.nodes:
            if nd.op == "placeholder":
                env[nd] = next(inputs)
            elif nd.op == "output":
                found: list = []
                _walk(output, fx.node.map_arg(nd.args[0], lambda a: env[a]), found)
                for t, m in found:
                    self._bind(t, m)
            else:
                new = self.graph.node_copy(nd, lambda a: env[a])
                if nd.op in ("call_module", "get_attr"):
                    new.target = _join(path, nd.target[2:])  # "p.layer1" -> "<path>.layer1"
                env[nd] = new

    # -- the run -------------------------------------------------------------------------------

    def finish(self, output: Any) -> None:
        self.graph.output(self._arg_known(output))

    def _arg_known(self, x: Any) -> Any:
        """The model's output, tensors mapped to nodes; tensors no node made are left out."""
        return pytree.tree_map(lambda t: self.node_of.get(id(t)) if isinstance(t, torch.Tensor) else None, x)


def _signature(x: Any) -> Any:
    """What a part's trace depends on: the structure and the non-tensor values of its arguments."""
    if isinstance(x, torch.Tensor):
        return ("T", x.dim())
    if isinstance(x, (list, tuple)):
        return (type(x).__name__, tuple(_signature(v) for v in x))
    if isinstance(x, dict):
        return ("dict", tuple((k, _signature(v)) for k, v in x.items()))
    try:
        hash(x)
        return x
    except TypeError:
        return repr(x)


def record(model: nn.Module, example_inputs: Any, leaves: tuple,
           registry: ops.Registry = ops.REGISTRY) -> tuple[fx.Graph, tuple, Partial]:
    """The merged graph of one eval-mode run of ``model`` on ``example_inputs``, the values of
    its placeholders, and what was traced. The model's train/eval flags are restored."""
    inputs = example_inputs if isinstance(example_inputs, (tuple, list)) else (example_inputs,)
    rec = Recorder(model, leaves, registry)
    handles = []
    try:
        for m in model.modules():
            handles.append(m.register_forward_pre_hook(rec.pre_hook, with_kwargs=True))
            handles.append(m.register_forward_hook(rec.post_hook, with_kwargs=True))
        for t in _tensors(tuple(inputs)):  # the model's inputs are the first placeholders
            rec._node(t)
        # eval mode; a module caching what it computed keeps its old value
        with in_eval(model), torch.no_grad(), preserved(model), rec:
            try:
                out = model(*inputs)
            except Exception as e:
                raise TraceError(
                    f"torch.fx cannot trace the model whole, and running it on the example inputs to trace it "
                    f"in parts failed: {type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}. "
                    "Pass example inputs the model runs on in eval mode (a detection model: a list of image tensors)"
                ) from e
        rec.finish(out)
    finally:
        for h in handles:
            h.remove()
    return rec.graph, tuple(t for _, t in rec.inputs), rec.partial
