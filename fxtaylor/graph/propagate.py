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
from torch.fx.immutable_collections import immutable_dict, immutable_list

from ..errors import TraceError
from ..modes import in_eval, preserved
from . import ops
from .atoms import PARAM, Ann, Atoms, Factor
from .call import Call, Multi, factor_on


class Tracer(fx.Tracer):
    """``fx.Tracer`` with user leaf modules, remembering which module it is inside. Every
    module ``registry`` has a row for is a leaf too (partial tracing builds on this class)."""

    def __init__(self, leaves: tuple, registry: ops.Registry = ops.REGISTRY):
        super().__init__()
        self.registry = registry
        self.leaf_types = tuple(t for t in leaves if isinstance(t, type))
        self.leaf_names = {t for t in leaves if isinstance(t, str)}
        self.leaf_ids = {id(t) for t in leaves if isinstance(t, nn.Module)}
        self.stack: list[tuple[str, str]] = []
        self.failed_in: tuple[str, str] | None = None  # innermost module when tracing failed

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        # every module fxtaylor has an op spec for is one node (torchvision's Conv3DSimple, a
        # Conv3d outside torch.nn that fx would trace into, included)
        if self.is_user_leaf(m, qualname) or self.registry.known_leaf(m):
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


def symbolic_trace(model: nn.Module, leaves: tuple = (), registry: ops.Registry = ops.REGISTRY) -> tuple[fx.Graph, set[str]]:
    """Trace ``model``; returns the fx Graph and the names of user-declared leaf modules.

    A model torch.fx cannot trace raises :class:`TraceError` naming the innermost module being
    traced, the line of user code, and the fix (declare that module a leaf).
    """
    tracer = Tracer(tuple(leaves), registry)
    try:
        with preserved(model):
            graph = tracer.trace(model)
            _keep_constants(graph, model)
    except Exception as e:  # torch.fx raises TraceError, TypeError, RuntimeError... alike
        where, cls = tracer.failed_in or ("", type(model).__name__)
        line = user_line(e)
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


def _keep_constants(graph: fx.Graph, model: nn.Module) -> None:
    """Tensors the code creates (MaxViT's ``torch.tensor`` of window offsets) are stashed by fx
    as new attributes of the root (``_tensor_constant0``) that ``preserved`` then removes, so
    the model is left as it was: each one is kept in its get_attr node's meta instead, where
    :class:`ChannelProp` reads it."""
    own = {name for name, _ in model.named_parameters()} | {name for name, _ in model.named_buffers()}
    for n in graph.nodes:
        if n.op == "get_attr" and n.target not in own and "." not in n.target and n.target not in vars(type(model)):
            value = vars(model).get(n.target)
            if isinstance(value, torch.Tensor):
                n.meta[CONSTANT] = value


CONSTANT = "fxtaylor_constant"  # node.meta key: a tensor constant fx stashed on the model


def user_line(e: BaseException) -> str:
    """' at file:line (code)' of the innermost frame outside torch and fxtaylor, if any: where
    in the user's code tracing failed (for the one-line :class:`TraceError`)."""
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

    def __init__(self, model: nn.Module, graph: fx.Graph, opaque: set[str], meta: bool, atoms: Atoms | None = None,
                 registry: ops.Registry = ops.REGISTRY):
        super().__init__(model, graph=graph)
        self.registry = registry  # what rule runs a node, and the meta run's shortcuts
        self.extra_traceback = False  # fx would append its node dump to our one-line TraceError
        self.atoms = atoms if atoms is not None else Atoms()  # shared: two modes' graphs tie alike
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
            if n.op in ("call_function", "call_method", "call_module"):
                # fx hands lists as immutable_list; user code may mutate its arguments (swin3d)
                args, kwargs = _mutable(args), _mutable(kwargs)
            try:
                if CONSTANT in n.meta:
                    out = _to_meta(n.meta[CONSTANT]) if self.meta else n.meta[CONSTANT]
                else:
                    out = getattr(self, n.op)(n.target, args, kwargs)
            except Exception as e:
                if self.meta:
                    raise _NeedsValues(n.format_node()) from e
                where = f"module {n.target!r}" if n.op == "call_module" else f"{n.op} {getattr(n.target, '__name__', n.target)}"
                raise TraceError(
                    f"running the traced graph on the example inputs failed at {where} (node {n.name}): "
                    f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}. Check that the example inputs "
                    "are ones the model runs on; else declare that module a leaf (leaf_modules=...)") from e
        module = self.fetch_attr(n.target) if n.op == "call_module" else None
        c = Call(n, args, kwargs, out, self.anns, self.atoms, module, self.registry)
        try:
            self.anns[n] = self._annotate(c)
        except ValueError as e:  # Atoms: a module seen with different channel counts
            raise TraceError(f"channel analysis failed at node {n.name} ({c.name}): {e}") from e
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
        if n.op == "call_function" and isinstance(n.target, type) and issubclass(n.target, tuple):
            return Multi(c.ann(i) for i in range(len(n.args)))  # a (named) tuple built: a container
        rule = self.registry.lookup(n, c.module)
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
        elif "fxtaylor_untraced" in n.meta:  # an op of glue code recorded by partial tracing
            reason = f"no channel rule for {c.name}"
        else:
            op = type(c.module).__name__ if c.module is not None else c.name
            self.unknown[op] = self.unknown.get(op, 0) + 1
            reason = f"no channel rule for {op}"
        for a in c.all_input_anns():
            self.atoms.freeze_ann(a, reason)
        return ()

    def _record_read(self, c: Call) -> None:
        """Remember what a conv/linear call read: the tensors the Taylor criterion observes."""
        spec = self.registry.spec_of(c.module) if c.module is not None else None
        if spec is None or spec.reads is None or not isinstance(c.node.args[0], fx.Node):
            return
        x = c.args[0]
        dim = spec.reads(c.module, x)
        f = factor_on(c.ann(0), dim)
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
        spec = self.registry.spec_of(m)
        if spec is not None and _is_tensor(args) and not kwargs:
            if spec.same_shape:
                return args[0]
            if spec.meta_out is not None and len(args) == 1:
                return spec.meta_out(m, args[0])
        return _meta_copy(m)(*args, **kwargs)

    def call_function(self, target, args, kwargs):
        if self.meta and _is_tensor(args):
            if target in ops.SAME_SHAPE_FUNCS:
                return args[0]
            if target in ops.BROADCAST_FUNCS:
                return _broadcast(args)
        if self.meta and target is torch.cat and args and isinstance(args[0], (list, tuple)):
            return _cat(*args, **kwargs)
        return super().call_function(target, args, kwargs)

    def call_method(self, target, args, kwargs):
        if self.meta and _is_tensor(args):
            if target in ops.SAME_SHAPE_METHODS:
                return args[0]
            if target in ops.BROADCAST_METHODS:
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


def _single(ann: Ann) -> torch.Tensor | None:
    """The atoms of an annotation made of exactly one single-dim factor."""
    if isinstance(ann, tuple) and len(ann) == 1 and ann[0].single:
        return ann[0].atoms
    return None


def _mutable(x: Any) -> Any:
    """fx's immutable lists and dicts as plain ones (recursively)."""
    if isinstance(x, immutable_list):
        return [_mutable(v) for v in x]
    if isinstance(x, immutable_dict):
        return {k: _mutable(v) for k, v in x.items()}
    if type(x) is tuple and any(isinstance(v, (list, dict, tuple)) for v in x):  # most args: tensors, ints
        return tuple(_mutable(v) for v in x)
    return x


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


def run(model: nn.Module, graph: fx.Graph, example_inputs: Any, opaque: set[str], train_graph: fx.Graph | None = None,
        registry: ops.Registry = ops.REGISTRY) -> ChannelProp:
    """Run the graph on the inputs in eval mode without autograd: on the meta device if every
    op supports it, else (an op that needs values, a leaf with sub-modules) on the real one.

    ``train_graph``: the graph fx traced in train mode, where it differs (an auxiliary head,
    a ``self.training`` branch). It is run into the same atoms, so the groups are the union of
    both modes' constraints and a model pruned in one mode runs in the other. The feature maps
    the criterion observes are the train graph's (it observes training steps); the per-module
    channels that costs are counted by are the eval graph's (the deployed model)."""
    inputs = example_inputs if isinstance(example_inputs, (tuple, list)) else (example_inputs,)
    with in_eval(model), torch.no_grad():
        prop = _run_one(model, graph, inputs, opaque, Atoms(), registry)
        if train_graph is not None:
            trained = _run_one(model, train_graph, inputs, opaque, prop.atoms, registry)
            prop.atoms, prop.reads = trained.atoms, trained.reads
            for op, k in trained.unknown.items():
                prop.unknown[op] = max(prop.unknown.get(op, 0), k)
    if prop.unknown:
        names = ", ".join(sorted(prop.unknown))
        warnings.warn(
            f"fxtaylor has no channel rule for: {names}. The channels flowing through them are "
            "frozen (not pruned). See docs/graph.md to add a rule.",
            stacklevel=3,
        )
    return prop


def _run_one(model: nn.Module, graph: fx.Graph, inputs: tuple, opaque: set[str], atoms: Atoms,
             registry: ops.Registry) -> ChannelProp:
    try:
        prop = ChannelProp(model, graph, opaque, meta=True, atoms=copy.deepcopy(atoms), registry=registry)
        prop.run(*inputs)
    except _NeedsValues:
        # real values; copies, so a replayed in-place op cannot touch the caller's tensors
        prop = ChannelProp(model, graph, opaque, meta=False, atoms=atoms, registry=registry)
        prop.run(*(x.clone() if isinstance(x, torch.Tensor) else x for x in inputs))
    return prop


def symbolic_trace_modes(model: nn.Module, leaves: tuple = (),
                         registry: ops.Registry = ops.REGISTRY) -> tuple[fx.Graph, fx.Graph | None, set[str]]:
    """fx graphs of ``model`` in eval and in train mode; the train one only where it differs
    (fx fixes ``if self.training`` at trace time). Raises :class:`TraceError` as
    :func:`symbolic_trace` when the eval graph cannot be traced."""
    with in_eval(model):
        graph, opaque = symbolic_trace(model, leaves, registry)
        if not _reads_training(model, graph):
            return graph, None, opaque
        model.train()
        try:
            train, _ = symbolic_trace(model, leaves, registry)
        except TraceError as e:
            warnings.warn(f"the model traces in eval mode but not in train mode ({e}); the channel graph "
                          "follows eval mode only: a pruned model may not run in train mode", stacklevel=3)
            train = None
    if train is not None and _same(graph, train):
        train = None
    return graph, train, opaque


def _reads_training(model: nn.Module, graph: fx.Graph) -> bool:
    """Whether the ``forward`` of a module fx traced into reads ``training`` (``self.training``
    compiles to a load of that name): only then can the train-mode graph differ. Saves the
    second trace (measured: 30-40 % of ``trace``'s time on ResNet-50, DenseNet-121) for most
    models. A helper function
    that reads a module's flag on its behalf is not seen."""
    leaves = {n.target for n in graph.nodes if n.op == "call_module"}
    types = {type(m) for name, m in model.named_modules() if name not in leaves}
    return any("training" in getattr(getattr(t.forward, "__code__", None), "co_names", ()) for t in types)


def _same(a: fx.Graph, b: fx.Graph) -> bool:
    na, nb = list(a.nodes), list(b.nodes)
    return len(na) == len(nb) and all(x.op == y.op and x.target == y.target for x, y in zip(na, nb))
