"""Preferred channel multiples, found by measuring rather than assumed.

Kernels process channels in blocks (oneDNN's AVX-512 convs in 16s, cuDNN's tensor cores in 8s
for float16...); when a count is not a multiple of the block, the last block is padded (a
staircase: 65 channels cost what 80 do) or a slower path runs (multiples are faster than
smaller counts). Which, and the block size, depends on device, dtype, layout and layer — so the
latency model sweeps one representative layer per class (k×k conv, 1×1 conv, depthwise conv,
linear, elementwise norm/activation/pool) over a window of consecutive counts and reads the
multiple off the curve:

1. Time t(c) for every c in the window, interleaved (two-count layers: the output count, the
   input count dense — the layer as it is, only its output group cut: a group is the output of
   one layer and the input of the next, so its preferred multiple is the one found here).
2. Remove the linear trend (least squares): residual r(c) = what c costs beyond its share.
3. A multiple m is *preferred* when counts divisible by m have lower residuals than the
   others by more than 3 standard errors of the noise and by ≥ 1.5 % of the time. The noise is
   the larger of the points' own spread and the scatter between neighbouring counts.
4. Start from the largest preferred m and halve it while the counts divisible by m/2 but not
   by m are still measurably cheaper than those not divisible by m/2 (a staircase of 16 makes
   every multiple of 16, 32, 64 cheap, but not the odd multiples of 8: the answer is 16).

No preferred multiple → 1: the device does not care, and the selection should not either.
"""
from __future__ import annotations

import math
import statistics
from typing import Callable

from .layers import LayerSpec

CANDIDATES = (2, 4, 8, 16, 32, 64)
MIN_GAIN = 0.015  # relative: smaller gains are below what a pruning step can measure


def align_class(spec: LayerSpec) -> str:
    """The class whose sweep decides this layer's alignment."""
    if spec.kind == "conv":
        if spec.config.get("groups") == "depthwise":
            return "conv_depthwise"
        # 1×1 convs are matrix multiplies and may take another kernel path than k×k ones
        return "conv1x1" if all(k == 1 for k in spec.config["kernel"]) else "conv"
    if spec.kind == "linear":
        return "linear"
    return "elementwise"


def window(spec: LayerSpec) -> list[int] | None:
    """Consecutive counts to sweep for ``spec`` (ending at a multiple of the span, within the
    dense count; the output count of two-count layers, whose input stays dense), or None if the
    layer is too narrow or grouped to show a multiple."""
    c0 = spec.cout0 if spec.counts == 2 else spec.cin0
    if spec.step != 1 or c0 < 64:
        return None
    span = 64 if c0 >= 128 else 32
    top = min(c0, max(2 * span, int(0.75 * c0) // span * span))
    return list(range(top - span, top + 1))


def detect(counts: list[int], ms: list[float], sigma: float) -> tuple[int, float]:
    """(preferred multiple, its relative gain) from a sweep ``ms`` over consecutive ``counts``
    with per-point noise ``sigma`` (ms, one standard deviation)."""
    n = len(counts)
    mx, my = statistics.fmean(counts), statistics.fmean(ms)
    sxx = sum((x - mx) ** 2 for x in counts) or 1.0
    slope = sum((x - mx) * (y - my) for x, y in zip(counts, ms)) / sxx
    r = {c: y - (my + slope * (c - mx)) for c, y in zip(counts, ms)}
    # The per-point spread misses noise that lasts longer than one point's blocks (a busy spell
    # of a shared machine covers several consecutive counts): also estimate it from neighbours'
    # differences (robust: a staircase jumps at only 1 in m of them) and take the larger.
    diffs = sorted(abs(ms[i + 1] - ms[i]) for i in range(n - 1))
    if diffs:
        sigma = max(sigma, statistics.median(diffs) / 0.6745 / math.sqrt(2))

    def gain(cheap: Callable[[int], bool], rest: Callable[[int], bool]) -> float:
        """Relative gain of counts ``cheap`` over counts ``rest`` if significant, else 0."""
        a = [r[c] for c in counts if cheap(c)]
        b = [r[c] for c in counts if rest(c)]
        if not a or len(b) < 2:
            return 0.0
        g = statistics.median(b) - statistics.median(a)
        se = 1.2533 * sigma * math.sqrt(1 / len(a) + 1 / len(b))  # s.e. of a difference of medians
        return g / my if g > 3 * se and g > MIN_GAIN * my else 0.0

    usable = [m for m in CANDIDATES if sum(1 for c in counts if c % m == 0) >= 2 and m < n]
    best = next((m for m in reversed(usable) if gain(lambda c, m=m: c % m == 0, lambda c, m=m: c % m != 0) > 0), 1)
    while best > 1 and best // 2 in usable:
        half = best // 2
        if gain(lambda c: c % half == 0 and c % best != 0, lambda c: c % half != 0) > 0:
            best = half
        else:
            break
    if best == 1:
        return 1, 0.0
    return best, gain(lambda c: c % best == 0, lambda c: c % best != 0)
