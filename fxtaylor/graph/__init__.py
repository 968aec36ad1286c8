"""The channel-dependency graph: torch.fx trace → channel atoms → groups → pruning."""
from .arch_record import arch_of
from .channel_graph import ChannelGraph, ChannelGroup, FeatureMap, Member, trace
from .optimizer_state import StaleOptimizerWarning

__all__ = ["ChannelGraph", "ChannelGroup", "FeatureMap", "Member", "StaleOptimizerWarning", "arch_of", "trace"]
