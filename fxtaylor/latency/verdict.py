"""The one sentence a run says when its pruned model is not faster where it is deployed —
written here once, for the warning :func:`fxtaylor.prune` raises and the line the report prints."""
from __future__ import annotations


def not_faster(ratio: float | None, noise: float = 0.0, where: str = "this deployment", measured: bool = False) -> str | None:
    """``ratio`` is the pruned ÷ dense latency measured side by side and ``noise`` its 95 %
    half-width: None when the pruned model is measurably faster, else why it is not and what
    to do. FLOPs are the paper's proxy for time; on a GPU or a vectorised CPU a model with far
    fewer FLOPs can run no faster (docs/latency.md). ``measured``: the run's target was this
    measured latency: every cut was timed there already, so it does not advise measuring."""
    if ratio is None or ratio < 1 - noise:
        return None
    verdict = "not faster" if ratio >= 1 else f"not measurably faster (±{noise:.2f})"
    if measured:
        return (f"the pruned model is {verdict} than the dense one on {where}: no cut was measured faster there, so "
                "its time is in what channel pruning cannot remove (per-op overhead, thread dispatch); a larger "
                "batch or fewer threads leave more to remove (docs/latency.md)")
    return (f"the pruned model is {verdict} than the dense one on {where}: FLOPs are not time here; "
            "prune with target_latency (--target-latency) for this deployment (docs/latency.md)")
