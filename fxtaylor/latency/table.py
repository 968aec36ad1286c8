"""A layer's latency at a grid of channel counts, and the interpolation between grid points.

Grid: on each variable side, the counts {step, ¼, ½, ¾, 1} × the dense count, rounded to the
layer's step (a grouped conv's group count) — 5 points a side, so 25 for a conv with both sides
variable, 5 for one-count layers. Why so few: a conv's work is ``a·cin·cout + b·cin + c·cout + d``
(MACs plus per-channel memory traffic), and bilinear interpolation reproduces any such function
exactly, so the grid only has to catch departures from it (kernel tiles, cache sizes); more
points buy accuracy that the noise of a shared machine does not let us see (docs/latency.md).
Outside the grid (counts above the dense ones are never asked for by pruning) values are
extrapolated linearly from the last cell.
"""
from __future__ import annotations

import bisect
from dataclasses import dataclass, field

FRACTIONS = (0.25, 0.5, 0.75, 1.0)


def axis(n0: int, step: int = 1) -> list[int]:
    """Grid counts for a side whose dense count is ``n0``: the smallest legal count and the
    ``FRACTIONS`` of ``n0``, rounded to multiples of ``step`` (distinct, ascending)."""
    pts = {step} | {max(step, round(n0 * f / step) * step) for f in FRACTIONS}
    return sorted(p for p in pts if p <= n0) or [n0]


@dataclass
class LayerTable:
    """Measured latency (ms per forward pass of the layer, summed over its calls) of one layer
    configuration at a grid of channel counts.

    ``ins`` × ``outs``: grid counts (``outs`` empty for one-count layers). ``ms[i][j]``: time at
    (``ins[i]``, ``outs[j]``); one-count layers: ``ms[i][0]``. ``cin0``/``cout0``: dense counts.
    ``kind``/``config``: what was measured (see :mod:`fxtaylor.latency.layers`). ``spread``:
    median relative IQR of the grid measurements (noise). ``ref_ms``: the reference op timed
    with the grid (:mod:`.model`: the machine's speed then). ``ms`` is one isolated call; the
    value read (:meth:`__call__`) is that times ``calls`` (the module's calls in one forward
    pass) times ``scale`` (the latency model's in-network factor, :mod:`.model`).
    """

    kind: str
    cin0: int
    cout0: int
    ins: list[int]
    outs: list[int]
    ms: list[list[float]]
    calls: int = 1
    config: dict = field(default_factory=dict)
    spread: float = 0.0
    scale: float = 1.0
    ref_ms: float = 0.0

    @property
    def counts(self) -> int:
        return 2 if self.outs else 1

    def __call__(self, cin: int, cout: int) -> float:
        """Interpolated milliseconds at (cin, cout), times ``calls`` and ``scale``; one-count
        layers read ``cin``."""
        return self.isolated(cin, cout) * self.calls * self.scale

    def isolated(self, cin: int, cout: int) -> float:
        """Interpolated milliseconds of one isolated call at (cin, cout)."""
        if not self.outs:
            return max(_lerp(self.ins, [r[0] for r in self.ms], cin), 0.0)
        i, u = _cell(self.ins, cin)
        j, v = _cell(self.outs, cout)
        m = self.ms
        if len(self.ins) == 1 and len(self.outs) == 1:
            return m[0][0]
        if len(self.ins) == 1:
            return max(_lerp(self.outs, m[0], cout), 0.0)
        if len(self.outs) == 1:
            return max(_lerp(self.ins, [r[0] for r in m], cin), 0.0)
        val = (m[i][j] * (1 - u) * (1 - v) + m[i + 1][j] * u * (1 - v) + m[i][j + 1] * (1 - u) * v + m[i + 1][j + 1] * u * v)
        return max(val, 0.0)

    @property
    def dense_ms(self) -> float:
        return self(self.cin0, self.cout0)

    def as_dict(self) -> dict:
        return {"kind": self.kind, "cin0": self.cin0, "cout0": self.cout0, "ins": self.ins, "outs": self.outs,
                "ms": self.ms, "calls": self.calls, "config": self.config, "spread": self.spread, "scale": self.scale, "ref_ms": self.ref_ms}

    @classmethod
    def from_dict(cls, d: dict) -> "LayerTable":
        t = cls(kind=str(d["kind"]), cin0=int(d["cin0"]), cout0=int(d["cout0"]), ins=[int(v) for v in d["ins"]],
                outs=[int(v) for v in d["outs"]], ms=[[float(v) for v in row] for row in d["ms"]],
                calls=int(d.get("calls", 1)), config=dict(d.get("config", {})), spread=float(d.get("spread", 0.0)),
                scale=float(d.get("scale", 1.0)), ref_ms=float(d.get("ref_ms", 0.0)))
        if len(t.ms) != len(t.ins) or any(len(r) != max(len(t.outs), 1) for r in t.ms):
            raise ValueError("table shape does not match its grid")
        return t


def _cell(xs: list[int], x: float) -> tuple[int, float]:
    """Index i of the grid cell [xs[i], xs[i+1]] holding x (the first/last cell beyond the
    ends: linear extrapolation) and x's position u in it (0 at xs[i], 1 at xs[i+1])."""
    if len(xs) == 1:
        return 0, 0.0
    i = min(max(bisect.bisect_right(xs, x) - 1, 0), len(xs) - 2)
    return i, (x - xs[i]) / (xs[i + 1] - xs[i])


def _lerp(xs: list[int], ys: list[float], x: float) -> float:
    if len(xs) == 1:
        return ys[0]
    i, u = _cell(xs, x)
    return ys[i] * (1 - u) + ys[i + 1] * u
