"""What a channel costs, for any resource: :class:`CostModel` and its implementations.

The pruner spends a resource — FLOPs (the paper's proxy, counted by fvcore), latency as
deployed (measured on the user's device), parameter bytes (the saved model's size), peak
activation memory (at the deployment's batch size) — and needs three things from it: the
model's cost now, what each layer would cost at other channel counts (to predict a cut before
making it), and each unit's marginal cost (the regulariser of the criterion, eq. 9's λ·cost).
A cost model answers all three from one function per layer, ``layer_cost(name, cin, cout)``;
the channel bookkeeping that turns "remove these units" into new per-layer widths is shared
(:class:`Layers`). FLOPs and bytes add up layer by layer and almost unit by unit; latency does
not (kernels run in tiles), which is why selection predicts whole cuts instead of summing
per-unit costs.

:data:`RESOURCES` maps each target name to its class: ``Target("params", 0.5)``,
``prune(target_params=0.5)`` and ``--target-params 0.5`` all find :class:`ParamsCost` there.
A new resource is one module with a :class:`CostModel` subclass plus :func:`register`
(docs/resources.md, "Adding a resource").
"""
from __future__ import annotations

from ..errors import FxTaylorError
from .base import CostModel, Layers
from .flops_cost import FlopsCost
from .latency_cost import LatencyCost
from .memory_cost import MemoryCost
from .params_cost import ParamsCost

RESOURCES: dict[str, type[CostModel]] = {}


def register(cls: type[CostModel]) -> type[CostModel]:
    """Make ``cls`` a target: ``Target(cls.name, ...)``, ``prune(target_<name>=...)`` and the
    command's ``--target-<name>``. Usable as a class decorator."""
    if not (isinstance(cls, type) and issubclass(cls, CostModel)) or not cls.name.isidentifier():
        raise FxTaylorError(f"a resource is a CostModel subclass with an identifier as its name, got {cls!r}")
    RESOURCES[cls.name] = cls
    return cls


for _cls in (FlopsCost, LatencyCost, ParamsCost, MemoryCost):
    register(_cls)

__all__ = ["CostModel", "FlopsCost", "LatencyCost", "Layers", "MemoryCost", "ParamsCost", "RESOURCES", "register"]
