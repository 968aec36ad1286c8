"""What a channel is worth: the Taylor criterion and the baselines it is compared with."""
from .base import GraphImportance, normalize
from .baselines import (
    ActivationMeanImportance, ActivationStdImportance, OracleImportance, RandomImportance, WeightImportance,
)
from .stats import spearman
from .taylor import TaylorImportance
from .tp_criteria import TorchPruningImportance

__all__ = [
    "ActivationMeanImportance", "ActivationStdImportance", "GraphImportance", "OracleImportance",
    "RandomImportance", "TaylorImportance", "TorchPruningImportance", "WeightImportance", "normalize", "spearman",
]
