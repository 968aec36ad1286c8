"""The quality study: how much accuracy each criterion keeps per FLOP removed, inside one loop.

    python benchmarks/quality.py [--seed 0]          # ≈ 20 min on 2 cores; regenerates docs/results*

Three parts, on data that ships offline (scikit-learn's handwritten digits):

1. The paper's Table 1 (``table1.py``): Spearman's ρ of each criterion with oracle-abs.
2. The paper's Fig. 3/4 view, *direct* setting: the embedded default's ResNet-18 (trained on
   all ten digits, 32×32, the ``fxtaylor prune`` cache recipe) pruned to 1/2, 1/4 and 1/8 of
   its FLOPs by every criterion in the same loop (`fxtaylor.prune`): 10 SGD updates observed
   per step, each step removing 2 % of the original FLOPs (``flops_per_prune``: every criterion
   gets the same number of steps, i.e. the same fine-tuning budget), lr 1e-3, momentum 0.9.
   At each milestone a copy gets the same recovery fine-tuning (``RECOVERY`` updates) and is
   evaluated. Criteria: Taylor, Taylor + FLOPs regularisation (a λ sweep, which picks the
   default), minimum weight, activation mean, random, torch-pruning's
   GroupMagnitudeImportance(p=2) and GroupTaylorImportance (through the same graph and loop).
3. The paper's *transfer* setting: a ResNet-18 trained on digits 0–4, its classifier replaced
   and the whole network fine-tuned on digits 5–9, then pruned the same way.

Everything is seeded; the numbers in docs/results.md are this script's output.
"""
from __future__ import annotations

import argparse
import copy
import functools
import json
import re
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.nn as nn
import torch_pruning as tp
from torch.utils.data import DataLoader, TensorDataset

import fxtaylor
from fxtaylor import datasets, job
from fxtaylor.importance import TorchPruningImportance
from fxtaylor.pruner import measure
from fxtaylor.pruner.state import seed_everything
from sections import replace_section

ROOT = Path(__file__).resolve().parents[1]
MILESTONES = (0.5, 0.25, 0.125)
STEP = 0.02  # fraction of the original FLOPs removed per pruning step (44 steps to 1/8)
UPDATES = 10  # observed updates per step
RECOVERY = 100  # fine-tuning updates given to every milestone's copy before its final evaluation
LAMBDAS = (1e-3, 1e-2, 1e-1)


def tp_criterion(make):
    """A torch-pruning importance inside fxtaylor's loop; normalised by torch-pruning itself."""
    return {"criterion": functools.partial(TorchPruningImportance, tp_importance=make()), "normalize": None}


def methods(lambdas=LAMBDAS) -> dict[str, dict]:
    out = {"Taylor": {"criterion": "taylor"}}
    out.update({f"Taylor, λ={lam:g}": {"criterion": "taylor", "flops_reg": lam} for lam in lambdas})
    out.update({
        "weight": {"criterion": "weight"},
        "activation mean": {"criterion": "activation_mean"},
        "random": {"criterion": "random", "normalize": None},
        "tp magnitude (p=2)": tp_criterion(lambda: tp.importance.GroupMagnitudeImportance(p=2)),
        "tp Taylor": tp_criterion(tp.importance.GroupTaylorImportance),
    })
    return out


# -- models and data ---------------------------------------------------------------------------


def direct_setting(seed: int, epochs: int) -> tuple[nn.Module, DataLoader, DataLoader]:
    """The embedded default's trained ResNet-18 and data (cached like ``fxtaylor prune``)."""
    seed_everything(seed)
    args = SimpleNamespace(model="resnet18", weights=None, data=None, input_size=32, batch_size=32,
                           finetune_epochs=epochs, finetune_lr=0.05, seed=seed, device="cpu", progress=False)
    w = job.build(args)
    return w.model, w.train, w.val


def _subset(ds: TensorDataset, classes: range) -> TensorDataset:
    x, y = ds.tensors
    keep = (y >= classes.start) & (y < classes.stop)
    return TensorDataset(x[keep], y[keep] - classes.start)


def transfer_setting(seed: int, epochs: int) -> tuple[nn.Module, DataLoader, DataLoader]:
    """ResNet-18 trained on digits 0–4, then a new 5-way classifier and the whole network
    fine-tuned on digits 5–9 (the paper's setting: a pretrained network adapted to a new task)."""
    seed_everything(seed)
    g = torch.Generator().manual_seed(seed)
    train_all = datasets.digits("train", size=32, channels=3)
    source = DataLoader(_subset(train_all, range(0, 5)), batch_size=32, shuffle=True, generator=g, drop_last=True)
    model = fxtaylor.models.build_named("resnet18", num_classes=5)[0]
    job.finetune(model, source, epochs, 0.05, False, "pretrain")
    model.fc = nn.Linear(model.fc.in_features, 5)
    target = DataLoader(_subset(train_all, range(5, 10)), batch_size=32, shuffle=True, generator=g, drop_last=True)
    job.finetune(model, target, max(1, epochs // 2), 0.01, False, "fine-tune")
    val = DataLoader(_subset(datasets.digits("test", size=32, channels=3), range(5, 10)), batch_size=256)
    return model, target, val


# -- one criterion, pruned through the milestones ----------------------------------------------


def recover(model: nn.Module, loader: DataLoader, updates: int, lr: float = 1e-3) -> None:
    """``updates`` SGD updates (momentum 0.9, weight decay 1e-4: the paper's) at ``lr``."""
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=1e-4)
    model.train()
    it = iter(loader)
    for _ in range(updates):
        try:
            x, y = next(it)
        except StopIteration:
            it = iter(loader)
            x, y = next(it)
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()


def run(base: nn.Module, train: DataLoader, val: DataLoader, method: dict, seed: int, cfg: dict) -> dict:
    model = copy.deepcopy(base)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, weight_decay=1e-4)
    x = next(iter(val))[0][:1]
    f0 = fxtaylor.flops.count(model, x)[0]
    curve = [(1.0, measure.accuracy(model, val))]
    points = []
    t0 = time.perf_counter()
    for i, m in enumerate(cfg["milestones"]):
        now = fxtaylor.flops.count(model, x)[0]
        r = fxtaylor.prune(model, train, target_flops=m * f0 / now, flops_per_prune=cfg["step"] * f0 / now,
                           updates_between_prunes=cfg["updates"], optimizer=opt, val_loader=val, seed=seed if i == 0 else None,
                           progress=False, measure_latency=False, **method)
        curve += [(h["flops"] / f0, h["accuracy"]) for h in r.history[1:]]
        copy_ = copy.deepcopy(model)
        recover(copy_, train, cfg["recovery"])
        points.append({"target": m, "flops": r.after["flops"] / f0, "steps": len(r.history) - 1,
                       "pruned": r.after["accuracy"], "recovered": measure.accuracy(copy_, val)})
    return {"curve": curve, "points": points, "seconds": round(time.perf_counter() - t0, 1),
            "channels": measure.out_channels(model)}


def study(setting: str, seed: int, names: dict[str, dict], cfg: dict) -> dict:
    t = time.perf_counter()
    base, train, val = (direct_setting if setting == "direct" else transfer_setting)(seed, cfg["epochs"])
    out = {"setting": setting, "recovery": cfg["recovery"], "base_accuracy": measure.accuracy(base, val), "train_images": len(train.dataset),
           "val_images": len(val.dataset), "setup_seconds": round(time.perf_counter() - t, 1), "methods": {}}
    for name, method in names.items():
        out["methods"][name] = res = run(base, train, val, method, seed, cfg)
        print(f"  {setting} / {name}: " + ", ".join(
            f"{p['target']:g}: {p['pruned']:.1%} → {p['recovered']:.1%}" for p in res["points"]) + f" ({res['seconds']} s)", flush=True)
    return out


def best_lambda(direct: dict) -> float:
    """The λ whose recovered accuracy, averaged over the milestones, is highest (0 included)."""
    def mean(name):
        pts = direct["methods"][name]["points"]
        return sum(p["recovered"] for p in pts) / len(pts)

    cands = {0.0: mean("Taylor")}
    for name in direct["methods"]:
        m = re.fullmatch(r"Taylor, λ=(.+)", name)
        if m:
            cands[float(m.group(1))] = mean(name)
    return max(cands, key=lambda k: (round(cands[k], 6), -k))  # ties: the smaller λ


# -- output --------------------------------------------------------------------------------------


def plot(result: dict, path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 5), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    for i, (name, res) in enumerate(result["methods"].items()):
        color = f"C{i % 10}"
        style = "-" if name.startswith("Taylor") else "--"
        xs, ys = zip(*res["curve"])
        ax.plot(xs, [100 * y for y in ys], style, color=color, lw=1.2, label=name)
        ax.plot([p["flops"] for p in res["points"]], [100 * p["recovered"] for p in res["points"]], "o", color=color, ms=5)
    ax.set_xscale("log", base=2)
    ax.invert_xaxis()
    ax.set_xticks([1, 0.5, 0.25, 0.125], ["1", "1/2", "1/4", "1/8"])
    ax.set_xlabel("FLOPs kept (fraction of the original)")
    ax.set_ylabel("held-out accuracy (%)")
    ax.set_ylim(bottom=max(0, ax.get_ylim()[0]))
    ax.grid(alpha=0.3)
    ax.set_title(f"{result['setting']} setting: lines = after each pruning step, dots = after {result['recovery']} recovery updates")
    ax.legend(fontsize=8, loc="lower left")
    fig.savefig(path)


def table(result: dict) -> str:
    ms = [p["target"] for p in next(iter(result["methods"].values()))["points"]]
    head = "| criterion | " + " | ".join(f"{1 / m:.3g}× fewer FLOPs: pruned → recovered" for m in ms) + " | time |"
    lines = [head, "|---" * (len(ms) + 2) + "|"]
    best = {m: max(r["points"][i]["recovered"] for r in result["methods"].values()) for i, m in enumerate(ms)}
    for name, res in result["methods"].items():
        cells = []
        for i, p in enumerate(res["points"]):
            rec = f"{100 * p['recovered']:.1f}"
            cells.append(f"{100 * p['pruned']:.1f} → {'**' + rec + '**' if p['recovered'] == best[ms[i]] else rec}")
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {res['seconds']:.0f} s |")
    return "\n".join(lines)


def markdown(results: dict) -> str:
    d, t = results["direct"], results.get("transfer")
    parts = [
        f"Generated by `python benchmarks/quality.py --seed {results['seed']}` in {results['minutes']:.1f} min "
        f"({results['machine']}). Accuracies in %, on held-out images.",
        "",
        "### Table 1: Spearman's ρ with oracle-abs",
        "",
        f"Small CNN on digits, seeds {', '.join(str(r['seed']) for r in results['table1'])} (mean).",
        "",
        results["table1_markdown"],
        "",
        f"### Direct setting: ResNet-18 on all ten digits (base accuracy {100 * d['base_accuracy']:.1f} %, "
        f"{d['val_images']} test images)",
        "",
        "![direct setting](results/quality-direct.png)",
        "",
        table(d),
        "",
        f"λ sweep → default λ = {results['best_lambda']:g} (highest recovered accuracy averaged over the three targets).",
    ]
    if t is not None:
        parts += [
            "",
            f"### Transfer setting: trained on digits 0–4, fine-tuned on 5–9 (base accuracy {100 * t['base_accuracy']:.1f} %, "
            f"{t['val_images']} test images)",
            "",
            "![transfer setting](results/quality-transfer.png)",
            "",
            table(t),
        ]
    return "\n".join(parts)


def write_docs(results: dict, out: Path, doc: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "quality.json").write_text(json.dumps(results, indent=1))
    for setting in ("direct", "transfer"):
        if setting in results:
            plot(results[setting], out / f"quality-{setting}.png")
    replace_section(doc, "quality", markdown(results))


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--table1-seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--out", default=str(ROOT / "docs" / "results"), help="plots and quality.json")
    p.add_argument("--doc", default=str(ROOT / "docs" / "results.md"), help="the markdown whose generated section is replaced")
    p.add_argument("--quick", action="store_true", help="a tiny configuration that only checks the script works")
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    sys.path.insert(0, str(Path(__file__).parent))
    import table1

    quick = args.quick
    cfg = {"epochs": 8, "milestones": MILESTONES, "step": STEP, "updates": UPDATES, "recovery": RECOVERY}
    if quick:
        cfg = {"epochs": 1, "milestones": (0.8,), "step": 0.1, "updates": 2, "recovery": 2}
    names = methods((1e-2,) if quick else LAMBDAS)
    if quick:
        names = {k: names[k] for k in ("Taylor", "Taylor, λ=0.01", "tp Taylor")}
    results = {"seed": args.seed, "config": {**cfg, "milestones": list(cfg["milestones"])}}
    if quick:
        results["table1"] = [table1.study(args.table1_seeds[0], epochs=1)]
    else:
        print("Table 1 ...", flush=True)
        results["table1"] = [table1.study(s) for s in args.table1_seeds]
    results["table1_markdown"] = table1.markdown(results["table1"])
    print("direct setting ...", flush=True)
    results["direct"] = study("direct", args.seed, names, cfg)
    results["best_lambda"] = lam = best_lambda(results["direct"])
    print(f"transfer setting (λ = {lam:g}) ...", flush=True)
    transfer = {k: v for k, v in names.items() if k not in ("activation mean",) and not k.startswith("Taylor, λ")}
    if lam:
        transfer[f"Taylor, λ={lam:g}"] = names[f"Taylor, λ={lam:g}"]
    results["transfer"] = study("transfer", args.seed, transfer, cfg)
    results["minutes"] = (time.perf_counter() - t0) / 60
    results["machine"] = f"{torch.get_num_threads()} threads, torch {torch.__version__}, CPU"
    write_docs(results, Path(args.out), Path(args.doc))
    print(markdown(results))
    return results


if __name__ == "__main__":
    main()
