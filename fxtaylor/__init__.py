"""fxtaylor: remove whole feature maps from CNNs, ranked by the activation-Taylor criterion.

Data flow: ``graph`` (which channels are tied) → ``flops`` (what a channel costs) →
``importance`` (what a channel is worth) → ``pruner`` (the paper's loop) → ``cli`` / ``report``.
"""
import warnings

with warnings.catch_warnings():
    # torchvision's and fvcore's import-time torch.jit.script calls: deprecated in torch 2.14,
    # not ours to fix, and noise in every user's log
    warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*deprecated", category=FutureWarning)
    from .errors import FxTaylorError, PruneError, TraceError
    from .graph import ChannelGraph, ChannelGroup, FeatureMap, Member, trace
    from .importance import (
        ActivationMeanImportance, ActivationStdImportance, OracleImportance, RandomImportance, TaylorImportance,
        WeightImportance, spearman,
    )
    from .latency import Deployment
    from .pruner import PruneResult, Pruner, Schedule, Target, prune
    from .saving import load, save

__version__ = "0.1.0"
__all__ = [
    "ActivationMeanImportance", "ActivationStdImportance", "OracleImportance", "RandomImportance",
    "TaylorImportance", "WeightImportance", "spearman",
    "ChannelGraph", "ChannelGroup", "FeatureMap", "FxTaylorError", "Member", "PruneError",
    "TraceError", "trace", "Deployment", "PruneResult", "Pruner", "Schedule", "Target", "prune", "load", "save",
]
