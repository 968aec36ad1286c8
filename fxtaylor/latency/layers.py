"""Which layers the latency model times, and how to rebuild one at other channel counts.

A layer is *modelled* when its cost follows its channel counts and it can be rebuilt alone:

- ``conv``: ``nn.Conv1d/2d/3d`` and their subclasses that keep the base's forward (the op spec,
  :func:`fxtaylor.graph.ops.spec_of`; rebuilt as the registered class, e.g. ``nn.Conv3d`` for
  torchvision's ``Conv3DSimple``) — two counts (in, out). Depthwise (``groups == in_channels``)
  has one count (groups follow the channels, the channel multiplier is kept); other grouped
  convs keep their group count and scale the per-group width.
- ``linear``: ``nn.Linear`` (and subclasses with an op spec) — two counts (in_features, out_features).
- ``norm`` (batch/instance/group/layer norm, torchvision's ``FrozenBatchNorm2d``),
  ``activation``, ``pool``: one count C, the size of the channel dim (dim 1; the last
  dim for LayerNorm). Memory-bound: their time follows the number of elements.

Its configuration — everything but the channel counts that the kernel choice depends on:
type, kernel, stride, padding, dilation, groups, bias, input shape apart from the channel dim
(batch and spatial size) — is read from one hooked forward pass. Layers with equal
configurations and equal dense counts share one table (ResNet-50's repeated bottlenecks).

Not modelled (their time stays in the latency model's measured remainder): other module types,
and a module called several times at different shapes (torchvision ResNet calls one ReLU
module three times per block, at two widths: one channel count cannot describe it).
"""
from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass, field
from typing import Iterable

import torch
import torch.nn as nn
from torchvision.ops.misc import FrozenBatchNorm2d

from ..errors import FxTaylorError, describe
from ..examples import check_model
from ..graph import ops
from ..modes import in_eval

ACTIVATIONS = (
    nn.ReLU, nn.ReLU6, nn.SiLU, nn.GELU, nn.Hardswish, nn.Hardsigmoid, nn.Sigmoid, nn.Tanh,
    nn.LeakyReLU, nn.ELU, nn.Mish, nn.SELU, nn.CELU, nn.Softplus, nn.Hardtanh,
)
POOLS = (
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
    nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d,
)
BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
FROZEN_NORMS = (FrozenBatchNorm2d,)
INSTANCENORMS = (nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d)


@dataclass
class LayerSpec:
    """One modelled layer as found in the model: what to rebuild and at which counts.

    ``kind``: conv | linear | norm | activation | pool. ``counts``: 2 (in, out) or 1 (C).
    ``cin0``/``cout0``: dense counts (equal for one-count layers). ``step``: counts must be
    multiples of it (a grouped conv's group count, a GroupNorm group's width; else 1). ``calls``: how
    often the forward pass runs it (all at the same shape). ``shape``: input shape with the
    channel dim set to -1. ``config``: JSON-able description, hashed into the table key.
    """

    name: str
    module: nn.Module
    kind: str
    counts: int
    cin0: int
    cout0: int
    step: int
    calls: int
    shape: tuple[int, ...]
    channel_dim: int
    config: dict = field(default_factory=dict)

    def key(self) -> str:
        """Hash of the configuration and dense counts: layers with equal keys share a table."""
        blob = json.dumps({"config": self.config, "cin0": self.cin0, "cout0": self.cout0, "shape": self.shape}, sort_keys=True)
        return hashlib.sha1(blob.encode()).hexdigest()[:16]

    # -- rebuilding --------------------------------------------------------------------------

    def build(self, cin: int, cout: int) -> tuple[nn.Module, tuple[int, ...]]:
        """A fresh module like this one at (cin, cout) channels (one-count layers read cin), and
        its input shape. Random weights: timing does not depend on their values."""
        m = self.module
        c = cin
        if self.kind == "conv":
            cls = ops.registered_type(m) or type(m)  # nn.Conv3d for torchvision's Conv3DSimple
            kw = {"stride": m.stride, "padding": m.padding, "dilation": m.dilation, "bias": m.bias is not None,
                  "padding_mode": m.padding_mode}
            if m.transposed:
                kw["output_padding"] = m.output_padding
            if _depthwise(m):
                new = cls(c, c * (m.out_channels // m.in_channels), m.kernel_size, groups=c, **kw)
            else:
                new = cls(cin, cout, m.kernel_size, groups=m.groups, **kw)
        elif self.kind == "linear":
            new = nn.Linear(cin, cout, bias=m.bias is not None)
        elif isinstance(m, FROZEN_NORMS):
            new = FrozenBatchNorm2d(c, eps=m.eps)
        elif isinstance(m, BATCHNORMS):
            new = type(m)(c, eps=m.eps, momentum=m.momentum, affine=m.affine, track_running_stats=m.track_running_stats)
        elif isinstance(m, nn.GroupNorm):  # pruned by whole groups: the groups' width stays
            new = nn.GroupNorm(max(1, c // self.step) if m.num_groups > 1 else 1, c, eps=m.eps, affine=m.affine)
        elif isinstance(m, INSTANCENORMS):
            new = type(m)(c, eps=m.eps, affine=m.affine, track_running_stats=m.track_running_stats)
        elif isinstance(m, nn.LayerNorm):
            new = nn.LayerNorm(c, eps=m.eps, elementwise_affine=m.elementwise_affine, bias=getattr(m, "bias", None) is not None)
        else:  # activation, pool: no parameters, any channel count
            new = copy.deepcopy(m)
        shape = list(self.shape)
        shape[self.channel_dim] = cin
        return new, tuple(shape)


def find(model: nn.Module, x: torch.Tensor, names: set[str] | None) -> tuple[list[LayerSpec], dict[str, str]]:
    """The modelled layers of ``model`` (already on the deployment's device/dtype/format) seen in
    one forward pass on ``x``, and the names not modelled with the reason. ``names``: the
    modules to consider (None: every leaf module)."""
    seen: dict[str, list[tuple[int, ...]]] = {}
    handles = []
    modules = dict(model.named_modules())
    candidates = [n for n, m in modules.items() if (n in names if names is not None else not any(True for _ in m.children()))]
    for n in candidates:
        handles.append(modules[n].register_forward_pre_hook(_recorder(seen, n)))
    try:
        with in_eval(model), torch.inference_mode():  # batch-norm statistics must not move
            model(x)
    except FxTaylorError:
        raise
    except Exception as e:  # the example does not fit the model: one line, before anything is timed or written
        raise FxTaylorError(f"the model cannot run on the example input (inputs of shape {tuple(x.shape)}, "
                            f"{str(x.dtype).replace('torch.', '')}, on {x.device}): {describe(e)}") from e
    finally:
        for h in handles:
            h.remove()
    specs, skipped = [], {}
    for n in candidates:
        if n == "":
            continue
        m = modules[n]
        shapes = seen.get(n)
        if not shapes:
            skipped[n] = "not called in the forward pass"
            continue
        if any(s != shapes[0] for s in shapes):
            skipped[n] = f"called {len(shapes)} times at different shapes"
            continue
        spec = layer_spec(n, m, shapes[0], len(shapes))
        if isinstance(spec, str):
            skipped[n] = spec
        else:
            specs.append(spec)
    if names is not None:
        for n in sorted(names - set(modules)):
            skipped[n] = "no such module"
    return specs, skipped


def _recorder(seen: dict, name: str):
    def hook(module, args):
        if args and isinstance(args[0], torch.Tensor):
            seen.setdefault(name, []).append(tuple(args[0].shape))
        else:
            seen.setdefault(name, []).append(())

    return hook


def _depthwise(m: nn.Module) -> bool:
    return isinstance(m, nn.modules.conv._ConvNd) and m.groups > 1 and m.groups == m.in_channels


def layer_spec(name: str, m: nn.Module, shape: tuple[int, ...], calls: int) -> LayerSpec | str:
    """The LayerSpec of module ``m`` called at input ``shape``, or why it is not modelled."""
    if len(shape) < 2:
        return "input is not a tensor with a channel dim"
    base = {"type": type(m).__name__}
    spec = ops.spec_of(m)
    if isinstance(m, nn.modules.conv._ConvNd):
        if spec is None:
            return f"{type(m).__name__} overrides the conv's forward (not modelled)"
        cfg = {**base, "kernel": list(m.kernel_size), "stride": list(m.stride), "padding": m.padding if isinstance(m.padding, str) else list(m.padding),
               "dilation": list(m.dilation), "bias": m.bias is not None, "padding_mode": m.padding_mode}
        if m.transposed:
            cfg["transposed"], cfg["output_padding"] = True, list(m.output_padding)
        if _depthwise(m):
            cfg["groups"] = "depthwise"
            cfg["multiplier"] = m.out_channels // m.in_channels
            return LayerSpec(name, m, "conv", 1, m.in_channels, m.in_channels, 1, calls, _blank(shape, 1), 1, cfg)
        cfg["groups"] = m.groups
        return LayerSpec(name, m, "conv", 2, m.in_channels, m.out_channels, m.groups, calls, _blank(shape, 1), 1, cfg)
    if isinstance(m, nn.Linear) and spec is not None:
        cfg = {**base, "bias": m.bias is not None}
        return LayerSpec(name, m, "linear", 2, m.in_features, m.out_features, 1, calls, _blank(shape, -1), len(shape) - 1, cfg)
    if isinstance(m, BATCHNORMS + INSTANCENORMS + FROZEN_NORMS + (nn.GroupNorm,)):
        c = shape[1]
        # GroupNorm: whole groups go, so C stays a multiple of a group's width (one group: any C)
        step = m.num_channels // m.num_groups if isinstance(m, nn.GroupNorm) and m.num_groups > 1 else 1
        cfg = {**base, "affine": getattr(m, "affine", True), "groups": getattr(m, "num_groups", 1)}
        return LayerSpec(name, m, "norm", 1, c, c, step, calls, _blank(shape, 1), 1, cfg)
    if isinstance(m, nn.LayerNorm):
        if len(m.normalized_shape) != 1:
            return "LayerNorm over several dims (not modelled)"
        c = shape[-1]
        cfg = {**base, "affine": m.elementwise_affine}
        return LayerSpec(name, m, "norm", 1, c, c, 1, calls, _blank(shape, -1), len(shape) - 1, cfg)
    if isinstance(m, ACTIVATIONS + POOLS):
        kind = "pool" if isinstance(m, POOLS) else "activation"
        cfg = {**base, "repr": repr(m)}  # kernel/stride/output size and inplace all show in repr
        return LayerSpec(name, m, kind, 1, shape[1], shape[1], 1, calls, _blank(shape, 1), 1, cfg)
    return f"{type(m).__name__} (no latency table for this type)"


def _blank(shape: tuple[int, ...], dim: int) -> tuple[int, ...]:
    s = list(shape)
    s[dim] = -1
    return tuple(s)


def widths(model: nn.Module, example_input: torch.Tensor, names: Iterable[str] | None = None) -> dict[str, tuple[int, int]]:
    """Current (in, out) channel counts of ``model``'s modules as :meth:`LatencyModel.predict`
    reads them: conv in/out_channels, linear in/out_features, and for norm / activation / pool
    (C, C) with C the size of the input's channel dim, seen in one hooked forward pass (the
    input's first sample is enough). ``names``: the modules to read (None: every leaf)."""
    from .timing import one_tensor

    check_model(model)
    one = one_tensor(example_input)[:1]
    specs, _ = find(model, one, layer_names(names))
    out = {}
    for s in specs:
        m = s.module
        if s.kind == "conv" and s.counts == 2:
            out[s.name] = (m.in_channels, m.out_channels)
        elif s.kind == "linear":
            out[s.name] = (m.in_features, m.out_features)
        else:
            out[s.name] = (s.cin0, s.cin0)
    return out


def layer_names(names: Iterable[str] | None) -> set[str] | None:
    """``layers`` / ``names``: module names (a list, set, ...), or None for every leaf."""
    if names is None:
        return None
    if isinstance(names, (str, bytes)) or not hasattr(type(names), "__iter__"):
        raise FxTaylorError(f"layers must be a list of module names (or None), got {type(names).__name__} {names!r:.60}: "
                            "wrap a single name in a list")
    out = set(names)
    bad = next((n for n in out if not isinstance(n, str)), None)
    if bad is not None:
        raise FxTaylorError(f"layers must be module names (strings), got {type(bad).__name__}")
    return out
