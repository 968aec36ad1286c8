"""Pruning to a latency measured in ONNX Runtime, and how far an eager speed-up carries to other
runtimes (issue 21).

1. ``test_latency_target_onnxruntime``: ``fxtaylor.prune(target_latency=0.5,
   deployment=Deployment(runtime="onnxruntime"))`` — the tables, the check of every cut and the
   final measurement all in ONNX Runtime (CPU provider) — for torchvision ResNet-50 and
   MobileNetV2 at 224×224, batch 1 and 32. Goals: ``ratio_measured_over_target`` ≤ 1.05 (final
   pruned ÷ dense latency, measured side by side in ORT, ÷ 0.5) and ``ratio_steps_slower`` = 0
   (no accepted step measured slower than the model before it beyond 10 %). Same setup as
   ``bench_latency_target.py`` (random init, learning rate 0, 5 % per step, fresh table cache).
   ``FXTAYLOR_BENCH_THREADS`` sets the deployment's threads (default: torch's default).
2. ``test_runtime_table``: the model pruned to half its *eager* latency (eager, channels_last,
   the default deployment), then the dense and pruned models timed side by side in every
   runtime available here: eager (channels_last and contiguous), ONNX Runtime, torch.compile.
   Informational ratios (``ratio_pruned_over_dense_<runtime>``): how much of the eager speed-up
   each runtime keeps.

CI (``--benchmark-disable``) runs the digits ResNet-18 at batch 1 only, to a 0.8 target in ORT,
and the runtime table on it without torch.compile.
"""
import os

import pytest
import torch
import torchvision

from bench_latency_target import check, run
from fxtaylor.latency import Deployment, measure
from fxtaylor.optional import available
from ratios import report

TARGET = 0.5
THREADS = int(os.environ["FXTAYLOR_BENCH_THREADS"]) if os.environ.get("FXTAYLOR_BENCH_THREADS") else None
SIDES = {"resnet50": 224, "mobilenet_v2": 224, "resnet18": 32}


@pytest.mark.parametrize("batch", [1, 32])
@pytest.mark.parametrize("name", ["resnet50", "mobilenet_v2", "resnet18"])
def test_latency_target_onnxruntime(benchmark, name, batch):
    if benchmark.disabled and (name != "resnet18" or batch != 1):
        pytest.skip("CI runs the smallest case only")
    if not available("onnxruntime"):
        pytest.skip("needs the deploy extra")
    target = TARGET if not benchmark.disabled else 0.8
    dep = {"runtime": "onnxruntime", "threads": THREADS}
    res = benchmark.pedantic(run, args=(name, batch, target, 0.05 if not benchmark.disabled else 0.1, dep), rounds=1, iterations=1)
    assert res.config["deployment"]["runtime"] == "onnxruntime"
    check(benchmark, res, name, batch, target)


def runtimes_here(with_compile: bool) -> dict[str, dict]:
    """The deployments the table times in: every runtime this machine has."""
    out = {"eager channels_last": {"runtime": "eager", "memory_format": "channels_last"},
           "eager contiguous": {"runtime": "eager", "memory_format": "contiguous"}}
    if available("onnxruntime"):
        out["onnxruntime"] = {"runtime": "onnxruntime"}
    if with_compile:
        out["torch.compile"] = {"runtime": "torch.compile", "memory_format": "channels_last"}
    return out


@pytest.mark.parametrize("name", ["resnet50", "mobilenet_v2", "resnet18"])
def test_runtime_table(benchmark, name):
    if benchmark.disabled and name != "resnet18":
        pytest.skip("CI runs the smallest case only")
    target = TARGET if not benchmark.disabled else 0.8
    res = run(name, 1, target, 0.05 if not benchmark.disabled else 0.1, {"threads": THREADS})
    torch.manual_seed(0)  # the dense model as run() built it before pruning: same seed, same weights
    classes = 10 if name == "resnet18" else 1000
    dense = torchvision.models.get_model(name, weights=None, num_classes=classes).eval()
    x = torch.randn(1, 3, SIDES[name], SIDES[name])
    table = {}

    def time_all():
        for label, fields in runtimes_here(with_compile=not benchmark.disabled).items():
            d, p = measure([dense, res.model], x, Deployment(batch_size=1, threads=THREADS, **fields),
                           min_run_time=3.0 if not benchmark.disabled else 0.1, rounds=9)
            ratio = sorted(b / a for a, b in zip(d.rounds_ms, p.rounds_ms))[len(d.rounds_ms) // 2]
            table[label] = {"dense_ms": round(d.median_ms, 3), "pruned_ms": round(p.median_ms, 3), "ratio": round(ratio, 4),
                            "setup_s": round(p.setup_s, 2)}

    benchmark.pedantic(time_all, rounds=1, iterations=1)
    benchmark.extra_info.update(pruned_for=res.config["deployment"], final_ratio_eager=round(res.after["latency_ratio"], 4),
                                flops_ratio=round(res.flops_ratio, 4), table=table)
    for label, row in table.items():
        report(benchmark, f"ratio_pruned_over_dense_{label.replace(' ', '_')}_{name}", row["ratio"], None)
