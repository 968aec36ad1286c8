"""What ``exact=False`` costs in accuracy: a ConvNeXt on the offline digits, pruned in exact mode
(channels under a layer norm over channels frozen, the default) and with the opt-in (those
channels pruned too), at equal FLOPs and at equal measured latency.

    OMP_NUM_THREADS=1 python benchmarks/inexact_study.py [--seeds 0 1 2] [--out PATH]   # ≈ 13 min, one thread
    OMP_NUM_THREADS=1 python benchmarks/inexact_study.py --quick --out /tmp/q.json      # smoke run, < 1 min

Setting (docs/inexact.md holds the numbers this script printed):

- model: timm ``convnext_atto`` (num_classes=10, untrained), on scikit-learn's digits as the
  ``fxtaylor prune`` default loads them (``fxtaylor.datasets.digits``, 32×32 RGB, its
  train/test split; ``fxtaylor.job.train_loader``, batch 32). Trained once with AdamW and a
  one-cycle learning rate — the command's own recipe (SGD, ``job.finetune``) leaves a ConvNeXt
  at chance — and cached in a temporary folder (``--cache-dir``), with the latency tables.
- pruning, per seed, from identical copies of that model: ``fxtaylor.prune`` with the command's
  digits schedule (SGD lr 1e-3, momentum 0.9, wd 1e-4; 10 observed updates per step), steps of
  5 % of the dense resource (``flops_per_prune``: both modes take about the same number of
  steps) and ``final_updates=0``; each mode (exact=True / exact=False) to ``target_flops`` 0.5
  and 0.15 (exact pruning can reach 0.129 at most), to ``target_latency`` measured on CPU,
  batch 1, float32, one thread, and to ``target_flops`` 0.08, below what the exact mode can
  reach (it is refused; recorded). A latency target the exact mode cannot reach (0.7 here) is
  replaced by the nearest one it can, and the output says so.
- recovery: every pruned model then gets the same 100 SGD updates (``recovery``), same batches
  (re-seeded), same optimizer (the paper's SGD, momentum 0.9, weight decay 1e-4, at the digits learning rate).
- finally the dense model and every pruned model of the seed are timed side by side in one
  interleaved call (per-round ratios to the dense model).
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.nn as nn
from torch.utils.data import DataLoader

import fxtaylor
from fxtaylor import datasets, job, models, saving
from fxtaylor.cost import FlopsCost, LatencyCost
from fxtaylor.errors import FxTaylorError
from fxtaylor.latency import Deployment, measure

sys.path.insert(0, str(Path(__file__).resolve().parent))
import quality  # noqa: E402
from fxtaylor.pruner import compare
from fxtaylor.pruner import measure as metrics
from fxtaylor.pruner.state import seed_everything

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "inexact_study.json"

FULL = {
    "model": "convnext_atto", "model_kwargs": {}, "size": 32, "batch_size": 32,
    "train_epochs": 10, "train_lr": 2e-3, "train_wd": 0.05, "train_seed": 0,
    "lr": 1e-3, "updates": 10, "step": 0.05, "recovery": 100,
    # 0.5: the level; 0.15: near what exact pruning can reach at most (0.129 of the FLOPs
    # left); 0.08: below that, reachable only with exact=False (the exact run is refused)
    "flops_targets": [0.5, 0.15], "beyond_flops": 0.08, "target_latency": 0.7, "seeds": [0, 1, 2],
}
QUICK = {  # a ConvNeXt-atto with one block per stage and narrow stages: only checks the script works
    **FULL, "model_kwargs": {"depths": [1, 1, 1, 1], "dims": [8, 16, 24, 32]}, "size": 32,
    "train_epochs": 1, "updates": 2, "step": 0.2, "recovery": 4, "flops_targets": [0.6], "beyond_flops": 0.3,
    "target_latency": 0.8, "seeds": [0],
}
MODES = {"exact": True, "inexact": False}


# -- the trained model -----------------------------------------------------------------------------


def loaders(cfg: dict) -> tuple[DataLoader, DataLoader]:
    """The digits as ``fxtaylor prune`` loads them (train shuffled with its own seeded generator)."""
    args = SimpleNamespace(batch_size=cfg["batch_size"], seed=cfg["train_seed"])
    train = job.train_loader(datasets.digits("train", size=cfg["size"], channels=3), args, shard=False)
    val = DataLoader(datasets.digits("test", size=cfg["size"], channels=3), batch_size=256)
    return train, val


def trained(cfg: dict, train: DataLoader, cache: Path) -> tuple[nn.Module, dict, float, bool]:
    """The ConvNeXt trained on the digits (AdamW, one-cycle), from the cache when there."""
    key = "-".join([cfg["model"], *(f"{k}{'x'.join(map(str, v))}" for k, v in sorted(cfg["model_kwargs"].items())),
                    f"digits{cfg['size']}", f"e{cfg['train_epochs']}", f"lr{cfg['train_lr']:g}", f"wd{cfg['train_wd']:g}",
                    f"b{cfg['batch_size']}", f"s{cfg['train_seed']}", f"torch{torch.__version__.split('+')[0]}"])
    path = cache / f"{key}.pt"
    if path.is_file():
        model, arch = saving.load_with_arch(path)
        return model, arch, 0.0, True
    seed_everything(cfg["train_seed"])
    train.generator.manual_seed(cfg["train_seed"])
    model, arch = models.build_named(cfg["model"], num_classes=10, **cfg["model_kwargs"])
    t = time.perf_counter()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg["train_lr"], weight_decay=cfg["train_wd"])
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg["train_lr"], total_steps=cfg["train_epochs"] * len(train))
    model.train()
    for _ in range(cfg["train_epochs"]):
        for x, y in train:
            loss = nn.functional.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    spent = time.perf_counter() - t
    saving.save(model, path, arch)
    return model, arch, spent, False


# -- one pruning run ---------------------------------------------------------------------------


def recover(model: nn.Module, train: DataLoader, updates: int, lr: float, seed: int) -> float:
    """``updates`` SGD updates (the paper's optimizer at the digits learning rate, as
    benchmarks/quality.py recovers) on batches fixed by ``seed``: the same for every run of a
    seed. Returns the seconds spent."""
    seed_everything(seed)
    train.generator.manual_seed(seed)
    t = time.perf_counter()
    quality.recover(model, train, updates, lr)
    return time.perf_counter() - t


def removed_inexact(base: nn.Module, x: torch.Tensor, removed: list[int]) -> int:
    """How many of the removed channels belong to groups only ``exact=False`` opens (unit ids
    are those of the dense model's graph, which tracing reproduces)."""
    g = fxtaylor.trace(copy.deepcopy(base), x, exact=False)
    if not removed:
        return 0
    groups = g.group_of_unit[torch.as_tensor(removed, dtype=torch.long)].tolist()
    return sum(1 for gi in groups if g.groups[gi].inexact)


def run(base, train, val, x, cfg, dep, cache, seed, exact, target) -> tuple[nn.Module, dict]:
    model = copy.deepcopy(base)
    opt = torch.optim.SGD(model.parameters(), lr=cfg["lr"], momentum=0.9, weight_decay=1e-4)
    cost = LatencyCost(dep, cache_dir=cache / "latency", progress=False) if "target_latency" in target else None
    t = time.perf_counter()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="the pruned model is not", category=RuntimeWarning)
        res = fxtaylor.prune(model, train, optimizer=opt, updates_between_prunes=cfg["updates"], flops_per_prune=cfg["step"],
                             final_updates=0, deployment=dep, cost=cost, val_loader=val, seed=seed, progress=False,
                             exact=exact, **target)
    prune_s = time.perf_counter() - t
    model = res.model
    steps = sum(1 for h in res.history if isinstance(h["step"], int) and h["step"] > 0)
    pruned_acc = metrics.accuracy(model, val)
    recovery_s = recover(model, train, cfg["recovery"], cfg["lr"], seed)
    row = {
        "exact": exact, **target, "reached": res.reached, "stop_reason": res.stop_reason,
        "accuracy_before": res.before["accuracy"], "accuracy_pruned": pruned_acc, "accuracy_recovered": metrics.accuracy(model, val),
        "flops_ratio": res.flops_ratio, "params_ratio": res.after["params"] / res.before["params"],
        "latency_ratio": res.after["latency_ratio"], "latency_ratio_noise": res.after["latency_ratio_noise"],
        "steps": steps, "updates_while_pruning": steps * cfg["updates"], "recovery_updates": cfg["recovery"],
        "removed_channels": len(res.arch["removed_units"]),
        "removed_in_inexact_groups": removed_inexact(base, x, res.arch["removed_units"]),
        "rejected_cuts": res.config["rejected_cuts"], "reachable": res.config["reachable"],
        "prune_s": prune_s, "recovery_s": recovery_s,
    }
    return model, row


# -- the study ---------------------------------------------------------------------------------


def latency_target(base: nn.Module, x: torch.Tensor, dep: Deployment, cache: Path, wanted: float) -> dict:
    """The latency target both modes get: ``wanted`` if the exact mode can reach it (predicted,
    as the pruner checks it up front), else the nearest it can, rounded up to 0.01 and kept
    0.02 above what exact pruning can reach at most."""
    out = {"requested": wanted}
    for name, exact in MODES.items():
        g = fxtaylor.trace(copy.deepcopy(base), x, exact=exact)
        out[f"reachable_{name}"] = LatencyCost(dep, cache_dir=cache / "latency", progress=False).sync(g, x).reachable()
    floor = 1 - out["reachable_exact"]
    if wanted >= floor + 0.02:
        out["used"], out["note"] = wanted, f"target_latency={wanted} is reachable in exact mode"
    else:
        used = math.ceil((floor + 0.02) * 100) / 100
        out["used"] = used if used < 1 else None
        out["note"] = (f"target_latency={wanted} is not reachable in exact mode (pruning every prunable channel leaves "
                       f"{floor:.1%} of the predicted latency): "
                       + (f"both modes use {used}" if used < 1 else "no latency target is reachable; latency runs skipped"))
    return out


def study(seed: int, cfg: dict, base, train, val, x, dep, cache, lat: dict) -> tuple[list[dict], list[dict]]:
    """Every comparison of one seed: the rows, and the runs refused up front (exact mode below
    what it can reach)."""
    targets = [("equal FLOPs", {"target_flops": t}) for t in cfg["flops_targets"]]
    if lat["used"] is not None:
        targets.append(("equal latency", {"target_latency": lat["used"]}))
    targets.append(("beyond exact", {"target_flops": cfg["beyond_flops"]}))
    pruned, rows, refused = [], [], []
    for what, target in targets:
        for name, exact in MODES.items():
            try:
                model, row = run(base, train, val, x, cfg, dep, cache, seed, exact, target)
            except FxTaylorError as e:
                if what != "beyond exact":
                    raise
                refused.append({"seed": seed, "comparison": what, "mode": name, **target, "error": str(e)})
                print(f"  seed {seed}, {what} {target}, {name}: refused: {e}", flush=True)
                continue
            row.update(seed=seed, comparison=what, mode=name)
            print(f"  seed {seed}, {what}, {name}: FLOPs {row['flops_ratio']:.3f}, latency {row['latency_ratio']:.3f}, "
                  f"accuracy {row['accuracy_before']:.1%} → {row['accuracy_pruned']:.1%} → {row['accuracy_recovered']:.1%}, "
                  f"{row['steps']} steps, {row['removed_in_inexact_groups']} of {row['removed_channels']} removed channels "
                  f"in inexact groups, {row['prune_s']:.0f} s ({row['stop_reason']})", flush=True)
            pruned.append(model)
            rows.append(row)
    # every model of the seed timed side by side with the dense one: one interleaved call
    timings = measure([base, *pruned], x, dep, rounds=9, min_run_time=1.0)
    for row, t in zip(rows, timings[1:]):
        row["latency_ratio_joint"], row["latency_ratio_joint_noise"] = compare(timings[0], t)
    return rows, refused


def summarize(rows: list[dict]) -> list[dict]:
    """Mean, min and max over seeds of each (comparison, mode)."""
    keys = ("flops_ratio", "latency_ratio_joint", "latency_ratio", "accuracy_before", "accuracy_pruned", "accuracy_recovered",
            "steps", "removed_channels", "removed_in_inexact_groups", "prune_s")
    out = []
    target = lambda r: r.get("target_flops") or r.get("target_latency")  # noqa: E731
    for comp, t in dict.fromkeys((r["comparison"], target(r)) for r in rows):
        for mode in MODES:
            rs = [r for r in rows if r["comparison"] == comp and target(r) == t and r["mode"] == mode]
            if not rs:
                continue
            s = {"comparison": comp, "mode": mode, "target": t, "resource": "FLOPs" if "target_flops" in rs[0] else "latency",
                 "seeds": [r["seed"] for r in rs], "reached": [r["reached"] for r in rs],
                 "stop_reasons": [r["stop_reason"] for r in rs]}
            for k in keys:
                v = [float(r[k]) for r in rs]
                s[k] = {"mean": statistics.mean(v), "min": min(v), "max": max(v),
                        "std": statistics.stdev(v) if len(v) > 1 else 0.0}
            out.append(s)
    return out


def table(summary: list[dict]) -> str:
    def cell(s, k, pct=False, digits=3):
        d = s[k]
        f = (lambda v: f"{100 * v:.1f}") if pct else (lambda v: f"{v:.{digits}f}")
        rng = f" ({f(d['min'])}–{f(d['max'])})" if f(d["max"]) != f(d["min"]) else ""
        return f"{f(d['mean'])}{rng}{' %' if pct else ''}"

    lines = ["| comparison | mode | target | reached | FLOPs ÷ dense | latency ÷ dense (joint) | accuracy dense | after pruning | "
             "after recovery | steps | channels removed (in inexact groups) | prune s |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for s in summary:
        lines.append(f"| {s['comparison']} | {s['mode']} | {s['resource']} {s['target']:g} | {sum(s['reached'])}/{len(s['reached'])} | "
                     f"{cell(s, 'flops_ratio')} | "
                     f"{cell(s, 'latency_ratio_joint')} | {cell(s, 'accuracy_before', True)} | {cell(s, 'accuracy_pruned', True)} | "
                     f"{cell(s, 'accuracy_recovered', True)} | {cell(s, 'steps', digits=1)} | "
                     f"{s['removed_channels']['mean']:.0f} ({s['removed_in_inexact_groups']['mean']:.0f}) | "
                     f"{s['prune_s']['mean']:.0f} |")
    return "\n".join(lines)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", help="pruning seeds [0 1 2; quick: 0]")
    p.add_argument("--out", default=str(DEFAULT_OUT), help=f"JSON results [{DEFAULT_OUT.relative_to(ROOT)}]")
    p.add_argument("--cache-dir", default=str(Path(tempfile.gettempdir()) / "fxtaylor-inexact-study"),
                   help="trained model and latency tables [<tmp>/fxtaylor-inexact-study]")
    p.add_argument("--quick", action="store_true", help="a tiny ConvNeXt and schedule that only check the script works")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    cfg = dict(QUICK if a.quick else FULL)
    if a.seeds:
        cfg["seeds"] = a.seeds
    cache = Path(a.cache_dir)
    t0 = time.perf_counter()
    train, val = loaders(cfg)
    base, arch, train_s, cached = trained(cfg, train, cache)
    base.eval()
    x = next(iter(val))[0][:1]
    dense_acc = metrics.accuracy(base, val)
    dep = Deployment(device="cpu", batch_size=1, dtype="float32", threads=1)
    reach = {}
    for name, exact in MODES.items():
        g = fxtaylor.trace(copy.deepcopy(base), x, exact=exact)
        reach[name] = {"groups": len(g.groups), "prunable_groups": len(g.prunable_groups),
                       "inexact_groups": sum(1 for gr in g.groups if gr.inexact),
                       "flops_reachable": FlopsCost().sync(g, x).reachable()}
    lat = latency_target(base, x, dep, cache, cfg["target_latency"])
    print(f"{cfg['model']} {cfg['model_kwargs'] or ''} on digits {cfg['size']}×{cfg['size']}: dense accuracy {dense_acc:.1%} "
          f"({'cached' if cached else f'trained in {train_s:.0f} s'}); prunable groups exact {reach['exact']['prunable_groups']}"
          f" / inexact {reach['inexact']['prunable_groups']} of {reach['exact']['groups']}; reachable FLOPs share exact "
          f"{reach['exact']['flops_reachable']:.1%} / inexact {reach['inexact']['flops_reachable']:.1%}; reachable latency "
          f"share exact {lat['reachable_exact']:.1%} / inexact {lat['reachable_inexact']:.1%}", flush=True)
    print(f"latency: {lat['note']}", flush=True)
    rows, refused = [], []
    for seed in cfg["seeds"]:
        r, f = study(seed, cfg, base, train, val, x, dep, cache, lat)
        rows, refused = rows + r, refused + f
    summary = summarize(rows)
    text = table(summary)
    for r in rows:
        if not r["reached"]:
            text += (f"\n\nnot reached: seed {r['seed']}, {r['comparison']}, {r['mode']}: {r['stop_reason']} (latency "
                     f"{r['latency_ratio']:.3f}, FLOPs {r['flops_ratio']:.3f} after {r['steps']} steps)")
    for msg in dict.fromkeys(f"{f['mode']} mode, {f['comparison']} (target_flops={f['target_flops']}): refused: {f['error']}"
                             for f in refused):
        text += f"\n\n{msg}"
    print(text)
    result = {
        "command": "python " + " ".join([str(Path(sys.argv[0]).as_posix()), *(argv if argv is not None else sys.argv[1:])]),
        "config": cfg, "dense_accuracy": dense_acc, "train_s": train_s, "trained_from_cache": cached, "graphs": reach,
        "latency_target": lat, "deployment": dep.as_dict(), "environment": metrics.environment(torch.device("cpu")),
        "rows": rows, "refused": refused, "summary": summary, "markdown": text, "total_s": time.perf_counter() - t0,
    }
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(f"wrote {out} ({result['total_s']:.0f} s)")
    return result


if __name__ == "__main__":
    try:
        main()
    except FxTaylorError as e:
        sys.exit(f"inexact_study: {e}")
