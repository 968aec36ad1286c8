"""Latency-model accuracy: predicted vs measured latency of randomly cut architectures.

Goal: ``ratio_latency_model_median_error`` ≤ 0.10 (median |predicted − measured| / measured).

Enabled (``pytest benchmarks/bench_latency_model.py --benchmark-enable``): torchvision
MobileNetV2 at 96 px, CPU, batch 1 — the latency model is built in a fresh cache directory,
8 random cuts (``latency_study.random_archs``) are timed together with the dense model, and the
errors reported, raw and drift-corrected (see ``latency_study.py``). The benchmark itself times
a prediction (``LatencyModel.predict``), which the pruner calls once per candidate.

Disabled (CI): a three-conv net at 32 px, 2 cuts, short timings: the whole path runs in
seconds; the error is not reported (too few, too small layers to mean anything).

The study behind docs/latency.md (ResNet-50 and MobileNetV2 at 224 px, ≥ 20 cuts each) is
``python benchmarks/latency_study.py accuracy``.
"""
import copy

import torch
import torch.nn as nn
import torchvision

import fxtaylor
from fxtaylor.latency import Deployment, LatencyModel, widths
from fxtaylor.latency import model as latency_model
from latency_study import study
from ratios import report


def tiny_net() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
        nn.Conv2d(32, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10),
    ).eval()


def test_latency_model_error(benchmark, tmp_path, monkeypatch):
    torch.manual_seed(0)
    if benchmark.disabled:
        # CI checks the path, not the numbers: one short block per grid point
        monkeypatch.setattr(latency_model, "POINT_S", 0.005)
        monkeypatch.setattr(latency_model, "POINT_ROUNDS", 1)
        monkeypatch.setattr(latency_model, "DENSE_S", 0.05)
        model, x, archs, run_time = tiny_net(), torch.randn(1, 3, 32, 32), 2, 0.05
    else:
        model, x, archs, run_time = torchvision.models.mobilenet_v2(weights=None).eval(), torch.randn(1, 3, 96, 96), 8, 1.0
    dep = Deployment(device="cpu", threads=1)  # one thread: see tests/test_latency.py on shared cores
    r = study(model, x, dep, archs, cache_dir=tmp_path, progress=False, min_run_time=run_time, rounds=5)
    assert r["archs"] == archs and all(row["predicted_ms"] > 0 and row["measured_ms"] > 0 for row in r["rows"])
    names = list(fxtaylor.trace(copy.deepcopy(model), x).module_io())
    lm = LatencyModel.build(model, x, dep, layers=names, cache_dir=tmp_path, progress=False)  # the study's, cached
    assert lm.build_s == 0
    w = widths(model, x, lm.layers)
    out = benchmark(lm.predict, w)
    assert abs(out - lm.dense_ms) <= 1e-6 * lm.dense_ms
    if benchmark.disabled:
        return
    benchmark.extra_info.update({k: r[k] for k in ("build_s", "layers_modelled", "tables", "scale", "max_error",
                                                    "median_error_drift_corrected", "max_error_drift_corrected")})
    report(benchmark, "ratio_latency_model_median_error", r["median_error"], 0.10)
