"""How long a run takes to its result: ``fxtaylor.prune`` to ``target_flops=0.5`` with the
paper's schedule (the default) and with ``Schedule.quick()``, end to end, on three model sizes,
with the loop's own remaining-time prediction beside what followed it.

    python benchmarks/schedule_times.py                  # every case; writes benchmarks/results/schedule_times.json
    python benchmarks/schedule_times.py --cases digits --out /tmp/t.json

Cases (each run with torch's default thread count unless OMP_NUM_THREADS says otherwise):

- ``digits``: the embedded default as a user runs it, in a subprocess — ``fxtaylor prune
  --no-progress --out DIR`` against ``... --quick`` (imports and the cached trained model
  included; the model is trained once, about 25 s, if it is not in the cache yet). Accuracy on
  the 449 held-out digits, after pruning, is real: the schedules' accuracy trade.
- ``resnet50``: README's "Use it from Python" shape — torchvision ``resnet50(num_classes=102)``,
  64 random 64×64 images with random labels in batches of 32 (the paper's batch size) for
  training and 64 more for ``val_loader``, ``checkpoint_dir``, ``target_flops=0.5``; the paper
  schedule is ``fxtaylor.prune``'s defaults (30 updates, 1 % of the maps a step).
- ``mobilenet_v2``: the same data and settings.

Random weights and labels: accuracy is chance there and not recorded. A run past ``--cap``
seconds (default 600) is stopped after the step that crosses it and recorded with its steps,
the FLOPs it reached and the loop's latest prediction of the time it had left.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torchvision
from torch.utils.data import DataLoader, TensorDataset

import fxtaylor
from fxtaylor.pruner import eta as eta_mod

HERE = Path(__file__).resolve().parent
CASES = ("digits", "resnet50", "mobilenet_v2")
SCHEDULES = ("paper", "quick")


class Capped(Exception):
    pass


def load() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def pruning_steps(history: list[dict]) -> int:
    return sum(1 for h in history if isinstance(h.get("step"), int) and h["step"] > 0 and h.get("removed"))


def digits_run(schedule: str, cap: float) -> dict:
    """``fxtaylor prune`` as typed, in its own process; the numbers from its report.json."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        argv = [sys.executable, "-m", "fxtaylor", "prune", "--no-progress", "--out", str(out),
                *(["--quick"] if schedule == "quick" else [])]
        t = time.perf_counter()
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=cap)
        except subprocess.TimeoutExpired:
            return {"capped": True, "wall_s": round(time.perf_counter() - t, 1)}
        wall = time.perf_counter() - t
        if done.returncode != 0:
            raise SystemExit(f"{' '.join(argv)} failed: {done.stderr.strip().splitlines()[-1]}")
        rep = json.loads((out / "report.json").read_text())
    return {
        "command": "fxtaylor prune --no-progress --out DIR" + (" --quick" if schedule == "quick" else ""),
        "wall_s": round(wall, 1), "steps": pruning_steps(rep["history"]), "reached": rep["reached"],
        "flops_ratio": round(rep["after"]["flops"] / rep["before"]["flops"], 4),
        "accuracy_before": rep["before"]["accuracy"], "accuracy_after": rep["after"]["accuracy"],
        "updates_between_prunes": rep["config"]["updates_between_prunes"],
        "flops_per_prune": rep["config"]["flops_per_prune"], "maps_per_prune": rep["config"]["maps_per_prune"],
        "prune_s": round(rep["timings"]["prune_s"], 1), "total_s": round(rep["timings"]["total_s"], 1),
        "eta": rep["timings"].get("eta"), "threads": rep["environment"]["threads"],
    }


def python_run(name: str, schedule: str, cap: float) -> dict:
    """README's ``fxtaylor.prune`` call on random 64×64 data; stopped after the step past ``cap``."""
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None, num_classes=102)
    g = torch.Generator().manual_seed(0)
    train = TensorDataset(torch.randn(64, 3, 64, 64, generator=g), torch.randint(0, 102, (64,), generator=g))
    val = TensorDataset(torch.randn(64, 3, 64, 64, generator=g), torch.randint(0, 102, (64,), generator=g))
    seen: dict = {}
    real_step = eta_mod.Eta.step

    def spy(self, *args, **kwargs):  # the loop's predictions, also for a run stopped at the cap
        pred, first = real_step(self, *args, **kwargs)
        seen.update(last=pred, **({"first": first} if first else {}))
        return pred, first

    t = time.perf_counter()
    records = []

    def on_step(rec):
        records.append(rec)
        if time.perf_counter() - t > cap:
            raise Capped

    eta_mod.Eta.step = spy
    try:
        with tempfile.TemporaryDirectory() as run_dir:
            result = fxtaylor.prune(
                model, DataLoader(train, batch_size=32, shuffle=True, generator=torch.Generator().manual_seed(0)),
                val_loader=DataLoader(val, batch_size=32), target_flops=0.5, checkpoint_dir=run_dir,
                arch={"kind": "torchvision", "name": name, "kwargs": {"num_classes": 102}}, progress=False, seed=0,
                **({"schedule": fxtaylor.Schedule.quick()} if schedule == "quick" else {}), on_step=on_step)
    except Capped:
        wall = time.perf_counter() - t
        last = records[-1]
        left = (seen.get("last") or {}).get("seconds_left")
        return {"capped": True, "wall_s": round(wall, 1), "steps_done": pruning_steps(records),
                "flops_ratio_reached": round(last["flops"] / model_flops(name), 4),
                "predicted_left_s": left, "predicted_total_s": round(wall + left, 1) if left is not None else None,
                "predicted_steps_left": (seen.get("last") or {}).get("steps_left"), "eta_first": seen.get("first"),
                "threads": torch.get_num_threads()}
    finally:
        eta_mod.Eta.step = real_step
    wall = time.perf_counter() - t
    return {
        "wall_s": round(wall, 1), "steps": pruning_steps(result.history), "reached": result.reached,
        "flops_ratio": round(result.flops_ratio, 4), "updates_between_prunes": result.config["updates_between_prunes"],
        "flops_per_prune": result.config["flops_per_prune"], "maps_per_prune": result.config["maps_per_prune"],
        "prune_s": round(result.timings["prune_s"], 1), "eta": result.timings.get("eta"), "threads": torch.get_num_threads(),
    }


def model_flops(name: str) -> float:
    m = torchvision.models.get_model(name, weights=None, num_classes=102)
    return fxtaylor.flops.count(m, torch.zeros(1, 3, 64, 64))[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", nargs="+", choices=CASES, default=list(CASES))
    ap.add_argument("--schedules", nargs="+", choices=SCHEDULES, default=list(SCHEDULES))
    ap.add_argument("--cap", type=float, default=600.0, help="seconds a run may take before it is stopped [600]")
    ap.add_argument("--out", default=str(HERE / "results" / "schedule_times.json"))
    a = ap.parse_args()
    rows = []
    meta = {"cpu_count": os.cpu_count(), "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"), "load_before": load(), "cap_s": a.cap}
    for case in a.cases:
        for schedule in a.schedules:
            before = load()
            row = digits_run(schedule, a.cap) if case == "digits" else python_run(case, schedule, a.cap)
            rows.append({"case": case, "schedule": schedule, **row, "load_before": before, "load_after": load()})
            print(json.dumps(rows[-1]), flush=True)
    meta["load_after"] = load()
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps({"meta": meta, "runs": rows}, indent=2) + "\n")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
