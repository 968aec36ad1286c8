"""The group rule: a channel read in several places (a residual stage) is scored by |Σ_reads ⟨g, z⟩|.

The alternatives — Σ_reads |⟨g, z⟩|, the max over reads, the first or the last read only — are
computed from per-read gate gradients of the same examples, and each is compared with the oracle
(the loss change when the channel is really removed) by Spearman's ρ.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.models.resnet import BasicBlock

import fxtaylor
from test_taylor import brute_force, cbr

X = torch.randn(1, 3, 12, 12)


class Stage(nn.Module):
    """Stem + three BasicBlocks: the stem's channels are read in 7 places."""

    def __init__(self, width=24):
        super().__init__()
        self.stem = cbr(3, width, inplace=True)
        self.blocks = nn.Sequential(*[BasicBlock(width, width) for _ in range(3)])
        self.fc = nn.Linear(width, 5)

    def forward(self, x):
        return self.fc(self.blocks(self.stem(x)).mean((2, 3)))


def trained(seed):
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    proj = torch.randn(12, 5, generator=g)

    def data(n):
        x = torch.randn(n, 3, 12, 12, generator=g)
        return x, (F.avg_pool2d(x, 6).flatten(1) @ proj).argmax(1)  # learnable from the image

    model = Stage()
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    for _ in range(300):
        x, y = data(32)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval(), [data(64) for _ in range(4)], loss.item()


def rule_correlations(seed):
    model, batches, loss = trained(seed)
    per_read, _ = brute_force(model, batches, per_read=True)  # [examples, reads, units]
    units = fxtaylor.trace(model, X).group_of("stem.0").units
    oracle = fxtaylor.OracleImportance(model, X, batches, F.cross_entropy, units=units).unit_scores()[units]
    p = per_read[:, :, units]
    present = p.abs().sum((0, 2)) > 0  # the reads of this group
    p = p[:, present]
    rules = {
        "|sum| (fxtaylor)": p.sum(1).abs().mean(0),
        "sum of |.|": p.abs().sum(1).mean(0),
        "max |.|": p.abs().max(1).values.mean(0),
        "first read": p[:, 0].abs().mean(0),
        "last read": p[:, -1].abs().mean(0),
    }
    return {k: fxtaylor.spearman(v, oracle) for k, v in rules.items()}, int(present.sum()), loss


def test_sum_inside_the_absolute_value_tracks_the_oracle_best():
    runs = [rule_correlations(seed) for seed in (0, 1, 3)]
    assert all(reads == 4 and loss < 1.4 for _, reads, loss in runs)  # learned; 4 reads of the stem
    mean = {k: sum(r[k] for r, _, _ in runs) / len(runs) for k in runs[0][0]}
    ours = mean.pop("|sum| (fxtaylor)")
    assert ours > 0.6, ours
    assert all(ours > other + 0.1 for other in mean.values()), (ours, mean)
