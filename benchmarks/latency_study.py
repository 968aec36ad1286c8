"""How well the latency model predicts measured latency, and which CPU memory format is faster.

    python benchmarks/latency_study.py accuracy [--models resnet50 mobilenet_v2] [--batch 1] [--archs 20]
    python benchmarks/latency_study.py formats [--batch 1 32]
    python benchmarks/latency_study.py alignment [--models mobilenet_v2] [--builds 3]

``accuracy``: for each torchvision model (weights=None, 224 px, CPU), build the latency model
(``LatencyModel.build`` with the channel graph's modules, as the pruner does; a fresh cache
directory, so the build time is a real build), then cut ``--archs`` random architectures: every
prunable group of ``fxtaylor.trace`` is, with probability 0.7, cut to a random fraction in
[0.2, 1] of its channels (random channels). The dense model and all cut ones are timed together
by ``fxtaylor.latency.measure`` (interleaved rounds), twice (the mean is the measurement; the
two passes' disagreement on each speed-up is the noise floor), and each prediction compared
with its measurement: |predicted − measured| / measured. Reported raw, and *drift-corrected*: the
tables were timed minutes before the architectures, and a shared machine's speed drifts in
between, so predictions are also scaled by measured-dense ÷ the model's dense (the prediction
that the pruner's speed-up targets use). Writes the ``accuracy`` part of
docs/results/latency_model.json.

``alignment``: the latency model built several times from scratch; the preferred channel
multiples each build measured (are they reproducible?).

``formats``: dense ResNet-50 and MobileNetV2 timed channels_last against contiguous, interleaved
in alternating ``measure`` calls: the evidence for the CPU default (the ``formats`` part
of the same file).
"""
from __future__ import annotations

import argparse
import copy
import json
import platform
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torchvision

import fxtaylor
from fxtaylor.latency import Deployment, LatencyModel, Timing, measure, widths
from fxtaylor.latency.deployment import device_name

OUT = Path(__file__).resolve().parent.parent / "docs" / "results" / "latency_model.json"


def random_archs(model: torch.nn.Module, x: torch.Tensor, n: int, seed: int, p_group: float = 0.7, low: float = 0.2):
    """``n`` randomly cut copies of ``model``: each prunable group, with probability
    ``p_group``, keeps a random fraction in [``low``, 1] of its channels (random ones)."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        m = copy.deepcopy(model)
        graph = fxtaylor.trace(m, x)
        for g in list(graph.prunable_groups):
            if rng.random() > p_group:
                continue
            keep = max(g.min_keep, round(g.size * rng.uniform(low, 1.0)))
            drop = rng.sample(range(g.size), g.size - keep)
            if drop:
                graph.prune(g, drop)
        out.append(m.eval())
    return out


def study(model: torch.nn.Module, x: torch.Tensor, dep: Deployment, archs: int, seed: int = 0, cache_dir: Path | None = None,
          progress: bool = True, min_run_time: float = 1.0, rounds: int = 5) -> dict:
    """Build the latency model of ``model`` and compare its predictions with measurements of
    ``archs`` random cuts; the numbers as a dict."""
    names = list(fxtaylor.trace(copy.deepcopy(model), x).module_io())
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        lm = LatencyModel.build(model, x, dep, layers=names, cache_dir=cache_dir or Path(tmp), progress=progress)
        build_wall = time.perf_counter() - t
    cut = random_archs(model, x, archs, seed)
    # two passes over all models, one after the other: their disagreement is the measurement's
    # own noise floor on this machine, which no prediction can be checked below
    passes = [measure([model, *cut], x, dep, min_run_time=min_run_time, rounds=rounds) for _ in range(2)]
    timings = [Timing(statistics.fmean(t.median_ms for t in ts), max(t.iqr_ms for t in ts), sum(t.runs for t in ts))
               for ts in zip(*passes)]
    speedups = [[p[0].median_ms / t.median_ms for t in p[1:]] for p in passes]
    repeat = [abs(a - b) / ((a + b) / 2) for a, b in zip(*speedups)]
    dense_meas = timings[0].median_ms
    drift = dense_meas / lm.dense_ms
    rows = []
    for m, tm, rep in zip(cut, timings[1:], repeat):
        w = widths(m, x, lm.layers)
        pred = lm.predict(w)
        # the two splits of the remainder the model rejects: all of it constant, all of it
        # following the layers (LatencyModel: half and half)
        iso = sum(t(*w[n]) for n, t in lm.layers.items()) / lm.scale
        additive = iso + lm.dense_ms - lm.isolated_ms
        proportional = iso * lm.dense_ms / lm.isolated_ms
        rows.append({
            "measured_ms": tm.median_ms, "iqr_ms": tm.iqr_ms, "predicted_ms": pred, "predicted_additive_ms": additive,
            "predicted_proportional_ms": proportional,
            "error_additive_drift_corrected": abs(additive * drift - tm.median_ms) / tm.median_ms,
            "error_proportional_drift_corrected": abs(proportional * drift - tm.median_ms) / tm.median_ms,
            "error": abs(pred - tm.median_ms) / tm.median_ms,
            "error_drift_corrected": abs(pred * drift - tm.median_ms) / tm.median_ms,
            "measured_speedup": dense_meas / tm.median_ms, "predicted_speedup": lm.dense_ms / pred,
            "params": sum(p.numel() for p in m.parameters()), "speedup_pass_disagreement": rep,
        })
    err = [r["error"] for r in rows]
    errc = [r["error_drift_corrected"] for r in rows]
    erra = [r["error_additive_drift_corrected"] for r in rows]
    errp = [r["error_proportional_drift_corrected"] for r in rows]
    return {
        "deployment": lm.deployment.as_dict(), "layers_modelled": len(lm.layers),
        "tables": len({id(t.ms) for t in lm.layers.values()}), "not_modelled": lm.skipped,
        "build_s": round(lm.build_s, 1), "build_wall_s": round(build_wall, 1),
        "dense_ms_at_build": lm.dense_ms, "dense_ms_in_study": dense_meas, "dense_iqr_ms_in_study": timings[0].iqr_ms,
        "isolated_ms": lm.isolated_ms, "scale": lm.scale, "remainder_share_isolated": 1 - lm.isolated_ms / lm.dense_ms,
        "alignment": {k: {kk: v.get(kk) for kk in ("multiple", "gain", "passes", "layer")} for k, v in lm.alignments.items()},
        "archs": len(rows), "median_error": statistics.median(err), "max_error": max(err),
        "median_speedup_pass_disagreement": statistics.median(repeat), "max_speedup_pass_disagreement": max(repeat),
        "median_error_drift_corrected": statistics.median(errc), "max_error_drift_corrected": max(errc),
        "median_error_additive_drift_corrected": statistics.median(erra), "max_error_additive_drift_corrected": max(erra),
        "median_error_proportional_drift_corrected": statistics.median(errp), "max_error_proportional_drift_corrected": max(errp),
        "rows": rows,
    }


def formats(batches: list[int], names: list[str], threads: int | None, min_run_time: float, rounds: int) -> dict:
    out = {}
    for name in names:
        torch.manual_seed(0)
        m = torchvision.models.get_model(name, weights=None).eval()
        x = torch.randn(1, 3, 224, 224)
        for b in batches:
            # one measure() call per format, alternating calls: measure copies and casts each
            # model, so the two formats cannot share one call; alternation spreads the drift
            res = {"channels_last": [], "contiguous": []}
            for _ in range(rounds):
                for fmt in res:
                    t = measure([m], x, Deployment(device="cpu", batch_size=b, memory_format=fmt, threads=threads),
                                min_run_time=min_run_time, rounds=1)[0]
                    res[fmt].append(t.median_ms)
            cl, ct = statistics.median(res["channels_last"]), statistics.median(res["contiguous"])
            out[f"{name}_b{b}"] = {"channels_last_ms": cl, "contiguous_ms": ct, "contiguous_over_channels_last": ct / cl,
                                   "rounds": rounds, "per_round": res}
            print(f"{name} batch {b}: channels_last {cl:.2f} ms, contiguous {ct:.2f} ms, ratio {ct / cl:.3f}", flush=True)
    return out


def alignments(name: str, builds: int, threads: int | None) -> dict:
    """Build the latency model of ``name`` ``builds`` times, each in a fresh cache: are the
    measured preferred multiples the same every time?"""
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None).eval()
    x = torch.randn(1, 3, 224, 224)
    names = list(fxtaylor.trace(copy.deepcopy(model), x).module_io())
    out = []
    for i in range(builds):
        with tempfile.TemporaryDirectory() as tmp:
            lm = LatencyModel.build(model, x, Deployment(device="cpu", threads=threads), layers=names, cache_dir=Path(tmp), progress=False)
        found = {k: {"multiple": v["multiple"], "passes": v.get("passes"), "gain": v["gain"], "layer": v["layer"]}
                 for k, v in lm.alignments.items()}
        print(f"{name} build {i + 1}: " + ", ".join(f"{k} {v['multiple']} (passes {v['passes']})" for k, v in found.items()), flush=True)
        out.append(found)
    return {"model": name, "builds": out}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("what", choices=["accuracy", "formats", "alignment"])
    ap.add_argument("--builds", type=int, default=3, help="alignment: latency models built per model")
    ap.add_argument("--models", nargs="+", default=["resnet50", "mobilenet_v2"])
    ap.add_argument("--batch", nargs="+", type=int, default=[1])
    ap.add_argument("--archs", type=int, default=20)
    ap.add_argument("--threads", type=int, default=None, help="CPU threads while timing (default: torch's)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)
    env = {"command": "python benchmarks/latency_study.py " + " ".join(sys.argv[1:] if argv is None else argv),
           "torch": torch.__version__, "cpu": device_name("cpu"), "platform": platform.platform(),
           "threads_default": torch.get_num_threads(),
           "note": "2-core CPU shared with other jobs while measuring: absolute times are noisy"}
    # both commands write their part into one file, keeping the other's
    result = json.loads(args.out.read_text()) if args.out.is_file() else {}
    if args.what == "alignment":
        result["alignment"] = {"env": env, **{n: alignments(n, args.builds, args.threads) for n in args.models}}
    elif args.what == "formats":
        result["formats"] = {"env": env, **formats(args.batch, args.models, args.threads, 0.5, 7)}
    else:
        result.setdefault("accuracy", {})  # one entry per model and batch, each with its command
        for name in args.models:
            for b in args.batch:
                torch.manual_seed(args.seed)
                model = torchvision.models.get_model(name, weights=None).eval()
                x = torch.randn(1, 3, 224, 224)
                dep = Deployment(device="cpu", batch_size=b, threads=args.threads)
                r = study(model, x, dep, args.archs, args.seed, min_run_time=2.0 if b == 1 else 6.0, rounds=20 if b == 1 else 6)
                result["accuracy"][f"{name}_b{b}"] = {"env": env, **r}
                print(f"{name} batch {b}: build {r['build_s']:.0f} s, {r['layers_modelled']} layers / {r['tables']} tables, "
                      f"isolated layers miss {100 * r['remainder_share_isolated']:.0f} %, error median {100 * r['median_error']:.1f} % max "
                      f"{100 * r['max_error']:.1f} % (drift-corrected {100 * r['median_error_drift_corrected']:.1f} % / "
                      f"{100 * r['max_error_drift_corrected']:.1f} %; remainder all constant / all following the layers instead: "
                      f"{100 * r['median_error_additive_drift_corrected']:.1f} % / {100 * r['max_error_additive_drift_corrected']:.1f} %, "
                      f"{100 * r['median_error_proportional_drift_corrected']:.1f} % / {100 * r['max_error_proportional_drift_corrected']:.1f} %; "
                      f"two measurement passes disagree on speed-ups by {100 * r['median_speedup_pass_disagreement']:.1f} % median), alignment "
                      f"{ {k: v['multiple'] for k, v in r['alignment'].items()} }", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
