"""Reachable FLOPs share exact vs ``exact=False`` on ConvNeXt-T, ConvNeXt-V2-T, NFNets and MobileNetV5, and
whether the opt-in takes each to 0.7 of its FLOPs and trains on.

For each model (``weights=None``, 10 classes, one 64-px image unless ``--size``): trace it in
both modes, print the prunable groups and the reachable share (``cost.reachable()``); then,
with ``exact=False``, observe the Taylor criterion on one training batch of 2, cut to 0.7 of the
FLOPs in one ``Pruner`` step and run a training step of the pruned model (loss and gradients
finite). Prints a markdown table (docs/zoo.md, "Reachable share") and writes ``--json``.

    OMP_NUM_THREADS=1 python benchmarks/inexact_reach.py
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F

MODELS = ("convnext_tiny", "timm/convnextv2_tiny", "timm/nf_resnet50", "timm/dm_nfnet_f0", "timm/nf_regnet_b0",
          "timm/mobilenetv5_base")


def build(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    if name.startswith("timm/"):
        import timm

        return timm.create_model(name[5:], pretrained=False, num_classes=10)
    import torchvision

    return torchvision.models.get_model(name, weights=None, num_classes=10)


def row(name: str, size: int) -> dict:
    import fxtaylor
    from fxtaylor.cost import FlopsCost

    model = build(name).eval()
    x = torch.randn(2, 3, size, size)
    one = x[:1]
    out = {"model": name, "input": f"1×3×{size}×{size}"}
    for exact in (True, False):
        graph = fxtaylor.trace(model, one, exact=exact)
        key = "exact" if exact else "inexact"
        out[f"prunable_{key}"] = len(graph.prunable_groups)
        out[f"groups"] = len(graph.groups)
        out[f"reachable_{key}"] = FlopsCost().sync(graph, one).reachable()
    t0 = time.perf_counter()
    pruner = fxtaylor.Pruner(model, one, target_flops=0.7, flops_per_prune=0.3, exact=False, progress=False)
    y = torch.tensor([1, 2])
    model.train()
    with pruner.observe():
        F.cross_entropy(model(x), y).backward()
    model.zero_grad(set_to_none=True)
    steps = 0
    while not pruner.done and steps < 5:
        pruner.step()
        steps += 1
    out["flops_ratio"] = pruner.imp.total_flops() / pruner.flops0
    out["steps"] = steps
    loss = F.cross_entropy(model.train()(x), y)
    loss.backward()
    out["trains_on"] = bool(math.isfinite(loss.item()) and all(
        torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None))
    out["seconds"] = round(time.perf_counter() - t0, 1)
    return out


def table(rows: list[dict]) -> str:
    lines = ["| model | input | prunable groups, exact | with `exact=False` | reachable FLOPs, exact | with `exact=False` "
             "| `exact=False` to 0.7: FLOPs after | trains on |", "|---|---|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['input']} | {r['prunable_exact']} / {r['groups']} | {r['prunable_inexact']} | "
                     f"{r['reachable_exact']:.1%} | {r['reachable_inexact']:.1%} | {r['flops_ratio']:.3f} "
                     f"({r['steps']} step{'s' if r['steps'] > 1 else ''}) | {'yes' if r['trains_on'] else 'no'} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=list(MODELS))
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--json", type=Path, default=Path(__file__).parent / "results" / "inexact_reach.json")
    args = p.parse_args()
    rows = [row(n, args.size) for n in args.models]
    print(table(rows))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
