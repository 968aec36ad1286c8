"""What a channel costs, for any resource: :class:`CostModel` and its two implementations.

The pruner spends a resource — FLOPs (the paper's proxy, counted by fvcore) or latency as
deployed (measured on the user's device) — and needs three things from it: the model's cost
now, what each layer would cost at other channel counts (to predict a cut before making it),
and each unit's marginal cost (the regulariser of the criterion, eq. 9's λ·cost). A cost model
answers all three from one function per layer, ``layer_cost(name, cin, cout)``; the channel
bookkeeping that turns "remove these units" into new per-layer widths is shared
(:class:`Layers`). FLOPs costs add up layer by layer and almost unit by unit; latency costs do
not (kernels run in tiles), which is why selection predicts whole cuts instead of summing
per-unit costs.
"""
from .base import CostModel, Layers
from .flops_cost import FlopsCost
from .latency_cost import LatencyCost

__all__ = ["CostModel", "FlopsCost", "LatencyCost", "Layers"]
