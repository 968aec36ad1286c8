"""Criterion overhead: a ResNet-50 training step (batch 16, CPU) with ``observe()`` ÷ without.

Goals: time ≤ 1.05×, peak memory ≤ 1.1×. Memory is the step's peak resident memory above the
resident memory before the step (Linux VmHWM), each variant in a fresh process, so torch's
own footprint does not dilute the ratio. Allocations over 64 KiB are forced through mmap
(fixed ``MALLOC_MMAP_THRESHOLD_``) so that freed tensors leave the resident set at once and
the high-water mark is the peak of live memory, not of glibc's retained heap.
"""
import json
import os
import statistics
import subprocess
import sys
import textwrap

import torch
import torch.nn.functional as F
import torchvision

import fxtaylor
from ratios import interleaved_medians, report

BATCH = 16


def setup():
    torch.manual_seed(0)
    model = torchvision.models.resnet50(weights=None)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    x, y = torch.randn(BATCH, 3, 224, 224), torch.randint(0, 1000, (BATCH,))
    return model, opt, x, y


def step(model, opt, x, y):
    loss = F.cross_entropy(model(x), y)
    opt.zero_grad()
    loss.backward()
    opt.step()


_MEMORY = textwrap.dedent(
    """
    import json, sys, torch
    sys.path.insert(0, "benchmarks")
    from bench_importance import setup, step
    import fxtaylor
    def rss(field):
        for line in open("/proc/self/status"):
            if line.startswith(field):
                return int(line.split()[1]) * 1024
    model, opt, x, y = setup()
    imp = fxtaylor.TaylorImportance(model, x[:1]) if sys.argv[1] == "observe" else None
    before = rss("VmRSS")
    if imp is None:
        step(model, opt, x, y); step(model, opt, x, y)
    else:
        with imp.observe():
            step(model, opt, x, y); step(model, opt, x, y)
    print(json.dumps(rss("VmHWM") - before))
    """
)


def peak_increment(variant):
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    out = subprocess.run([sys.executable, "-c", _MEMORY, variant], capture_output=True, text=True, check=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_observe_overhead_resnet50_step(benchmark):
    model, opt, x, y = setup()
    imp = fxtaylor.TaylorImportance(model, x[:1])

    def observed():
        with imp.observe():
            step(model, opt, x, y)

    benchmark.pedantic(observed, rounds=5, warmup_rounds=1)
    assert imp.examples > 0
    if benchmark.disabled:
        return
    ours, plain = interleaved_medians([observed, lambda: step(model, opt, x, y)], rounds=7)
    report(benchmark, "ratio_time_observe_vs_plain", ours / plain, 1.05)
    # median of three fresh processes each: a process's high-water mark varies by ~10 %
    peaks = {v: statistics.median(peak_increment(v) for _ in range(3)) for v in ("observe", "plain")}
    benchmark.extra_info["peak_step_memory_mib"] = {v: round(p / 2**20) for v, p in peaks.items()}
    report(benchmark, "ratio_peak_memory_observe_vs_plain", peaks["observe"] / peaks["plain"], 1.1)
