"""Errors fxtaylor raises on purpose. Each message names what went wrong and how to fix it."""


class FxTaylorError(Exception):
    """Base class of every error fxtaylor raises deliberately."""


class TraceError(FxTaylorError):
    """torch.fx could not trace the model (e.g. Python control flow on tensor values)."""


class PruneError(FxTaylorError):
    """A pruning request the channel graph cannot honour (frozen group, too many channels, ...)."""
