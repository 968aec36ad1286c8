"""Rank statistics for comparing criteria (the paper's Table 1 uses Spearman's ρ)."""
from __future__ import annotations

import torch


def ranks(x: torch.Tensor) -> torch.Tensor:
    """Ranks 1..n, ties given the mean of the ranks they span."""
    x = x.flatten().to(torch.float64)
    order = torch.argsort(x, stable=True)
    r = torch.empty_like(x)
    r[order] = torch.arange(1, x.numel() + 1, dtype=torch.float64)
    values, inverse = torch.unique(x, return_inverse=True)
    mean_rank = torch.zeros(values.numel(), dtype=torch.float64).index_add_(0, inverse, r)
    mean_rank /= torch.bincount(inverse, minlength=values.numel()).to(torch.float64)
    return mean_rank[inverse]


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman rank correlation (Pearson correlation of the ranks; equals the paper's
    1 − 6Σd²/(N(N²−1)) when there are no ties)."""
    if a.numel() != b.numel() or a.numel() < 2:
        raise ValueError("spearman needs two vectors of the same length >= 2")
    ra, rb = ranks(a), ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denom = (ra.norm() * rb.norm()).item()
    return float((ra * rb).sum() / denom) if denom > 0 else 0.0
