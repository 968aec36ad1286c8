"""Every GPU figure in one script: ≤ 5 minutes on one GPU, one table printed, one JSON written.

    PYTHONPATH=.:$DEPS python benchmarks/gpu.py --out $OUT/gpu.json         # on a CUDA machine
    python benchmarks/gpu.py --device cpu --quick                          # smoke test anywhere

Figures (issue 12 and 13):

1. **Latency target** — ResNet-50 and MobileNetV2 (224×224, random weights, learning rate 0:
   the control loop is measured, not accuracy) pruned with ``target_latency=0.5`` on the GPU in
   float16, channels_last, batch 1 and 256; measured latency ÷ dense (per-round ratios, side
   by side) against the target, steps, rejected cuts, the predicted reachable share, the
   latency tables' build time.
2. **Criterion overhead** — a ResNet-50 training step with ``TaylorImportance.observe()`` ÷
   without, batch 16 / 64 / 256, float32 and bfloat16 autocast, and the peak-memory ratio
   (:func:`overhead.criterion_overhead`).
3. **The default command on CUDA** — ``fxtaylor prune --device cuda`` (the embedded digits
   ResNet-18 to half its FLOPs): its report's speed-up on the GPU; then the same with
   ``--target-latency 0.5``.

Each figure runs under its own try/except: one failure is recorded in the JSON and the rest
still run.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
ROOT = Path(__file__).resolve().parents[1]


def latency_target(device: str, quick: bool) -> list[dict]:
    import bench_latency_target as blt

    rows = []
    cases = [("resnet50", b) for b in (1, 256)] + [("mobilenet_v2", b) for b in (1, 256)]
    if quick:
        cases = [("resnet18", 2)]
    dtype = "float16" if device.startswith("cuda") else "float32"
    for name, batch in cases:
        t = time.perf_counter()
        res = blt.run(name, batch, 0.5 if not quick else 0.8, 0.05 if not quick else 0.2,
                      deployment={"device": device, "dtype": dtype, "memory_format": "channels_last"})
        ratios = [h["latency_ratio"] for h in res.history if "latency_ratio" in h]
        rows.append({
            "model": name, "batch": batch, "dtype": dtype, "target": 0.5 if not quick else 0.8,
            "measured_ratio": res.after["latency_ratio"], "noise": res.after["latency_ratio_noise"],
            "dense_ms": res.before["latency_ms"], "pruned_ms": res.after["latency_ms"], "flops_ratio": res.flops_ratio,
            "steps": len(ratios) - 1, "slower_steps": sum(b > a for a, b in zip(ratios, ratios[1:])),
            "rejected": res.config["rejected_cuts"], "reachable": res.config["reachable"], "reached": res.reached,
            "stop_reason": res.stop_reason, "table_build_s": (res.config["cost_model"]["table"] or {}).get("build_s"),
            "seconds": time.perf_counter() - t,
        })
        print(f"  latency target {name} b{batch}: {rows[-1]['measured_ratio']:.3f} of dense "
              f"(target {rows[-1]['target']}), {rows[-1]['seconds']:.0f} s", flush=True)
    return rows


def overhead(device: str, quick: bool) -> list[dict]:
    from overhead import criterion_overhead

    rows = []
    for batch in ((16, 64, 256) if not quick else (2,)):
        for dtype in ("float32", "bfloat16"):
            r = criterion_overhead(device, batch, dtype, "resnet50" if not quick else "resnet18",
                                   rounds=15 if not quick else 2, size=224 if not quick else 32)
            rows.append(r)
            print(f"  overhead b{batch} {dtype}: {r['time_ratio']:.3f}× time, memory {r['memory_ratio']}", flush=True)
    return rows


def default_command(device: str, quick: bool) -> list[dict]:
    rows = []
    variants = [[], ["--target-latency", "0.5"]] if not quick else [["--target-flops", "0.9"]]
    for extra in variants:
        with tempfile.TemporaryDirectory() as out:
            cmd = [sys.executable, "-m", "fxtaylor", "prune", "--device", device, "--no-progress", "--out", out + "/run", *extra]
            t = time.perf_counter()
            p = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")})
            row = {"args": extra, "rc": p.returncode, "seconds": time.perf_counter() - t, "stderr_tail": p.stderr[-800:]}
            rep = Path(out) / "run" / "report.json"
            if rep.is_file():
                r = json.loads(rep.read_text())
                row.update(speedup=r["speedup"], flops_ratio=r["after"]["flops"] / r["before"]["flops"],
                           accuracy=[r["before"]["accuracy"], r["after"]["accuracy"]], stop_reason=r["stop_reason"],
                           deployment=r["config"].get("deployment"))
            rows.append(row)
            print(f"  fxtaylor prune {' '.join(extra)}: rc {p.returncode}, speed-up {row.get('speedup')}", flush=True)
    return rows


def table(results: dict) -> str:
    lines = ["| figure | setting | value | goal |", "|---|---|---|---|"]
    for r in results.get("latency_target", []):
        lines.append(f"| latency target | {r['model']} b{r['batch']} {r['dtype']} | measured {r['measured_ratio']:.3f} ± {r['noise']:.3f} "
                     f"of dense ({r['steps']} steps, {r['rejected']} rejected, {r['slower_steps']} slower, reachable {r['reachable']:.0%}) | "
                     f"≤ {1.05 * r['target']:.3f} |")
    for r in results.get("overhead", []):
        lines.append(f"| criterion overhead | b{r['batch']} {r['dtype']} | {r['time_ratio']:.3f}× time, "
                     f"{r['memory_ratio'] if r['memory_ratio'] is None else round(r['memory_ratio'], 3)}× memory | "
                     f"{ {16: '≤ 1.25', 64: '≤ 1.10', 256: '≤ 1.05'}.get(r['batch'], '–') } |")
    for r in results.get("default_command", []):
        lines.append(f"| fxtaylor prune {' '.join(r['args']) or '(default)'} | rc {r['rc']} | speed-up {r.get('speedup')} | > 1 |")
    for k, v in results.items():
        if isinstance(v, dict) and "error" in v:
            lines.append(f"| {k} | FAILED | {v['error'][:120]} | |")
    return "\n".join(lines)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--out", default="gpu.json")
    p.add_argument("--quick", action="store_true", help="tiny sizes: checks the script runs (CI, CPU)")
    p.add_argument("--only", nargs="+", choices=["latency_target", "overhead", "default_command"])
    a = p.parse_args(argv)
    results: dict = {"torch": torch.__version__, "device": a.device,
                     "device_name": torch.cuda.get_device_name(a.device) if a.device.startswith("cuda") else "cpu"}
    for name, fn in (("overhead", overhead), ("latency_target", latency_target), ("default_command", default_command)):
        if a.only and name not in a.only:
            continue
        t = time.perf_counter()
        print(f"{name} ...", flush=True)
        try:
            results[name] = fn(a.device, a.quick)
        except Exception as e:  # one broken figure must not cost the others
            results[name] = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-2000:]}
        results[name + "_s"] = time.perf_counter() - t
        Path(a.out).write_text(json.dumps(results, indent=1, default=str))
    print(table(results))
    return results


if __name__ == "__main__":
    main()
