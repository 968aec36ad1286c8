"""Peak activation memory: the liveness count (fxtaylor.memory.estimate) against a real
measurement (CPU: torch.profiler's allocator events; CUDA: max_memory_allocated), per model and
batch size, in the deployment's default layout (channels-last).

    OMP_NUM_THREADS=1 python benchmarks/memory_accuracy.py --batch 1 8 --out benchmarks/results/memory_accuracy.json

Columns: ``estimate`` (activations PyTorch allocates: what MemoryCost counts on CPU),
``+onednn`` (plus oneDNN's per-call conv weight copies, an upper bound), ``measured``, and
``estimate / measured``. docs/memory.md shows the table.
"""
from __future__ import annotations

import argparse
import json
import platform
import time

import torch
import torchvision

from fxtaylor import memory

MODELS = ["resnet18", "resnet50", "mobilenet_v2", "mobilenet_v3_large", "efficientnet_b0", "densenet121",
          "shufflenet_v2_x1_0"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=MODELS)
    ap.add_argument("--batch", nargs="+", type=int, default=[1, 8])
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--contiguous", action="store_true", help="NCHW instead of channels-last")
    ap.add_argument("--out", help="write the rows as JSON here")
    a = ap.parse_args()
    fmt = torch.contiguous_format if a.contiguous else torch.channels_last
    rows = []
    print(f"{'model':22} {'batch':>5} {'estimate':>10} {'+onednn':>10} {'measured':>10} {'est/meas':>8} {'est s':>6}")
    for name in a.models:
        m = getattr(torchvision.models, name)(weights=None).eval().to(a.device)
        x = torch.randn(1, 3, a.size, a.size, device=a.device)
        for b in a.batch:
            t = time.perf_counter()
            est = memory.estimate(m, x, batch_size=b, memory_format=fmt)
            secs = time.perf_counter() - t
            upper = memory.estimate(m, x, batch_size=b, memory_format=fmt, onednn=True).peak
            got = memory.measure(m, x, batch_size=b, memory_format=fmt)
            f = memory.format_bytes
            print(f"{name:22} {b:>5} {f(est.peak):>10} {f(upper):>10} {f(got):>10} {est.peak / got:>8.4f} {secs:>6.2f}", flush=True)
            rows.append({"model": name, "batch": b, "size": a.size, "estimate_bytes": est.peak, "onednn_bytes": upper,
                         "measured_bytes": got, "ratio": est.peak / got, "onednn_ratio": upper / got, "estimate_s": secs})
    if a.out:
        meta = {"device": a.device, "memory_format": "contiguous" if a.contiguous else "channels_last",
                "torch": torch.__version__, "torchvision": torchvision.__version__, "cpu": platform.processor() or platform.machine(),
                "threads": torch.get_num_threads(),
                "method": "cuda max_memory_allocated" if a.device.startswith("cuda") else "torch.profiler allocator events"}
        with open(a.out, "w") as fh:
            json.dump({"meta": meta, "rows": rows}, fh, indent=1)


if __name__ == "__main__":
    main()
