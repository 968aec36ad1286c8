"""The paper's Table 1 on data we can run offline: Spearman's ρ of each criterion with oracle-abs.

A small CNN (4 conv layers, 144 maps) is trained on scikit-learn's handwritten digits; each
criterion then scores every map from the same training examples, and is compared with the
oracle (the loss change when that map alone is removed), per layer (mean ρ over layers), over
all layers without normalisation, and over all layers with ℓ2 normalisation.

    python benchmarks/table1.py [--seeds 0 1 2] [--json out.json]

Reproducible: seeded data split, initialisation and batch order.
"""
from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader

import fxtaylor
from fxtaylor.datasets import digits

CRITERIA = {
    "weight": fxtaylor.WeightImportance,
    "act. mean": fxtaylor.ActivationMeanImportance,
    "act. s.d.": fxtaylor.ActivationStdImportance,
    "Taylor": fxtaylor.TaylorImportance,
    "random": fxtaylor.RandomImportance,
}
PAPER = {  # VGG-16 on Birds-200, Table 1 (MI omitted: not implemented)
    "per layer": {"weight": 0.27, "act. mean": 0.56, "act. s.d.": 0.57, "Taylor": 0.73, "random": 0.0},
    "all layers": {"weight": 0.34, "act. mean": 0.35, "act. s.d.": 0.30, "Taylor": 0.14, "random": 0.0},
    "all layers, l2": {"weight": 0.33, "act. mean": 0.64, "act. s.d.": 0.66, "Taylor": 0.73, "random": 0.0},
}


def cnn() -> nn.Module:
    def cbr(i, o):
        return nn.Sequential(nn.Conv2d(i, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU())

    return nn.Sequential(
        cbr(1, 16), cbr(16, 32), nn.MaxPool2d(2), cbr(32, 32), cbr(32, 64), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(64 * 2 * 2, 10),
    )


def train(seed: int, epochs: int = 30) -> tuple[nn.Module, float]:
    torch.manual_seed(seed)
    model = cnn()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    loader = DataLoader(digits("train"), batch_size=64, shuffle=True, generator=torch.Generator().manual_seed(seed))
    for _ in range(epochs):
        for x, y in loader:
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    x, y = digits("test").tensors
    with torch.no_grad():
        accuracy = float((model(x).argmax(1) == y).float().mean())
    return model, accuracy


def scores(model: nn.Module, name: str, batches: list, example: torch.Tensor, normalize) -> dict:
    """Score of each map, per group, for one criterion (observation in eval mode, with gradients,
    on the oracle's batches, so both see the same network)."""
    imp = CRITERIA[name](model, example, normalize=normalize)
    if hasattr(imp, "observe"):
        with imp.observe():
            for x, y in batches:
                model.zero_grad()
                F.cross_entropy(model(x), y).backward()
    return {g.index: imp.group_scores(g) for g in imp.graph.prunable_groups}


def study(seed: int, epochs: int = 30) -> dict:
    t0 = time.time()
    model, accuracy = train(seed, epochs)
    x, y = digits("train").tensors
    batches = list(zip(x[:1024].split(128), y[:1024].split(128)))
    example = x[:1]
    oracle_imp = fxtaylor.OracleImportance(model, example, batches, F.cross_entropy, normalize=None)
    groups = oracle_imp.graph.prunable_groups
    oracle = {g.index: oracle_imp.group_scores(g) for g in groups}
    table = {}
    for name in CRITERIA:
        raw = scores(model, name, batches, example, None)
        l2 = scores(model, name, batches, example, "l2")
        cat = lambda d: torch.cat([d[g.index] for g in groups])  # noqa: E731
        table[name] = {
            "per layer": sum(fxtaylor.spearman(raw[g.index], oracle[g.index]) for g in groups) / len(groups),
            "all layers": fxtaylor.spearman(cat(raw), cat(oracle)),
            "all layers, l2": fxtaylor.spearman(cat(l2), cat(oracle)),
        }
    return {"seed": seed, "test_accuracy": accuracy, "maps": int(sum(g.size for g in groups)),
            "layers": len(groups), "seconds": round(time.time() - t0, 1), "spearman": table}


def markdown(results: list[dict]) -> str:
    cols = ["per layer", "all layers", "all layers, l2"]
    lines = ["| criterion | " + " | ".join(f"{c} (ours)" for c in cols) + " | " + " | ".join(f"{c} (paper)" for c in cols) + " |",
             "|---" * (1 + 2 * len(cols)) + "|"]
    for name in CRITERIA:
        ours = [sum(r["spearman"][name][c] for r in results) / len(results) for c in cols]
        lines.append(f"| {name} | " + " | ".join(f"{v:.2f}" for v in ours) + " | "
                     + " | ".join(f"{PAPER[c][name]:.2f}" for c in cols) + " |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--json", help="also write the raw results here")
    args = p.parse_args()
    results = [study(s) for s in args.seeds]
    for r in results:
        print(f"seed {r['seed']}: test accuracy {r['test_accuracy']:.3f}, {r['maps']} maps in {r['layers']} layers, {r['seconds']} s")
    print(markdown(results))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
