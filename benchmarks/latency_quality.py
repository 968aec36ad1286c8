"""Accuracy at equal measured latency: pruning to a latency target vs to a FLOPs target.

    python benchmarks/latency_quality.py [--seeds 0 1 2]   # ≈ 10 min on 2 cores; writes docs/results/latency_quality.json

On the embedded default (ResNet-18 trained on scikit-learn's digits, 32×32, the ``fxtaylor
prune`` cache recipe), deployment CPU, batch 1, float32, per seed:

1. **FLOPs**: ``fxtaylor.prune(target_flops=0.5)`` — the paper's resource. Its pruned model's
   latency, measured side by side with the dense model, is L.
2. **latency, rank** and **latency, knapsack**: ``fxtaylor.prune(target_latency=L)`` with each
   selection order — the same measured latency, reached by measuring.

Every run: Taylor criterion, 10 observed SGD updates per step (lr 1e-3, momentum 0.9), steps
of 5 % of the dense resource (``flops_per_prune``), then recovery fine-tuning so every model has
had the same number of updates in total (``BUDGET``): same fine-tuning budget. Finally all
pruned models and the dense one are measured in one interleaved call (per-round ratios to the
dense model) and evaluated on the held-out digits.
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path

import torch

import fxtaylor
from fxtaylor.latency import Deployment, measure
from fxtaylor.pruner import compare
from fxtaylor.pruner import measure as metrics

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quality import direct_setting, recover  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
UPDATES, STEP, BUDGET = 10, 0.05, 300


def run(base, train, val, seed, dep, quick, **target):
    model = copy.deepcopy(base)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    t = time.perf_counter()
    res = fxtaylor.prune(model, train, optimizer=opt, updates_between_prunes=UPDATES if not quick else 1,
                         flops_per_prune=STEP if not quick else 0.2, deployment=dep, seed=seed, progress=False,
                         val_loader=val, eval_every=1000, **target)
    steps = len([h for h in res.history if isinstance(h["step"], int) and h["step"] > 0])
    used = steps * (UPDATES if not quick else 1)
    before = metrics.accuracy(model, val)
    recover(model, train, max(BUDGET - used, 0) if not quick else 2)
    return model, {"steps": steps, "updates_while_pruning": used, "accuracy_pruned": before,
                   "accuracy": metrics.accuracy(model, val), "flops_ratio": res.flops_ratio, "seconds": time.perf_counter() - t,
                   "rejected": res.config["rejected_cuts"], "stop_reason": res.stop_reason}


def study(seed: int, quick: bool) -> dict:
    base, train, val = direct_setting(seed, epochs=8 if not quick else 1)
    dep = Deployment(device="cpu", batch_size=1)
    x = next(iter(train))[0][:1]
    models, rows = {}, {}
    # quick: a mild cut, so the latency level it reaches stays within what pruning can reach
    models["FLOPs"], rows["FLOPs"] = run(base, train, val, seed, dep, quick, target_flops=0.5 if not quick else 0.8)
    ref, pruned = measure([base, models["FLOPs"]], x, dep, rounds=7)
    level = compare(ref, pruned)[0]
    for sel in ("rank", "knapsack"):
        name = f"latency, {sel}"
        models[name], rows[name] = run(base, train, val, seed, dep, quick, target_latency=min(max(level, 0.05), 0.95), selection=sel)
    timings = measure([base, *models.values()], x, dep, rounds=9, min_run_time=1.0)
    for (name, row), t in zip(rows.items(), timings[1:]):
        row["latency_ratio"], row["latency_noise"] = compare(timings[0], t)
    return {"seed": seed, "dense_accuracy": metrics.accuracy(base, val), "latency_target": level, "rows": rows}


def markdown(results: list[dict]) -> str:
    names = list(results[0]["rows"])
    lines = ["| run | latency ÷ dense | FLOPs ÷ dense | accuracy after pruning | after equal recovery | rejected cuts |",
             "|---|---|---|---|---|---|"]
    for n in names:
        rows = [r["rows"][n] for r in results]

        def cell(key, pct=False):
            vals = [row[key] for row in rows]
            fmt = (lambda v: f"{100 * v:.1f} %") if pct else (lambda v: f"{v:.3f}")
            return " / ".join(fmt(v) for v in vals) + (f" (mean {fmt(statistics.mean(vals))})" if len(vals) > 1 else "")

        lines.append(f"| {n} | {cell('latency_ratio')} | {cell('flops_ratio')} | {cell('accuracy_pruned', True)} | "
                     f"{cell('accuracy', True)} | {' / '.join(str(r['rejected']) for r in rows)} |")
    seeds = ", ".join(str(r["seed"]) for r in results)
    return f"Seeds {seeds} (values per seed, in that order).\n\n" + "\n".join(lines)


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--out", default=str(ROOT / "docs" / "results" / "latency_quality.json"))
    p.add_argument("--quick", action="store_true", help="a tiny configuration that only checks the script works")
    a = p.parse_args(argv)
    results = [study(s, a.quick) for s in a.seeds]
    text = markdown(results)
    print(text)
    if not a.quick:
        Path(a.out).write_text(json.dumps({"results": results, "markdown": text}, indent=1))
    return results


if __name__ == "__main__":
    main()
