"""The channel-dependency graph: torch.fx trace → channel atoms → groups → pruning."""
from .channel_graph import ChannelGraph, ChannelGroup, FeatureMap, Member, trace

__all__ = ["ChannelGraph", "ChannelGroup", "FeatureMap", "Member", "trace"]
