"""The paper's iterative prune / fine-tune loop: :class:`Pruner` is one step at a time for your
own training loop; :func:`prune` runs the whole loop and returns a :class:`PruneResult`."""
from .loop import DEFAULT_FLOPS_REG, PAPER_UPDATES, prune
from .options import Schedule, Target
from .pruner import Pruner, compare
from .result import PruneResult

__all__ = ["DEFAULT_FLOPS_REG", "PAPER_UPDATES", "PruneResult", "Pruner", "Schedule", "Target", "compare", "prune"]
