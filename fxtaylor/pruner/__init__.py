"""The paper's iterative prune / fine-tune loop: :func:`prune` returns a :class:`PruneResult`."""
from .loop import DEFAULT_FLOPS_REG, PAPER_UPDATES, prune
from .result import PruneResult

__all__ = ["DEFAULT_FLOPS_REG", "PAPER_UPDATES", "PruneResult", "prune"]
