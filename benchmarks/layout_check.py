"""Does a latency measured in one memory format hold in another? A model pruned to a latency
target on the default deployment (channels_last on CPU and CUDA), then timed side by side with
the dense model in both layouts — what the summary's "run it the same way" line is for.

    python benchmarks/layout_check.py --model resnet18 --target 0.6 --out benchmarks/results/layout_check.json

Random weights and images, learning rate 0 (what is measured is where the loop stops, not
accuracy); the latency tables go to a temporary cache.
"""
import argparse
import json
import os
import tempfile

import torch
import torchvision
from torch.utils.data import DataLoader, TensorDataset

import fxtaylor
from fxtaylor.latency import measure
from fxtaylor.pruner import compare


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="resnet18")
    ap.add_argument("--target", type=float, default=0.6)
    ap.add_argument("--side", type=int, default=224)
    ap.add_argument("--out")
    a = ap.parse_args()
    torch.manual_seed(0)
    dense = torchvision.models.get_model(a.model, weights=None).eval()
    model = torchvision.models.get_model(a.model, weights=None)
    model.load_state_dict(dense.state_dict())
    data = TensorDataset(torch.randn(8, 3, a.side, a.side), torch.randint(0, 1000, (8,)))
    with tempfile.TemporaryDirectory() as cache:
        os.environ["FXTAYLOR_CACHE"] = cache
        res = fxtaylor.prune(model, DataLoader(data, batch_size=4), target_latency=a.target, flops_per_prune=0.05,
                             updates_between_prunes=1, optimizer=torch.optim.SGD(model.parameters(), lr=0.0),
                             progress=False, seed=0)
    print(res.summary())
    x = torch.randn(1, 3, a.side, a.side)
    row = {"model": a.model, "target": a.target, "threads": torch.get_num_threads(), "run_speedup": res.speedup,
           "deployment": res.config["deployment"]}
    for fmt in ("channels_last", "contiguous"):
        dep = fxtaylor.Deployment(memory_format=fmt).resolved(dense)
        ref, now = measure([dense, res.model.eval()], x, dep, min_run_time=2.0, rounds=9)
        ratio, noise = compare(ref, now)
        row[fmt] = {"ratio": round(ratio, 4), "noise": round(noise, 4), "dense_ms": round(ref.median_ms, 3)}
        print(f"{fmt}: pruned ÷ dense latency {ratio:.3f} ± {noise:.3f} (dense {ref.median_ms:.2f} ms)")
    if a.out:
        with open(a.out, "w") as f:
            json.dump(row, f, indent=2)


if __name__ == "__main__":
    main()
