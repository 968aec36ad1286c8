"""Trace a model with torch.fx and run it once, annotating every node with its channel atoms.

:class:`ChannelProp` is an ``fx.Interpreter`` in the manner of ``torch.fx.passes.shape_prop``:
it executes each node on real example inputs (so every rule sees concrete shapes and argument
values) and stores the node's channel annotation next to it. Side effects on the model are
avoided: the run is under ``no_grad`` with every module in eval mode, and train/eval flags are
restored afterwards.
"""
from __future__ import annotations

import copy
import traceback
import warnings
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn

from ..errors import TraceError
from . import rules
from .atoms import PARAM, Ann, Atoms, Factor
from .call import Call


class _Tracer(fx.Tracer):
    """``fx.Tracer`` with user leaf modules, remembering which module it is inside."""

    def __init__(self, leaves: tuple):
        super().__init__()
        self.leaf_types = tuple(t for t in leaves if isinstance(t, type))
        self.leaf_names = {t for t in leaves if isinstance(t, str)}
        self.leaf_ids = {id(t) for t in leaves if isinstance(t, nn.Module)}
        self.stack: list[tuple[str, str]] = []
        self.failed_in: tuple[str, str] | None = None  # innermost module when tracing failed

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if self.is_user_leaf(m, qualname) or rules.known_leaf(m):
            return True
        return super().is_leaf_module(m, qualname)

    def is_user_leaf(self, m: nn.Module, qualname: str) -> bool:
        return qualname in self.leaf_names or id(m) in self.leaf_ids or isinstance(m, self.leaf_types)

    def call_module(self, m, forward, args, kwargs):
        self.stack.append((self.path_of_module(m), type(m).__name__))
        try:
            return super().call_module(m, forward, args, kwargs)
        except Exception:
            self.failed_in = self.failed_in or self.stack[-1]
            raise
        finally:
            self.stack.pop()


def symbolic_trace(model: nn.Module, leaves: tuple = ()) -> tuple[fx.Graph, set[str]]:
    """Trace ``model``; returns the fx Graph and the names of user-declared leaf modules.

    A model torch.fx cannot trace raises :class:`TraceError` naming the innermost module being
    traced, the line of user code, and the fix (declare that module a leaf).
    """
    tracer = _Tracer(tuple(leaves))
    try:
        graph = tracer.trace(model)
    except Exception as e:  # torch.fx raises TraceError, TypeError, RuntimeError... alike
        where, cls = tracer.failed_in or ("", type(model).__name__)
        line = _user_line(e)
        raise TraceError(
            f"torch.fx cannot trace {'module ' + repr(where) if where else 'the model'} ({cls}): "
            f"{type(e).__name__}: {e}{line}. This usually means Python control flow (if/for/while) "
            f"on tensor values. "
            + (f"Fix: pass leaf_modules=[{cls}] (or the name {where!r}) so it is called as a black "
               "box; the channels around it are then frozen." if where else
               "Fix: move that code into a submodule and pass it in leaf_modules, or make it traceable.")
        ) from e
    # No GraphModule: its Python code generation would cost more than the whole analysis.
    user_leaves = {
        n.target for n in graph.nodes
        if n.op == "call_module" and tracer.is_user_leaf(model.get_submodule(n.target), n.target)
    }
    return graph, user_leaves


def _user_line(e: BaseException) -> str:
    """' at file:line (code)' of the innermost frame outside torch, if any."""
    for fr in reversed(traceback.extract_tb(e.__traceback__)):
        if "/torch/" not in fr.filename and "/fxtaylor/" not in fr.filename:
            return f" at {fr.filename}:{fr.lineno} ({(fr.line or '').strip()})"
    return ""


class ChannelProp(fx.Interpreter):
    """Runs the graph once; ``self.anns[node]`` is each node's channel annotation afterwards.

    With ``meta=True`` every tensor lives on the ``meta`` device: ops compute shapes, not
    values, which is all the rules need (a batch-1 ResNet-50 forward costs ~50 ms of convs on
    2 cores; on meta it is a few ms). Modules are run as shallow copies holding meta views of
    their parameters, so the model itself is never touched.
    """

    def __init__(self, model: nn.Module, graph: fx.Graph, opaque: set[str], meta: bool):
        super().__init__(model, graph=graph)
        self.atoms = Atoms()
        self.anns: dict[fx.Node, Ann] = {}
        # consumer call node -> (input node, dim, atoms read, input shape): the feature maps
        self.reads: dict[fx.Node, tuple[fx.Node, int, torch.Tensor, torch.Size]] = {}
        self.opaque = opaque
        self.meta = meta
        self.unknown: dict[str, int] = {}  # op name -> how many nodes had no rule
        # module name -> (input atoms, output atoms) along the channel dim, first call only
        self.module_io: dict[str, tuple[torch.Tensor | None, torch.Tensor | None]] = {}
        # fx's fetch_attr walks the dotted path on every call; one walk of the model is cheaper
        self.submodules = dict(model.named_modules())

    def fetch_attr(self, target: str) -> Any:
        m = self.submodules.get(target)
        return m if m is not None else super().fetch_attr(target)

    def run_node(self, n: fx.Node) -> Any:
        with self._set_current_node(n):
            args, kwargs = self.fetch_args_kwargs_from_env(n)
            try:
                out = getattr(self, n.op)(n.target, args, kwargs)
            except Exception as e:
                if self.meta:
                    raise _NeedsValues(n.format_node()) from e
                raise
        module = self.fetch_attr(n.target) if n.op == "call_module" else None
        c = Call(n, args, kwargs, out, self.anns, self.atoms, module)
        self.anns[n] = self._annotate(c)
        return out

    def _annotate(self, c: Call) -> Ann:
        n = c.node
        if n.op == "placeholder":
            return ()
        if n.op == "get_attr":
            return _parameter_factors(c)
        if n.op == "output":
            for a in c.all_input_anns():
                self.atoms.freeze_ann(a, "reaches the model output")
            return ()
        rule = rules.lookup(n, c.module)
        if rule is not None:
            ann = rule(c)
            self._record_read(c)
            if c.module is not None and c.node.target not in self.module_io:
                self.module_io[c.node.target] = (_single(c.ann(0)), _single(ann))
            return ann
        if not any(c.all_input_anns()):
            return ()
        if n.op == "call_module" and n.target in self.opaque:
            reason = f"opaque leaf module {n.target} ({type(c.module).__name__})"
        else:
            op = type(c.module).__name__ if c.module is not None else c.name
            self.unknown[op] = self.unknown.get(op, 0) + 1
            reason = f"no channel rule for {op}"
        for a in c.all_input_anns():
            self.atoms.freeze_ann(a, reason)
        return ()

    def _record_read(self, c: Call) -> None:
        """Remember what a conv/linear call read: the tensors the Taylor criterion observes."""
        if c.module is None or not isinstance(c.module, rules.READERS) or not isinstance(c.node.args[0], fx.Node):
            return
        x = c.args[0]
        dim = x.dim() - 1 if isinstance(c.module, nn.Linear) else (1 if x.dim() == c.module.weight.dim() else 0)
        f = rules.factor_on(c.ann(0), dim)
        if f is not None and f.single:
            self.reads[c.node] = (c.node.args[0], dim, f.atoms, x.shape)

    def placeholder(self, target, args, kwargs):
        x = super().placeholder(target, args, kwargs)
        return _to_meta(x) if self.meta else x

    def get_attr(self, target, args, kwargs):
        x = super().get_attr(target, args, kwargs)
        return _to_meta(x) if self.meta else x

    def call_module(self, target, args, kwargs):
        m = self.fetch_attr(target)
        if not self.meta:
            return m(*args, **kwargs)
        if _is_tensor(args) and not kwargs:
            if isinstance(m, rules.SAME_SHAPE_MODULES):
                return args[0]
            if type(m) in (nn.Conv1d, nn.Conv2d, nn.Conv3d) and len(args) == 1:
                return _conv_out(m, args[0])
        return _meta_copy(m)(*args, **kwargs)

    def call_function(self, target, args, kwargs):
        if self.meta and _is_tensor(args):
            if target in rules.SAME_SHAPE_FUNCS:
                return args[0]
            if target in rules.BROADCAST_FUNCS:
                return _broadcast(args)
        if self.meta and target is torch.cat and args and isinstance(args[0], (list, tuple)):
            return _cat(*args, **kwargs)
        return super().call_function(target, args, kwargs)

    def call_method(self, target, args, kwargs):
        if self.meta and _is_tensor(args):
            if target in rules.SAME_SHAPE_METHODS:
                return args[0]
            if target in rules.BROADCAST_METHODS:
                return _broadcast(args)
        return super().call_method(target, args, kwargs)

def _parameter_factors(c: Call) -> Ann:
    """A free nn.Parameter read by get_attr: each axis longer than 1 is a space of its own.

    Only axes that some op ties to real channels end up in a group (ViT's class token joins
    the token channels); an axis tied to nothing (a position embedding's token axis) does not.
    """
    p = c.out
    if not isinstance(p, nn.Parameter):
        return ()
    name = str(c.node.target)
    return tuple(
        Factor((d,), c.atoms.space(name, f"param{d}", PARAM, s, "Parameter").atoms)
        for d, s in enumerate(p.shape) if s > 1
    )


def _is_tensor(args: tuple) -> bool:
    return bool(args) and isinstance(args[0], torch.Tensor)


def _broadcast(args: tuple) -> torch.Tensor:
    """Meta result of a broadcasting binary op, without dispatching it."""
    shapes = [a.shape for a in args if isinstance(a, torch.Tensor)]
    nd = max(len(s) for s in shapes)
    # torch.broadcast_shapes costs ~2.5 ms a call (symbolic-shape machinery); this is the rule.
    shape = [1] * nd
    for s in shapes:
        for i, n in enumerate(s, nd - len(s)):
            if n != 1:
                shape[i] = n
    return torch.empty(shape, dtype=torch.result_type(*args[:2]), device="meta")


def _cat(tensors, dim: int = 0) -> torch.Tensor:
    """Meta result of torch.cat (its meta kernel is Python reference code)."""
    t0 = tensors[0]
    d = dim % t0.dim()
    shape = list(t0.shape)
    shape[d] = sum(t.shape[d] for t in tensors)
    return torch.empty(shape, dtype=t0.dtype, device="meta")


def _conv_out(m: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """Meta output of a conv (the meta kernel spends ~0.4 ms per call in argument checks)."""
    k, s, d = m.kernel_size, m.stride, m.dilation
    spatial = x.shape[-len(k):]
    if m.padding == "same":
        size = list(spatial)
    else:
        p = (0,) * len(k) if m.padding == "valid" else m.padding
        size = [(n + 2 * p[i] - d[i] * (k[i] - 1) - 1) // s[i] + 1 for i, n in enumerate(spatial)]
    return torch.empty((*x.shape[: -len(k) - 1], m.out_channels, *size), dtype=x.dtype, device="meta")


def _single(ann: Ann) -> torch.Tensor | None:
    """The atoms of an annotation made of exactly one single-dim factor."""
    if isinstance(ann, tuple) and len(ann) == 1 and ann[0].single:
        return ann[0].atoms
    return None


class _NeedsValues(Exception):
    """An op failed on meta tensors (it needs real values): run again on the real device."""


def _to_meta(x: Any) -> Any:
    if isinstance(x, nn.Parameter):
        return nn.Parameter(x.detach().to("meta"), requires_grad=x.requires_grad)
    return x.to("meta") if isinstance(x, torch.Tensor) else x


def _meta_copy(m: nn.Module) -> nn.Module:
    """A shallow copy of ``m`` whose own parameters and buffers are meta tensors."""
    c = copy.copy(m)
    c._parameters = {k: None if v is None else _to_meta(v) for k, v in m._parameters.items()}
    c._buffers = {k: None if v is None else v.to("meta") for k, v in m._buffers.items()}
    return c


def run(model: nn.Module, graph: fx.Graph, example_inputs: Any, opaque: set[str]) -> ChannelProp:
    """Run the graph on the inputs in eval mode without autograd: on the meta device if every
    op supports it, else (an op that needs values, a leaf with sub-modules) on the real one."""
    inputs = example_inputs if isinstance(example_inputs, (tuple, list)) else (example_inputs,)
    modes = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        with torch.no_grad():
            try:
                prop = ChannelProp(model, graph, opaque, meta=True)
                prop.run(*inputs)
            except _NeedsValues:
                prop = ChannelProp(model, graph, opaque, meta=False)
                prop.run(*inputs)
    finally:
        for m, t in modes:
            m.training = t
    if prop.unknown:
        ops = ", ".join(sorted(prop.unknown))
        warnings.warn(
            f"fxtaylor has no channel rule for: {ops}. The channels flowing through them are "
            "frozen (not pruned). See docs/graph.md to add a rule.",
            stacklevel=3,
        )
    return prop
