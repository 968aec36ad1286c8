"""Latency as deployed: measuring it (:func:`measure`) and predicting it from channel counts
(:class:`LatencyModel`). See docs/latency.md.

    dep = Deployment(batch_size=1)                      # device, dtype, format: from the model
    dense, pruned = measure([model, pruned_model], x, dep)
    lm = LatencyModel.build(model, x, dep)              # measured once per device, then cached
    lm.predict({"layer1.0.conv1": (64, 40), ...})       # ms at those channel counts
"""
from .deployment import Deployment
from .layers import widths
from .model import LatencyModel
from .table import LayerTable
from .timing import Timing, measure, noise

__all__ = ["Deployment", "LatencyModel", "LayerTable", "Timing", "measure", "noise", "widths"]
