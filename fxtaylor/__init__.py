"""fxtaylor: remove whole feature maps from CNNs, ranked by the activation-Taylor criterion.

Data flow: ``graph`` (which channels are tied) → ``cost`` (what a channel costs in a resource:
FLOPs, latency, parameter bytes, peak memory) → ``importance`` (what a channel is worth) →
``pruner`` (the paper's loop, resource-agnostic) → ``cli`` / ``report``.
"""
import warnings

with warnings.catch_warnings():
    # torchvision's and fvcore's import-time torch.jit.script calls: deprecated in torch 2.14,
    # not ours to fix, and noise in every user's log
    warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*deprecated", category=FutureWarning)
    from .cost import RESOURCES, CostModel
    from .errors import ArgumentError, FxTaylorError, PruneError, TraceError, WriteError
    from .graph import ChannelGraph, ChannelGroup, FeatureMap, Member, StaleOptimizerWarning, arch_of, trace
    from .importance import (
        GraphImportance, ActivationMeanImportance, ActivationStdImportance, OracleImportance, RandomImportance, TaylorImportance,
        WeightImportance, spearman,
    )
    from .latency import Deployment
    from .pruner import PruneResult, Pruner, Schedule, Target, prune
    from .saving import load, save
    from .exporting import Exported, export

    from .version import __version__

__all__ = [
    "ActivationMeanImportance", "ActivationStdImportance", "GraphImportance", "OracleImportance", "RandomImportance",
    "TaylorImportance", "WeightImportance", "spearman", "CostModel", "RESOURCES",
    "ArgumentError", "ChannelGraph", "ChannelGroup", "FeatureMap", "FxTaylorError", "Member", "PruneError",
    "TraceError", "WriteError", "trace", "Deployment", "PruneResult", "Pruner", "Schedule", "Target", "prune",
    "load", "save", "export", "Exported", "StaleOptimizerWarning", "arch_of", "__version__",
]
