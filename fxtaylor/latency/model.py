"""The latency model: a model's latency predicted from each layer's channel counts.

    predicted = scale × Σ over modelled layers of isolated(cin, cout)  +  remainder_ms

``isolated``: the layer's table — the layer timed alone on the deployment's device at a grid of
channel counts, interpolated (:mod:`.table`, :mod:`.layers`). The whole dense model is also
timed; what it costs beyond the isolated layers' sum at dense counts — the measured remainder
R — is split: half of it rides on the layers (``scale = 1 + ½·R ÷ Σ isolated``), so it shrinks
as they do, and half stays constant (``remainder_ms = ½·R``). At the dense widths the
prediction is the measurement by construction.

What R holds: functional ops (residual adds, ``torch.cat``, flatten), modules called at several
shapes (torchvision ResNet's shared ReLU), dispatch and allocation overhead between modules,
and the in-network costs that isolation hides (a layer timed alone reuses the same hot buffers
call after call; inside the network each output is a fresh allocation, written once and read
by the next layer). Some of it follows the channels (the elementwise ops, the memory traffic),
some does not (per-op dispatch; on a GPU, kernel launches). Measured on 20 random cuts each of
ResNet-50 and MobileNetV2 at batch 1 on this repository's CPU, in four runs (docs/latency.md),
R was 21–46 % of the dense latency, and the half-and-half split had the smallest worst case of
the three splits compared: median error of the predicted speed-up 1.9–9.1 %, against
4.0–15.9 % with all of R following the layers and 4.1–17.9 % with all of R constant. Bias: a model pruned far below the widths
measured keeps half of R, which may be more or less than what it really keeps.

Cache (``fxtaylor.cache.cache_dir() / "latency" / <Deployment.key()>``, JSON, atomic writes):

- ``tables/<layer key>.json``: one layer configuration's grid of isolated times (shared by
  every model, and every module, with that configuration);
- ``models/<model key>.json``: a model's layer → table map, dense latency, alignment sweeps.
  ``<model key>`` hashes the module structure, the input shape and the layer list.

A full cache hit measures nothing. A file that cannot be read back is rebuilt, with a warning
naming it.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import statistics
import time
import warnings
from pathlib import Path
from typing import Iterable, Mapping

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from ..cache import cache_dir as default_cache_dir
from ..errors import FxTaylorError
from ..examples import check_model
from ..files import atomic_write
from . import alignment as align
from . import layers as layers_mod
from . import timing
from .deployment import Deployment
from .table import LayerTable, axis

FORMAT_TABLE = "fxtaylor-latency-table"
FORMAT_MODEL = "fxtaylor-latency-model"
VERSION = 2
POINT_S = 0.035  # seconds timed per grid point, over POINT_ROUNDS interleaved rounds of one short block
POINT_ROUNDS = 7  # many short rounds: a busy spell of the machine lands on every grid point alike
DENSE_S = 1.5  # seconds timed for the whole dense model: its noise is the scale's
DENSE_ROUNDS = 5
FOLLOWS = 0.5  # share of the remainder that shrinks with the layers (module doc: how it was chosen)


class LatencyModel:
    """Predicted latency of a model as a function of each layer's channel counts.

    ``layers``: modelled layer name → its :class:`LayerTable` (``cin0``/``cout0`` = dense
    counts; reading it gives the layer's in-network milliseconds: isolated × calls × scale).
    ``remainder_ms``: measured dense latency − Σ layers at dense counts: the constant half of
    the measured remainder (module doc). ``dense_ms``: measured dense latency (``dense`` holds
    its :class:`Timing`). ``isolated_ms``: Σ of the layers timed alone at dense counts (at the
    dense measurement's machine speed); ``scale``: the factor the layers carry for the other
    half of the remainder. ``build_s``: seconds spent
    building (0 for a full cache hit). ``skipped``: modules asked for but not modelled, with why.
    ``alignments``: per layer class, the sweep behind :meth:`alignment`. ``deployment``: the
    resolved deployment. ``path``: the model's cache file.
    """

    def __init__(self, layers: dict[str, LayerTable], remainder_ms: float, dense_ms: float, build_s: float,
                 deployment: Deployment, dense: timing.Timing | None = None, skipped: dict[str, str] | None = None,
                 alignments: dict[str, dict] | None = None, classes: dict[str, str] | None = None, path: Path | None = None,
                 isolated_ms: float = 0.0, scale: float = 1.0):
        self.layers = layers
        self.remainder_ms = remainder_ms
        self.dense_ms = dense_ms
        self.build_s = build_s
        self.deployment = deployment
        self.dense = dense
        self.skipped = skipped or {}
        self.alignments = alignments or {}
        self.classes = classes or {}
        self.path = path
        self.isolated_ms = isolated_ms
        self.scale = scale

    # -- reading -------------------------------------------------------------------------------

    def layer_ms(self, name: str, cin: int, cout: int) -> float:
        """Interpolated milliseconds of layer ``name`` at ``cin`` input and ``cout`` output
        channels, all its calls in one forward pass together. One-count layers (norm,
        activation, pool, depthwise conv) read ``cin``. KeyError for a name not modelled."""
        return self.layers[name](cin, cout)

    def predict(self, widths: Mapping[str, tuple[int, int]]) -> float:
        """Predicted latency (ms) with each modelled layer at ``widths[name]`` = (in, out)
        channels; layers not in ``widths`` at their dense counts; names not modelled ignored
        (their time is in the remainder)."""
        total = self.remainder_ms
        for name, t in self.layers.items():
            cin, cout = widths.get(name, (t.cin0, t.cout0))
            total += t(cin, cout)
        return total

    def alignment(self, name: str) -> int:
        """Preferred channel multiple of layer ``name``, from the measured sweep of its layer
        class (:mod:`.alignment`); 1 when no multiple was measurably faster or no sweep applies."""
        cls = self.classes.get(name)
        return int(self.alignments.get(cls, {}).get("multiple", 1)) if cls else 1

    def summary(self) -> str:
        n_tables = len({id(t.ms) for t in self.layers.values()})
        al = ", ".join(f"{k} {v['multiple']}" for k, v in sorted(self.alignments.items())) or "none swept"
        return (f"latency model: {len(self.layers)} layers ({n_tables} table configurations), dense {self.dense_ms:.3f} ms "
                f"(isolated layers {self.isolated_ms:.3f} ms, scale {self.scale:.2f}), alignment: {al}, built in {self.build_s:.1f} s")

    # -- building ------------------------------------------------------------------------------

    @classmethod
    def build(
        cls,
        model: nn.Module,
        example_input: torch.Tensor,
        deployment: Deployment,
        *,
        layers: Iterable[str] | None = None,
        cache_dir: Path | None = None,
        progress: bool = True,
    ) -> "LatencyModel":
        """Measure (or load from the cache) the latency model of ``model`` as ``deployment``
        runs it. ``example_input``: one batch of the model's input (its per-sample shape is
        used). ``layers``: names of the modules to model (e.g. ``graph.module_io()``'s); None:
        every leaf module of a modelled type. ``cache_dir``: default
        ``fxtaylor.cache.cache_dir() / "latency"``. ``model`` itself is not modified."""
        check_model(model)
        timing.check_deployment(deployment)
        example_input = timing.one_tensor(example_input)
        layers = layers_mod.layer_names(layers)
        if cache_dir is not None and not isinstance(cache_dir, (str, os.PathLike)):
            raise FxTaylorError(f"cache_dir must be a path (str or os.PathLike) or None, got {type(cache_dir).__name__}")
        start = time.perf_counter()
        dep = deployment.resolved(model)
        if cache_dir is None:
            cache_dir = default_cache_dir() / "latency"
        root = Path(cache_dir) / dep.key()
        prepared = timing.prepare(model, dep)
        x = timing.batch_like(example_input, dep)
        specs, skipped = layers_mod.find(prepared, x, layers)
        model_path = root / "models" / f"{_model_key(prepared, x, specs)}.json"

        tables: dict[str, LayerTable] = {}
        missing: dict[str, layers_mod.LayerSpec] = {}
        for s in specs:
            key = s.key()
            if key in tables or key in missing:
                continue
            t = _read(root / "tables" / f"{key}.json", FORMAT_TABLE, LayerTable.from_dict)
            if t is not None:
                tables[key] = t
            else:
                missing[key] = s
        saved = _read(model_path, FORMAT_MODEL, lambda d: d)
        if saved is not None and not missing and set(saved["layers"]) == {s.name for s in specs}:
            return cls._assemble(specs, tables, saved, dep, skipped, 0.0, model_path)

        points = sum(len(axis(s.cin0, s.step)) * (len(axis(s.cout0, s.step)) if s.counts == 2 else 1) for s in missing.values())
        with tqdm(total=points + 1, desc="latency tables", unit="point", disable=not progress) as bar:
            for key, s in missing.items():
                tables[key] = _measure_table(s, dep)
                _write(root / "tables" / f"{key}.json", {"format": FORMAT_TABLE, "version": VERSION, **tables[key].as_dict()})
                bar.update(len(tables[key].ins) * max(len(tables[key].outs), 1))
            bar.set_description("latency: dense model")
            # the dense model in the deployment's runtime, the reference in the tables' (they are rescaled by it)
            dense, ref = timing.time_calls([(prepared, x), _reference(dep)], dep, min_run_time=DENSE_S, rounds=DENSE_ROUNDS,
                                           runtimes=[dep.runtime, dep.for_tables().runtime])
            bar.update()
            alignments = _sweeps(specs, tables, dep, bar)
        saved = {
            "format": FORMAT_MODEL, "version": VERSION, "deployment": dep.as_dict(),
            "layers": {s.name: {"table": s.key(), "calls": s.calls, "class": align.align_class(s)} for s in specs},
            "skipped": skipped, "dense": dense.as_dict(), "ref_ms": ref.median_ms,
            "alignments": alignments, "build_s": time.perf_counter() - start,
        }
        _write(model_path, saved)
        return cls._assemble(specs, tables, saved, dep, skipped, saved["build_s"], model_path)

    @classmethod
    def load(cls, directory: str | Path, model: nn.Module, example_input: torch.Tensor, *,
             layers: Iterable[str] | None = None) -> "LatencyModel":
        """The latency model of ``model`` measured on another machine: ``directory`` is that
        machine's cache folder for the deployment (``<cache>/latency/<Deployment.key()>``, as
        :meth:`build` left it there), copied here. Nothing is measured and nothing needs the
        deployment's device: the saved model whose structure, input shape and layers match is
        assembled from its tables (``layers``: the modelled layer names to match; default: the
        saved model's own). ``deployment`` is the one it was measured for."""
        if not isinstance(directory, (str, os.PathLike)):
            raise FxTaylorError(f"directory must be a path (str or os.PathLike), got {type(directory).__name__}")
        root = Path(directory)
        if not root.is_dir():
            raise FxTaylorError(f"{root} is {'a file' if root.exists() else 'missing'}: pass the latency cache folder "
                                "<cache>/latency/<deployment key> copied from the machine that measured it")
        check_model(model)
        example_input = timing.one_tensor(example_input)
        layers = layers_mod.layer_names(layers)
        for f in sorted((root / "models").glob("*.json")):
            saved = _read(f, FORMAT_MODEL, lambda d: d)
            if saved is None:
                continue
            d = saved["deployment"]
            shapes = Deployment(device="cpu", batch_size=d["batch_size"])  # structure and shapes only
            prepared = timing.prepare(model, shapes)
            x = timing.batch_like(example_input.cpu().float(), shapes)
            # the saved layer list (default) reproduces the saved specs exactly when the model matches
            specs, skipped = layers_mod.find(prepared, x, layers if layers is not None else set(saved["layers"]))
            if f.stem != _model_key(prepared, x, specs):
                continue
            tables = {s.key(): _read(root / "tables" / f"{s.key()}.json", FORMAT_TABLE, LayerTable.from_dict) for s in specs}
            lost = [k for k, t in tables.items() if t is None]
            if lost:
                raise FxTaylorError(f"{root}: {len(lost)} latency table(s) of this model are missing or unreadable (tables/{lost[0]}.json)")
            fields = {k: d[k] for k in ("device", "batch_size", "dtype", "memory_format", "threads")}
            fields["runtime"] = d.get("runtime", "eager")  # tables saved before runtimes were eager
            return cls._assemble(specs, tables, saved, Deployment(**fields), skipped, 0.0, f)
        raise FxTaylorError(f"{root} holds no latency model of this architecture and input size: build it on the "
                            "deployment's machine (fxtaylor prune --target-latency ... there, or LatencyModel.build) "
                            "and copy its cache folder <cache>/latency/<deployment key>")

    @classmethod
    def _assemble(cls, specs, tables, saved, dep, skipped, build_s, path) -> "LatencyModel":
        dense = timing.Timing(**saved["dense"])
        ref = float(saved["ref_ms"])
        # each table at the machine speed of the dense measurement (see _reference)
        speed = {k: ref / t.ref_ms if ref > 0 and t.ref_ms > 0 else 1.0 for k, t in tables.items()}
        isolated = sum(tables[s.key()].isolated(tables[s.key()].cin0, tables[s.key()].cout0) * s.calls * speed[s.key()] for s in specs)
        # the remainder's share that follows the layers rides on them as a factor; the rest
        # stays as remainder_ms (module doc)
        scale = 1 + FOLLOWS * (dense.median_ms - isolated) / isolated if isolated > 0 else 1.0
        by_name = {s.name: dataclasses.replace(tables[s.key()], calls=s.calls, scale=scale * speed[s.key()]) for s in specs}
        remainder = dense.median_ms - sum(t(t.cin0, t.cout0) for t in by_name.values())
        classes = {n: v["class"] for n, v in saved["layers"].items()}
        return cls(by_name, remainder, dense.median_ms, build_s, dep, dense, skipped, saved.get("alignments", {}), classes,
                   path, isolated, scale)


def _reference(dep: Deployment) -> tuple[nn.Module, torch.Tensor]:
    """The reference op timed alongside every table and the dense model: a fixed 3×3 conv
    (64 → 64 channels, 28×28, the deployment's batch). A shared machine's speed changes over
    seconds — longer than one table takes — so a table timed in a busy spell is slow as a whole,
    which no median over its rounds can see; the reference, timed in the same rounds, is slow
    with it, and tables are rescaled by (reference with the dense model ÷ reference with the
    table) when the model is assembled."""
    return _ready(nn.Conv2d(64, 64, 3, padding=1), dep), _input((dep.batch_size, 64, 28, 28), dep)


def _measure_table(spec: layers_mod.LayerSpec, dep: Deployment) -> LayerTable:
    """Time ``spec`` at every grid point and the reference op, all interleaved in each round."""
    ins = axis(spec.cin0, spec.step)
    outs = axis(spec.cout0, spec.step) if spec.counts == 2 else []
    grid = [(i, o) for i in ins for o in (outs or [i])]
    calls = []
    for cin, cout in grid:
        m, shape = spec.build(cin, cout)
        calls.append((_ready(m, dep), _input(shape, dep)))
    calls.append(_reference(dep))
    *got, ref = timing.time_calls(calls, dep.for_tables(), min_run_time=POINT_S, rounds=POINT_ROUNDS)
    width = max(len(outs), 1)
    ms = [[got[r * width + c].median_ms for c in range(width)] for r in range(len(ins))]
    spread = statistics.median(timing.noise(t) for t in got)
    return LayerTable(spec.kind, spec.cin0, spec.cout0, ins, outs, ms, 1, spec.config, spread, ref_ms=ref.median_ms)


def _ready(m: nn.Module, dep: Deployment) -> nn.Module:
    m.eval()
    for p in m.parameters():
        p.requires_grad_(False)
    fmt = dep.torch_memory_format if any(p.dim() == 4 for p in m.parameters()) else torch.contiguous_format
    return m.to(dep.torch_device, dep.torch_dtype, memory_format=fmt) if fmt is not torch.contiguous_format else m.to(dep.torch_device, dep.torch_dtype)


def _input(shape: tuple[int, ...], dep: Deployment) -> torch.Tensor:
    x = torch.randn(shape, device=dep.torch_device).to(dep.torch_dtype)
    return x.contiguous(memory_format=dep.torch_memory_format) if x.dim() == 4 else x


def _sweeps(specs, tables, dep: Deployment, bar) -> dict[str, dict]:
    """One alignment sweep per layer class: the class's most expensive layer that is wide
    enough to show a multiple (:func:`alignment.window`). Swept twice, one pass after the other:
    a multiple counts only if both passes find it — on a shared machine a busy spell over a few
    consecutive counts can pass for a step once, rarely twice at the same place."""
    best: dict[str, tuple[float, layers_mod.LayerSpec]] = {}
    for s in specs:
        if align.window(s) is None:
            continue
        cost = tables[s.key()].dense_ms * s.calls
        c = align.align_class(s)
        if c not in best or cost > best[c][0]:
            best[c] = (cost, s)
    out = {}
    for c, (_, s) in sorted(best.items()):
        counts = align.window(s)
        bar.total += 2 * len(counts)
        bar.set_description(f"latency: alignment sweep ({c})")
        calls = []
        for n in counts:
            m, shape = s.build(s.cin0 if s.counts == 2 else n, n)
            calls.append((_ready(m, dep), _input(shape, dep)))
        passes = []
        for _ in range(2):
            got = timing.time_calls(calls, dep.for_tables(), min_run_time=POINT_S, rounds=POINT_ROUNDS)
            bar.update(len(counts))
            ms = [t.median_ms for t in got]
            sigma = statistics.median(t.iqr_ms for t in got) / 1.349
            passes.append((ms, sigma, *align.detect(counts, ms, sigma)))
        (ms, sigma, m1, gain), (ms2, _, m2, gain2) = passes
        agreed = m1 if m1 == m2 else 1
        out[c] = {"multiple": agreed, "gain": min(gain, gain2) if agreed > 1 else 0.0, "passes": [m1, m2], "layer": s.name,
                  "counts": counts, "ms": [ms, ms2], "sigma_ms": sigma}
    return out


def _model_key(prepared: nn.Module, x: torch.Tensor, specs) -> str:
    blob = json.dumps({"structure": repr(prepared), "input": list(x.shape), "layers": [(s.name, s.key(), s.calls) for s in specs]})
    return hashlib.sha1(blob.encode()).hexdigest()[:16]


def _read(path: Path, fmt: str, parse):
    """The parsed content of cache file ``path``; None if absent. A file that exists but cannot
    be read back (truncated, edited, another version) is reported and treated as absent."""
    if not path.is_file():
        return None
    try:
        d = json.loads(path.read_text())
        if d.get("format") != fmt or d.get("version") != VERSION:
            raise ValueError(f"not a {fmt} version {VERSION} file")
        out = parse(d)
        if fmt == FORMAT_MODEL:
            timing.Timing(**d["dense"])
            float(d["ref_ms"])
            for v in d["layers"].values():  # every entry _assemble reads
                str(v["table"]), int(v["calls"]), str(v["class"])
        return out
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        warnings.warn(f"latency cache file {path} is corrupt ({type(e).__name__}: {e}); rebuilding it", stacklevel=3)
        return None


def _write(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, json.dumps(obj, indent=1, allow_nan=False).encode())
