"""Coverage of the torchvision zoo: every model pruned end to end, fxtaylor beside torch-pruning.

fxtaylor with the Taylor criterion, torch-pruning with GroupMagnitudeImportance(p=2).

    python benchmarks/zoo.py --doc docs/zoo.md            # the 80 classification models
    python benchmarks/zoo.py --family detection segmentation video optical_flow --doc docs/zoo.md
    python benchmarks/zoo.py --all --doc docs/zoo.md      # all 109 torchvision models
    python benchmarks/zoo.py --timm --doc docs/zoo.md     # one model per timm module (needs `pip install timm`)
    python benchmarks/zoo.py --select-timm               # rewrite that list: benchmarks/timm_models.json
    python benchmarks/zoo.py --models NAME ... [--size N] [--tools fxtaylor tp]

What differs between families (the model, its example inputs, its training loss, the output
layers torch-pruning is told to keep, what the dead-channel test compares) is one ``Family``
each in ``FAMILIES``; ``fxtaylor_row`` and ``tp_row`` take it. Per model and tool, each in a
child process (a crash, a hang or a memory blow-up costs one row, which says where it was):

- fxtaylor traces the channel graph (in parts where torch.fx cannot trace the model whole),
  runs the dead-channel test on random prunable groups (one per region for detection,
  segmentation and optical flow), observes the Taylor criterion on a few random batches with
  the family's loss, cuts to 70 % of the FLOPs (the output layers are frozen groups, so they
  are kept) and checks the forward pass, the output structure and the FLOPs band.
- torch-pruning builds its dependency graph, runs the same dead-channel test on random groups
  of those its pruner ranks, and prunes globally in small iterative steps until its own FLOPs
  count is at or below 70 %.

Rows: groups, prunable channels, frozen groups and why, FLOPs and params before and after,
seconds, peak memory of the child (VmHWM) and memory beyond the built model while tracing and
pruning (the 4 GB budget), status and reason. Rows are kept in a JSON file next to ``--doc``, so
an interrupted run resumes where it stopped (``--redo`` recomputes).
"""
from __future__ import annotations

import argparse
import collections
import json
import multiprocessing as mp
import queue
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from sections import replace_section

TARGET = 0.7
BUDGET_MIB = 4096  # memory beyond the built model, to trace and prune
ROOT = Path(__file__).resolve().parents[1]
TIMM_MODELS = ROOT / "benchmarks" / "timm_models.json"  # the timm selection (``--select-timm`` writes it)


def timm_selection(path: Path = TIMM_MODELS) -> dict:
    """The checked-in timm selection: module -> {model, params, cnn, size, img_size, ...}."""
    return json.loads(path.read_text())["modules"] if path.exists() else {}


TIMM = [e["model"] for e in timm_selection().values()]  # one model per timm module (``--timm``)


# -- what differs between families: the model, its inputs, its training loss, its heads ---------


def _logits(out):
    """The class scores of an output: the tensor, segmentation's ``out``, or the ``logits`` of
    GoogLeNet's and Inception-v3's train-mode (logits, aux_logits...) named tuple."""
    if isinstance(out, tuple) and "logits" in getattr(out, "_fields", ()):
        return out.logits
    return out["out"] if isinstance(out, dict) else out


def _classifier_head(model, ref) -> list:
    """torch-pruning's ``ignored_layers`` for a classifier: the conv/linear layers with one output
    per class (a linear, or a conv: SqueezeNet, S3D, segmentation heads, timm's DLA)."""
    from torch import nn

    classes = _logits(ref).shape[1]
    return [m for m in model.modules() if (isinstance(m, nn.Linear) and m.out_features == classes)
            or (isinstance(m, nn.modules.conv._ConvNd) and m.out_channels == classes)]


def _named_head(pattern: str):
    """torch-pruning's ``ignored_layers``: the modules whose qualified name matches ``pattern``."""
    import re

    return lambda model, ref: [m for n, m in model.named_modules() if re.search(pattern, n)]


def _cross_entropy(model, args, ref):
    import torch
    import torch.nn.functional as F

    out = model(*args)
    y = torch.randint(0, _logits(ref).shape[1], _logits(out).shape[:1] + _logits(out).shape[2:])
    loss = F.cross_entropy(_logits(out), y)
    if isinstance(out, dict) and "aux" in out:  # torchvision's segmentation recipe: aux weight 0.5
        loss = loss + 0.5 * F.cross_entropy(out["aux"], y)
    if isinstance(out, tuple) and "logits" in getattr(out, "_fields", ()):  # GoogLeNet's aux weight 0.3
        loss = loss + 0.3 * sum(F.cross_entropy(a, y) for f, a in zip(out._fields, out) if f.startswith("aux") and a is not None)
    return loss


def _train_mode(model, x, fam) -> str | None:
    """Why the pruned classifier does not run in train mode (an auxiliary head reading a pruned
    tensor), or None. Batch 2: batch norm after global pooling needs more than one value."""
    import torch

    if fam.name != "classification":
        return None
    model.train()
    try:
        with torch.no_grad():
            model(torch.cat([x[0], x[0]]))
    except Exception as e:
        return f"the pruned model fails in train mode: {type(e).__name__}: {str(e)[:150]}"
    finally:
        model.eval()
    return None


def _detection_target(model, image):
    """Three random boxes (x1, y1, x2, y2) of class 1 in ``image``; masks for Mask R-CNN,
    keypoints inside the boxes for Keypoint R-CNN."""
    import torch

    h, w = image.shape[-2:]
    xy = torch.rand(3, 2) * torch.tensor([w / 2, h / 2])
    wh = (0.2 + 0.3 * torch.rand(3, 2)) * torch.tensor([w, h])
    boxes = torch.cat([xy, xy + wh], 1)
    t = {"boxes": boxes, "labels": torch.ones(3, dtype=torch.int64)}
    heads = getattr(model, "roi_heads", None)
    if getattr(heads, "mask_predictor", None) is not None:
        t["masks"] = (torch.rand(3, h, w) > 0.5).to(torch.uint8)
    if getattr(heads, "keypoint_predictor", None) is not None:
        k = heads.keypoint_predictor.kps_score_lowres.out_channels
        pts = boxes[:, None, :2] + torch.rand(3, k, 2) * wh[:, None]
        t["keypoints"] = torch.cat([pts, torch.ones(3, k, 1)], 2)
    return t


def _detection_loss(model, args, ref):
    """Train mode: the model takes (images, targets) and returns its losses; their sum."""
    images = args[0]
    return sum(model(images, [_detection_target(model, im) for im in images]).values())


def _flow_loss(model, args, ref, gamma: float = 0.8):
    """RAFT's sequence loss: L1 to the target flow of each of the N predictions, weighted γ^(N-1-i)."""
    import torch

    preds = model(*args)
    target = torch.randn_like(preds[-1])
    return sum(gamma ** (len(preds) - 1 - i) * (p - target).abs().mean() for i, p in enumerate(preds))


def _timm_entry(name: str) -> dict:
    """The selection's entry of a timm model (``timm/<name>``), or {} if it is not selected."""
    name = name[len("timm/"):] if name.startswith("timm/") else name
    return next((e for e in timm_selection().values() if e["model"] == name), {})


def _build_classification(name: str, size: int):
    import torchvision

    if name.startswith("timm/"):
        import timm

        # fixed-size transformers: img_size where the selection found the default size fails
        kw = {"img_size": size} if _timm_entry(name).get("img_size") else {}
        return timm.create_model(name[len("timm/"):], pretrained=False, **kw)
    # aux heads on: they run in train mode only (the pruned model must run in both, _train_mode)
    kw = {"aux_logits": True, "init_weights": True} if name in ("googlenet", "inception_v3") else {}
    return torchvision.models.get_model(name, weights=None, **kw)


# -- the timm selection: one model per timm architecture module ------------------------------


CNN_SHARE = 0.5  # a model is a CNN if nn.Conv2d layers do at least this share of its FLOPs


def _meta_profile(model, size: int) -> dict:
    """One forward pass of ``model`` (built on the meta device: no memory, no arithmetic) on a
    1x3x``size``x``size`` input: its total FLOPs (``torch.utils.flop_counter``: convolutions,
    matmuls, attention) and the share done by ``nn.Conv2d`` modules (subclasses included: timm's
    ``Conv2dSame``, ``StdConv2d``)."""
    import torch
    from torch import nn
    from torch.utils.flop_counter import FlopCounterMode

    conv = [0]

    def hook(m, a, out):
        k = m.weight.shape[1] * m.weight.shape[2] * m.weight.shape[3]  # in/groups x kh x kw
        conv[0] += 2 * out.numel() * k

    hooks = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.Conv2d)]
    model.requires_grad_(False)  # no_grad with parameters that want grads trips the flop counter's module tracker
    try:
        with FlopCounterMode(display=False) as fc:
            model.eval()(torch.empty(1, 3, size, size, device="meta"))
    finally:
        for h in hooks:
            h.remove()
    total = fc.get_total_flops()
    return {"gflops": round(total / 1e9, 3), "conv2d_share": round(min(conv[0] / total, 1.0), 3) if total else 0.0}


def meta_build(name: str, **kw):
    import timm
    import torch

    with torch.device("meta"):
        return timm.create_model(name, pretrained=False, **kw)


def _err_line(e: Exception) -> str:
    return f"{type(e).__name__}: {str(e).splitlines()[0][:150] if str(e) else ''}"


def select_timm(modules: list[str] | None = None, log=print) -> dict:
    """One model per timm architecture module (``timm.list_modules()``): the smallest by parameter
    count among ``timm.list_models(module=M)`` (built on the meta device; timm's ``test_*``
    models, tiny unit-test configs, are left out; names that fail to build are listed under
    ``skipped``). For the chosen model: the input size (224 if a meta forward pass at 224 works,
    else 224 through ``img_size=224`` where the model takes that argument, else its default
    size), its FLOPs at that size, and whether it is a CNN: ``nn.Conv2d`` does at least
    ``CNN_SHARE`` of its FLOPs (FLOPs of the meta forward pass, ``torch.utils.flop_counter``)."""
    import timm

    out = {}
    for mod in modules or timm.list_modules():
        names = [n for n in timm.list_models(module=mod) if not n.startswith("test_")]
        params, skipped = {}, {}
        for n in names:
            try:
                params[n] = sum(p.numel() for p in meta_build(n).parameters())
            except Exception as e:  # noqa: BLE001 - a name that does not build is reported
                skipped[n] = _err_line(e)
        if not params:
            out[mod] = {"model": None, "models": len(names), "skipped": skipped}
            log(f"{mod}: nothing builds ({len(skipped)} skipped)")
            continue
        best = min(params, key=lambda n: (params[n], n))
        model = meta_build(best)
        default = int(model.pretrained_cfg.get("input_size", (3, 224, 224))[-1])
        entry = {"model": best, "params": params[best], "models": len(names), "default_size": default}
        tries = [(224, False)] + ([(224, True), (default, False)] if default != 224 else [])
        errors = []
        for size, img_size in tries:
            try:
                prof = _meta_profile(meta_build(best, img_size=size) if img_size else model, size)
            except Exception as e:  # noqa: BLE001
                errors.append(f"{size}{' (img_size)' if img_size else ''}: {_err_line(e)}")
                continue
            entry.update(size=size, img_size=img_size, **prof, cnn=prof["conv2d_share"] >= CNN_SHARE)
            break
        else:
            entry.update(size=default, img_size=False, cnn=None)
        if errors:
            entry["meta_forward"] = errors
        if skipped:
            entry["skipped"] = skipped
        out[mod] = entry
        log(f"{mod}: {best} {params[best] / 1e6:.2f} M, {entry['size']} px, conv2d share {entry.get('conv2d_share')}"
            f"{f', {len(skipped)} skipped' if skipped else ''}")
    return out


def write_timm_selection(path: Path = TIMM_MODELS, log=print) -> dict:
    import timm
    import torch

    modules = select_timm(log=log)
    path.write_text(json.dumps({
        "timm": timm.__version__, "torch": torch.__version__.split("+")[0],
        "criterion": f"per timm module, the model with the fewest parameters (test_* models left out); "
                     f"cnn: nn.Conv2d does >= {CNN_SHARE:.0%} of the FLOPs of a forward pass at 'size' "
                     f"(meta device, torch.utils.flop_counter)",
        "modules": modules}, indent=1) + "\n")
    return modules


def _build_detection(name: str, size: int):
    """Images are resized by the model's transform: to ``size`` (short side) for the R-CNNs,
    RetinaNet and FCOS (torchvision's default is 800); SSD's own transform has a fixed size."""
    import torchvision

    kw = {} if name.startswith("ssd") else {"min_size": size, "max_size": size * 5 // 4}
    return torchvision.models.get_model(name, weights=None, weights_backbone=None, **kw)


def _build_segmentation(name: str, size: int):
    import torchvision

    kw = {} if name.startswith("lraspp") else {"aux_loss": True}  # the aux head is trained and pruned too
    return torchvision.models.get_model(name, weights=None, weights_backbone=None, **kw)


def _build(name: str, size: int):
    import torchvision

    return torchvision.models.get_model(name, weights=None)


def _image(name: str, size: int, n: int) -> tuple:
    import torch

    s = max(size, 299) if name == "inception_v3" and size >= 224 else size
    return (torch.randn(n, 3, s, s),)


# video: clips of 16 frames (4 below 112 px); MViT takes 16x224x224 only, S3D's last pooling
# needs 224 px
def _clip(name: str, size: int, n: int) -> tuple:
    import torch

    t, s = (16, 224) if name.startswith("mvit") else (16 if size >= 112 else 4, max(size, 224) if name == "s3d" else size)
    return (torch.randn(n, 3, t, s, s),)


def _images(name: str, size: int, n: int) -> tuple:
    import torch

    return ([torch.rand(3, size, size * 5 // 4) for _ in range(n)],)


def _frame_pair(name: str, size: int, n: int) -> tuple:
    import torch

    return (torch.rand(n, 3, size, size) * 2 - 1, torch.rand(n, 3, size, size) * 2 - 1)


@dataclass(frozen=True)
class Family:
    """What differs between torchvision's model families; ``fxtaylor_row`` and ``tp_row`` take one.

    ``inputs(name, size, n)``: the model's positional arguments for ``n`` random examples (``n=1``:
    the example inputs of the trace and the checks); ``loss(model, args, ref)``: the training loss of
    a batch in train mode (``ref``: the eval output, for the class count); ``head(model, ref)``: the
    output layers torch-pruning is told to keep (``ignored_layers``; fxtaylor finds them itself);
    ``probes``: modules whose outputs the dead-channel test compares besides the model's output;
    ``region(name)``: the dead-channel test takes one random group per region (of the group's first
    producer) — ``None``: one random group in all; ``dead_dtype``: the test's precision (detection:
    float64, because top-k and NMS turn float32 rounding into other proposals)."""

    name: str
    size: int
    build: Callable
    inputs: Callable
    loss: Callable
    head: Callable = _classifier_head
    probes: tuple = ()
    region: Callable | None = None
    batch_size: int = 4
    dead_dtype: str = "float32"  # the dead-channel test's precision
    timeout: dict = field(default_factory=dict)  # tool -> seconds, where it differs from --timeout

    def models(self) -> list[str]:
        import torchvision

        mod = torchvision.models if self.name == "classification" else getattr(torchvision.models, self.name)
        return torchvision.models.list_models(module=mod)


def _first(k: int):
    return lambda name: ".".join(name.split(".")[:k])


FAMILIES = {f.name: f for f in [
    Family("classification", 224, _build_classification, _image, _cross_entropy),
    Family("detection", 320, _build_detection, _images, _detection_loss,
           head=_named_head(r"(cls_logits|bbox_pred|cls_score|bbox_reg|bbox_ctrness|mask_fcn_logits|kps_score_lowres)$"
                            r"|head\.(classification|regression)_head\.module_list\.\d+$"),
           # the heads' raw outputs (their channels are anchors, classes, boxes: never pruned; the
           # backbone's are, so it is not one): FCOS and RetinaNet-v2 detect nothing at random init
           probes=("rpn.head", "roi_heads.box_predictor", "roi_heads.mask_predictor", "roi_heads.keypoint_predictor", "head"),
           region=_first(2), batch_size=2, dead_dtype="float64",
           timeout={"fxtaylor": 420, "tp": 420}),  # Mask R-CNN v2: ~300 s (float64 checks of 1000 proposals)
    Family("segmentation", 224, _build_segmentation, _image, _cross_entropy, region=_first(1), batch_size=2),
    Family("video", 112, _build, _clip, _cross_entropy, batch_size=2),
    Family("optical_flow", 128, _build, _frame_pair, _flow_loss,
           head=_named_head(r"flow_head\.conv2$|mask_predictor\.conv$"), region=_first(1), batch_size=2),
]}


def family_of(name: str) -> Family:
    import torchvision

    if not name.startswith("timm/"):
        for fam in FAMILIES.values():
            if fam.name != "classification" and name in fam.models():
                return fam
        torchvision.models.get_model_builder(name)  # an unknown name fails here, naming itself
    return FAMILIES["classification"]


class Memory:
    """Resident memory of this process: now, the peak since the last ``reset()`` (Linux:
    /proc/self/status VmHWM, reset through /proc/self/clear_refs), and the highest peak."""

    highest = 0.0

    @staticmethod
    def _status(key: str) -> float:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
        return 0.0

    def now(self) -> float:
        return self._status("VmRSS")

    def peak(self) -> float:
        return self._status("VmHWM")

    def highest_peak(self) -> float:
        return max(Memory.highest, self.peak())

    def reset(self) -> None:
        Memory.highest = max(Memory.highest, self.peak())
        try:
            Path("/proc/self/clear_refs").write_text("5")
        except OSError:  # not Linux, or not allowed: the peak then covers the whole process
            pass


_FROZEN_LABELS = [
    ("reaches the model output", "classifier output"),
    ("combined with a tensor that carries no prunable channels", "added to a frozen tensor"),
    ("reshapes channels to a fixed size", "fixed-size reshape"),
    ("layer norm over channels", "layer norm over channels"),
    ("layer norm over a fixed channel count", "layer norm over channels"),
    ("layer norm over these channels", "layer norm over channels"),
    ("weight standardised over its input channels", "weight standardisation"),
    ("a statistic over channels", "statistic over channels"),
    ("softmax over channels", "softmax over channels"),
    ("GroupNorm with one group", "GroupNorm with one group"),
    ("group reads channels that cannot be pruned", "reads frozen channels"),
    ("channels broadcast or mixed", "mixed with other dims"),
    ("selects channels by a fixed index", "fixed channel index"),
    ("fixed-size split", "fixed-size split"),
    ("GroupNorm", "GroupNorm"),
    ("LocalResponseNorm", "LocalResponseNorm"),
    ("multi-dim channel factor", "multi-dim channel factor"),
    ("transposed conv", "transposed conv"),
    ("mixes channels along dim", "mixes channels"),
]


def frozen_summary(groups, output: str = "classifier output") -> str:
    """Why groups are frozen, by kind: '12 added to a frozen tensor, 1 classifier output'. An op
    in the glue code of a partially traced model: 'split in untraced rpn'."""
    import re

    kinds = collections.Counter(_frozen_label(g.frozen[0], output) for g in groups if g.frozen)
    return ", ".join(f"{n} {k}" for k, n in kinds.most_common())


def _frozen_label(reason: str, output: str = "classifier output", width: int = 40) -> str:
    """The kind of a group's (first) frozen reason, as ``frozen_summary`` names it."""
    import re

    glue = re.search(r"(\w+) in (\S+) \(not traced", reason)
    label = f"{glue[1]} in untraced {glue[2]}" if glue else next((lab for key, lab in _FROZEN_LABELS if key in reason), None)
    label = output if label == "classifier output" else label
    if label is None:
        label = "no rule for " + reason.split("no channel rule for ")[1].split(";")[0] if "no channel rule for" in reason else reason[:width]
    return label


def frozen_reasons(groups, model=None, output: str = "classifier output") -> dict[str, int]:
    """Frozen groups by the op or layer that froze them and the kind of reason, from each group's
    first reason: {'LayerNorm: layer norm over channels': 4, 'add: added to a frozen tensor': 3,
    'output: classifier output': 1}. A module is named by its class (``model``), a function or
    method by its name; an op without a rule: 'X: no channel rule'."""
    import re

    kinds = collections.Counter()
    for g in groups:
        if not g.frozen:
            continue
        reason = g.frozen[0]
        if reason.startswith("reaches the model output"):
            op, kind = "output", _frozen_label(reason, output)
        elif m := re.match(r"no channel rule for (\S+)( in \S+ \(not traced)?", reason):
            op, kind = m[1], "no channel rule" + (" (untraced code)" if m[2] else "")
        elif m := re.match(r"opaque leaf module \S+ \((\w+)\)", reason):
            op, kind = m[1], "opaque leaf module"
        else:
            head, what = reason.split(": ", 1) if ": " in reason else ("?", reason)
            if " (not traced" in head:  # an op of the glue code of a partially traced model
                op, kind = head.split(" in ")[0], _frozen_label(what, output, 80) + " (untraced code)"
            else:
                op, kind = head, _frozen_label(what, output, 80)
                try:
                    op = type(model.get_submodule(op)).__name__ if model is not None and op != "?" else op
                except AttributeError:  # a function or method, named as it is
                    pass
        kinds[f"{op}: {kind}"] += 1
    return dict(kinds.most_common())


# -- the checks both tools get ---------------------------------------------------------------

PROGRESS = None  # the child's queue: where a row is, for the timeout message


def phase(what: str) -> None:
    """Tell the parent what this child is doing now (a timeout row then says where it hung)."""
    if PROGRESS is not None:
        PROGRESS.put(what)


def shapes(x) -> str:
    """A row's input: '1×3×16×112×112'; several tensors joined by ' + ' (RAFT's two frames)."""
    ts = [t for t in (x if isinstance(x, (list, tuple)) else [x]) for t in (t if isinstance(t, list) else [t])]
    one = "×".join(map(str, ts[0].shape))
    return one if len(ts) == 1 else " + ".join("×".join(map(str, t.shape)) for t in ts)


def structure(out):
    """An output's structure: keys, list lengths, tensor ranks and every dim but the first (the
    batch, or the number of detections, which may change after pruning live channels)."""
    import torch

    if isinstance(out, torch.Tensor):
        return f"T{tuple(out.shape[1:])}"
    if isinstance(out, dict):
        return {k: structure(v) for k, v in out.items()}
    if isinstance(out, (list, tuple)):
        return [structure(v) for v in out]
    return type(out).__name__


def _flat(out) -> list:
    import torch

    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        return [t for v in out.values() for t in _flat(v)]
    if isinstance(out, (list, tuple)):
        return [t for v in out for t in _flat(v)]
    return []


def _probe(model, x, probes) -> list:
    """The model's output, then the outputs of the ``probes`` modules it has (first call each)."""
    import torch

    seen, hooks = {}, []
    for name in probes:
        try:
            mod = model.get_submodule(name)
        except AttributeError:
            continue
        if mod is not None:
            hooks.append(mod.register_forward_hook(lambda m, a, o, name=name: seen.setdefault(name, o)))
    try:
        with torch.no_grad():
            out = model(*x)
    finally:
        for h in hooks:
            h.remove()
    return [out] + [seen[n] for n in probes if n in seen]


def _cast(x, dtype):
    import torch

    if isinstance(x, torch.Tensor):
        return x.to(dtype) if x.is_floating_point() else x
    return type(x)(_cast(v, dtype) for v in x) if isinstance(x, (list, tuple)) else x


def dead_channel_test(model, x, kill, handle, channels, probes=(), dtype: str = "float32"):
    """On a deep copy in ``dtype``: ``kill(copy, x, handle, channels)`` zeroes the channels at every
    source and returns the function that prunes them; the output (and the ``probes`` modules'
    outputs) must not move: same structure, same box counts, max |difference| / max(1, max
    |tensor|) over the tensors within the bar of that dtype (``tp_compare.TOL``: 1e-5 in float32,
    1e-9 in float64). ``Dead.rel`` is that relative difference."""
    import copy
    import math

    import torch
    from tp_compare import TOL, Dead, error_line

    dtype = getattr(torch, dtype)
    tol, x = TOL[dtype], _cast(x, dtype)
    m = copy.deepcopy(model).eval().to(dtype)
    try:
        prune = kill(m, x, handle, list(channels))
        before = _probe(m, x, probes)
        prune()
    except Exception as e:  # noqa: BLE001 - a wrong group may break the model
        return Dead(math.inf, False, "before pruning finished: " + error_line(e), 1.0, tol)
    try:
        after = _probe(m, x, probes)
    except Exception as e:  # noqa: BLE001
        return Dead(math.inf, False, error_line(e), 1.0, tol)
    b, a = _flat(before), _flat(after)
    if len(b) != len(a) or any(u.shape != v.shape for u, v in zip(b, a)):
        return Dead(math.inf, False, None, 1.0, tol)
    rel = max((float((u.double() - v.double()).abs().max()) / max(1.0, float(u.abs().max()))
               for u, v in zip(b, a) if u.numel() and u.is_floating_point()), default=0.0)
    return Dead(rel, True, None, 1.0, tol)


def fx_kill(m, x, index, channels):
    import fxtaylor
    from fxtaylor.graph.check import kill_channels

    graph = fxtaylor.trace(m, x)
    group = graph.groups[index]
    kill_channels(m, group, channels)
    return lambda: graph.prune(group, channels)


def _tp_kill(m, x, root, channels):
    import torch_pruning as tp
    from tp_compare import tp_kill

    DG = tp.DependencyGraph().build_dependency(m, example_inputs=x)
    mod = m.get_submodule(root)
    group = DG.get_pruning_group(mod, DG.get_pruner_of_module(mod).prune_out_channels, channels)
    tp_kill(m, DG, group)
    return group.prune


def dead_channel_tests(model, x, fam: Family, kill, candidates: list) -> tuple[dict, str | None]:
    """The dead-channel test on one random group of ``candidates`` (``(where, handle, width,
    prunable)``: a module path, the group's handle for ``kill``, its width, its prunable channels),
    or one per region where the family has regions; a quarter of each group's channels. Returns
    the row's fields and the reason of the first failure."""
    import gc

    import torch

    by: dict = collections.defaultdict(list)
    for c in candidates:
        by[fam.region(c[0]) if fam.region else ""].append(c)
    picked = [v[int(torch.randint(len(v), ()))] for _, v in sorted(by.items())]
    worst = 0.0
    for where, handle, width, free in picked:
        phase(f"dead-channel test on the group of {where}")
        chans = torch.randperm(width)[:max(1, min(free, width // 4))].tolist()
        dead = dead_channel_test(model, x, kill, handle, chans, fam.probes, fam.dead_dtype)
        gc.collect()
        if not dead.passed:
            return {"dead_channel_rel": dead.rel, "dead_groups": len(picked)}, f"dead-channel test on the group of {where}: {dead}"[:200]
        worst = max(worst, dead.rel)
    return {"dead_channel_rel": worst, "dead_groups": len(picked), "dead_regions": sorted(by)[:12] if fam.region else []}, None


def fxtaylor_row(name: str, size: int | None = None, batches: int = 2, batch_size: int | None = None, seed: int = 0,
                 family: Family | None = None) -> dict:
    import torch

    import fxtaylor
    from fxtaylor.pruner.select import cut

    sys.path.insert(0, str(ROOT / "tests"))
    fam = family or family_of(name)
    size = size or _timm_entry(name).get("size") or fam.size
    torch.manual_seed(seed)
    mem = Memory()
    t0 = time.perf_counter()
    model = fam.build(name, size).eval()
    x = fam.inputs(name, size, 1)
    built = mem.now()
    mem.reset()
    phase("tracing")
    imp = fxtaylor.TaylorImportance(model, x)
    overhead = mem.peak() - built
    groups = imp.graph.groups
    prunable = imp.graph.prunable_groups
    row = {"family": fam.name, "input": shapes(x), "groups": len(groups), "prunable_groups": len(prunable),
           "prunable_channels": sum(g.num_prunable for g in prunable),
           "frozen_groups": sum(1 for g in groups if g.frozen),
           "frozen": frozen_summary(groups, "classifier output" if fam.name in ("classification", "video") else "model output"),
           "frozen_reasons": frozen_reasons(groups, model, "classifier output" if fam.name in ("classification", "video") else "model output")}
    partial = getattr(imp.graph, "partial", None)
    if partial is not None:
        row["untraced"] = sorted(p or "<root>" for p in partial.untraced)
    model.eval()
    with torch.no_grad():
        ref = model(*x)
    # dead-channel test on random prunable groups, before anything is cut
    dead, failed = dead_channel_tests(model, x, fam, fx_kill, [(g.members[0].name, g.index, g.size, g.num_prunable) for g in prunable])
    row.update(dead)
    if failed:
        return {**row, "status": "fail", "reason": failed, "seconds": round(time.perf_counter() - t0, 1)}
    model.train()
    mem.reset()
    before_observe = mem.now()
    phase("observing the criterion")
    with imp.observe():
        for _ in range(batches):
            model.zero_grad()
            fam.loss(model, fam.inputs(name, size, batch_size or fam.batch_size), ref).backward()
    row["observe_mib"] = round(mem.peak() - before_observe)
    model.zero_grad(set_to_none=True)
    f0, p0 = imp.total_flops(), sum(p.numel() for p in model.parameters())
    row.update(flops_before=f0, params_before=p0)
    if not prunable:
        return {**row, "status": "frozen", "reason": "no prunable group", "seconds": round(time.perf_counter() - t0, 1),
                "overhead_mib": round(overhead)}
    mem.reset()
    base = mem.now()
    phase("cutting")
    cut(imp, TARGET * f0)
    overhead = max(overhead, mem.peak() - base)
    f1 = imp.total_flops()
    model.eval()
    phase("checks")
    with torch.no_grad():
        out = model(*x)
    row.update(flops_after=f1, params_after=sum(p.numel() for p in model.parameters()),
               seconds=round(time.perf_counter() - t0, 1), overhead_mib=round(overhead))
    broken = _train_mode(model, x, fam)
    if broken:
        return {**row, "status": "fail", "reason": broken}
    return _verdict(row, out, ref, f1 / f0)


def _verdict(row: dict, out, ref, ratio: float | None) -> dict:
    """Output structure, FLOPs within 1 % of the target (``ratio`` None: not asked), memory budget."""
    if structure(out) != structure(ref):
        return {**row, "status": "fail", "reason": f"output structure {structure(out)}, expected {structure(ref)}"[:200]}
    if ratio is not None and not TARGET * 0.99 <= ratio <= TARGET * 1.01:
        return {**row, "status": "fail", "reason": f"FLOPs {ratio:.3f} of the original, target {TARGET}"}
    if row["overhead_mib"] > BUDGET_MIB:
        return {**row, "status": "fail", "reason": f"{row['overhead_mib']} MiB beyond the model to trace and prune"}
    return {**row, "status": "pass", "reason": ""}


def tp_row(name: str, size: int | None = None, seed: int = 0, max_steps: int = 50, family: Family | None = None) -> dict:
    import torch
    import torch_pruning as tp

    sys.path.insert(0, str(ROOT / "tests"))
    fam = family or family_of(name)
    size = size or _timm_entry(name).get("size") or fam.size
    torch.manual_seed(seed)
    mem = Memory()
    t0 = time.perf_counter()
    model = fam.build(name, size).eval()
    x = fam.inputs(name, size, 1)
    with torch.no_grad():
        ref = model(*x)
    head = fam.head(model, ref)
    phase("counting FLOPs")
    f0, p0 = tp.utils.count_ops_and_params(model, x)
    built = mem.now()
    mem.reset()
    phase("building the dependency graph")
    pruner = tp.pruner.BasePruner(model, x, importance=tp.importance.GroupMagnitudeImportance(p=2), global_pruning=True,
                                  pruning_ratio=0.9, iterative_steps=max_steps, ignored_layers=head)
    groups = []
    phase("listing groups (get_all_groups): none listed yet")
    for g in pruner.DG.get_all_groups(ignored_layers=pruner.ignored_layers, root_module_types=pruner.root_module_types):
        groups.append(g)
        phase(f"listing groups (get_all_groups): {len(groups)} listed")
    overhead = mem.peak() - built
    row = {"family": fam.name, "input": shapes(x), "groups": len(groups), "flops_before": int(f0), "params_before": int(p0)}
    # the same dead-channel test as fxtaylor's, on random groups tp would prune
    names = {m: k for k, m in model.named_modules()}
    dead, failed = dead_channel_tests(model, x, fam, _tp_kill,
                                      [(names[g[0].dep.target.module], names[g[0].dep.target.module], len(g[0].idxs), len(g[0].idxs) - 1)
                                       for g in groups])
    row.update(dead)
    if failed:
        return {**row, "status": "fail", "reason": failed, "seconds": round(time.perf_counter() - t0, 1), "overhead_mib": round(overhead)}
    mem.reset()
    base = mem.now()
    f1 = f0
    for step in range(max_steps):
        if f1 <= TARGET * f0:
            break
        phase(f"pruning step {step + 1} (FLOPs {f1 / f0:.3f} of the original)")
        pruner.step()
        f1, _ = tp.utils.count_ops_and_params(model, x)
    overhead = max(overhead, mem.peak() - base)
    phase("checks")
    with torch.no_grad():
        out = model(*x)
    row.update(flops_after=int(f1), params_after=int(sum(p.numel() for p in model.parameters())),
               seconds=round(time.perf_counter() - t0, 1), overhead_mib=round(overhead))
    if f1 > TARGET * f0:
        return {**row, "status": "fail", "reason": f"stopped at {f1 / f0:.3f} of the FLOPs"}
    broken = _train_mode(model, x, fam)
    if broken:
        return {**row, "status": "fail", "reason": broken}
    # torch-pruning steps by channel ratio, not to a FLOPs target: its last step may overshoot
    return _verdict({**row, "flops_ratio": f1 / f0}, out, ref, None)


def _child(fn_name: str, name: str, size: int | None, queue) -> None:
    global PROGRESS
    PROGRESS = queue
    try:
        row = globals()[fn_name](name, size)
    except Exception as e:  # noqa: BLE001 - every failure becomes a row
        row = {"status": "fail", "reason": f"{type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}",
               "trace": traceback.format_exc(limit=-5)}
    row["peak_mib"] = round(Memory().highest_peak())
    queue.put(row)


def rss_mib(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def isolated(fn_name: str, name: str, size: int | None, timeout: float, max_rss_mib: float = 12288) -> dict:
    """One model in a fresh process: its peak memory is its own, a hang, a crash or a memory
    blow-up (resident memory above ``max_rss_mib``, checked every 0.5 s) is a row, which says
    what the child was doing then (its last ``phase``)."""
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_child, args=(fn_name, name, size, q))
    p.start()
    t0, why, got = time.monotonic(), None, {}

    def drain(wait: float = 0.0) -> None:
        while "row" not in got:
            try:
                item = q.get(timeout=wait) if wait else q.get_nowait()
            except queue.Empty:
                return
            got["row" if isinstance(item, dict) else "phase"] = item

    while p.is_alive() and why is None:
        p.join(0.5)
        drain()
        if time.monotonic() - t0 > timeout:
            why = f"did not finish in {timeout:.0f} s"
        elif rss_mib(p.pid) > max_rss_mib:
            why = f"over {max_rss_mib / 1024:.0f} GiB resident after {time.monotonic() - t0:.0f} s"
    if why is not None:
        p.kill()
        p.join()
        return {"status": "fail", "reason": why + (f" ({got['phase']})" if "phase" in got else "")}
    drain(wait=2.0)
    if "row" in got:
        return got["row"]
    why = "killed (SIGKILL: out of memory)" if p.exitcode == -9 else f"process died (exit {p.exitcode})"
    return {"status": "fail", "reason": why + (f" ({got['phase']})" if "phase" in got else "")}


TOOLS = {"fxtaylor": "fxtaylor_row", "tp": "tp_row"}


def _status(r: dict | None) -> str:
    if r is None:
        return "not run"
    return r["status"] + (f": {r['reason']}" if r.get("reason") else "")


def markdown(rows: dict, inputs: bool = False) -> str:
    """The table; ``inputs``: with a column for each row's example input (non-classification)."""
    def gf(v):
        return "–" if v is None else f"{v / 1e9:.2f}"

    def mp_(v):
        return "–" if v is None else f"{v / 1e6:.1f}"

    def cells(r: dict | None) -> list[str]:
        r = r or {}
        return [f"{gf(r.get('flops_before'))} → {gf(r.get('flops_after'))}", f"{mp_(r.get('params_before'))} → {mp_(r.get('params_after'))}",
                str(r.get("seconds", "–")), f"{r.get('peak_mib', '–')} / {r.get('overhead_mib', '–')}", _status(r or None)]

    lines = [
        "| model " + ("| input " if inputs else "") + "| groups (prunable) | prunable ch. | frozen groups | fxtaylor GFLOPs | params M | s "
        "| peak / extra MiB | status | tp GFLOPs | params M | s | peak / extra MiB | status |",
        "|---" * (15 if inputs else 14) + "|",
    ]
    for name, r in rows.items():
        ours = r.get("fxtaylor") or {}
        shape = f" {ours.get('input') or (r.get('tp') or {}).get('input', '–')} |" if inputs else ""
        lines.append(f"| {name} |{shape} {ours.get('groups', '–')} ({ours.get('prunable_groups', '–')}) | {ours.get('prunable_channels', '–')} | "
                     f"{ours.get('frozen', '–')} | " + " | ".join(cells(r.get("fxtaylor")) + cells(r.get("tp"))) + " |")
    return "\n".join(lines)


def _parts_frozen(row: dict) -> bool:
    """Frozen groups other than the output layers (the class count, boxes, flow channels)."""
    return any(not k.endswith(("classifier output", "model output")) for k in filter(None, row.get("frozen", "").split(", ")))


def counts(rows: dict) -> dict:
    """pass / frozen / fail per tool; a fxtaylor pass of a classifier with frozen groups other
    than the classifier output counts as 'pass, parts frozen' (attention models). Not split for
    the other families: their output layers freeze under many reasons (the glue ops reading
    them), which the table's column shows."""
    out = {}
    for tool in TOOLS:
        c = collections.Counter()
        for r in rows.values():
            row = r.get(tool)
            if row is None:
                continue
            kind = row["status"]
            if tool == "fxtaylor" and kind == "pass" and row.get("family", "classification") == "classification" and _parts_frozen(row):
                kind = "pass, parts frozen"
            c[kind] += 1
        order = ["pass", "pass, parts frozen", "frozen", "fail"]
        out[tool] = dict(sorted(c.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else len(order)))
    return out


def _section(doc: Path, family: str, rows: dict, names: list[str]) -> None:
    """Rewrite the family's table in ``doc`` from every stored row of its models (a run of some
    models refreshes their rows and keeps the others)."""
    shown = {n: rows[n] for n in names if n in rows}
    if not shown:
        return
    total = sum(r.get("seconds", 0) for row in shown.values() for r in row.values())
    what = {"classification": "torchvision", "timm": "timm"}.get(family, f"torchvision {family.replace('_', '-')}")
    if family in ("classification", "timm"):
        size = next((r["fxtaylor"]["input"].split("×")[-1] for r in shown.values() if r.get("fxtaylor", {}).get("input")), "224")
        command = f"python benchmarks/zoo.py{' --timm' if family == 'timm' else ''} --size {size} --doc {doc}"
        inputs = f"{size} px"
    else:
        command = f"python benchmarks/zoo.py --family {family} --doc {doc}"
        inputs = "inputs as in the table"
    counted = "; ".join(f"{'torch-pruning' if tool == 'tp' else tool}: " + ", ".join(f"{n} {k}" for k, n in c.items())
                        for tool, c in counts(shown).items())
    replace_section(doc, "zoo-torchvision" if family == "classification" else f"zoo-{family}",
                    f"Generated by `{command}` ({len(shown)} {what} models, {inputs}, target 70 % of the FLOPs; "
                    f"{f'{total / 60:.0f} min' if total >= 60 else f'{total:.0f} s'} summed over the rows that finished, on a 2-core CPU).\n\n"
                    f"Counts: {counted}.\n\n" + markdown(shown, inputs=family not in ("classification", "timm")),
                    title="# The model zoo, pruned end to end")


def timm_names(selection: dict | None = None) -> list[str]:
    """The rows of ``--timm``: ``timm/<model>`` of each selected module (modules in order)."""
    selection = timm_selection() if selection is None else selection
    return ["timm/" + e["model"] for _, e in sorted(selection.items()) if e.get("model")]


def _reached(row: dict | None) -> str | None:
    """None if the row reached the FLOPs target (status pass: within 1 % of 0.7, output intact,
    dead-channel test passed), else why not."""
    if row is None:
        return "not run"
    if row["status"] == "pass":
        return None
    return row.get("reason") or row["status"]


def _row_freezing(row: dict) -> dict[str, int]:
    """A fxtaylor row's frozen groups by op and kind: its ``frozen_reasons``, or, for rows stored
    before that field, the kinds of its ``frozen`` summary ('?' for the op)."""
    if "frozen_reasons" in row:
        return row["frozen_reasons"]
    out = {}
    for part in filter(None, row.get("frozen", "").split(", ")):
        n, kind = part.split(" ", 1)
        out[f"?: {kind}"] = int(n)
    return out


def timm_aggregate(rows: dict, selection: dict | None = None) -> dict:
    """Over the timm rows (``timm/<model>`` -> {tool: row}): what freezes channels in fxtaylor's
    graphs — per 'op: kind', the number of models, of CNN models and of groups — and, per
    module, whether fxtaylor reached the FLOPs target (``reached``: module -> None or why not)."""
    selection = timm_selection() if selection is None else selection
    module_of = {"timm/" + e["model"]: (m, e) for m, e in selection.items() if e.get("model")}
    freezing: dict = collections.defaultdict(lambda: {"models": 0, "cnn_models": 0, "groups": 0})
    reached, cnn = {}, {}
    for name, r in rows.items():
        if name not in module_of:
            continue
        mod, entry = module_of[name]
        cnn[mod] = entry.get("cnn")
        row = r.get("fxtaylor")
        reached[mod] = _reached(row)
        for key, n in _row_freezing(row or {}).items():
            freezing[key]["models"] += 1
            freezing[key]["cnn_models"] += bool(entry.get("cnn"))
            freezing[key]["groups"] += n
    freezing = dict(sorted(freezing.items(), key=lambda kv: (-kv[1]["models"], -kv[1]["groups"], kv[0])))
    return {"freezing": freezing, "reached": reached, "cnn": cnn,
            "cnn_not_reached": {m: why for m, why in reached.items() if cnn[m] and why is not None}}


def _timm_section(doc: Path, rows: dict, selection: dict) -> None:
    """The timm section of ``doc``: counts, the table, what freezes channels, the CNN modules
    that did not reach the target."""
    names = [n for n in timm_names(selection) if n in rows]
    if not names:
        return
    shown = {n: rows[n] for n in names}
    module_of = {"timm/" + e["model"]: (m, e) for m, e in selection.items() if e.get("model")}
    agg = timm_aggregate(shown, selection)
    total = sum(r.get("seconds", 0) for row in shown.values() for r in row.values())
    n_cnn = sum(1 for e in selection.values() if e.get("cnn"))
    built = sum(1 for e in selection.values() if e.get("model"))
    c = counts(shown)
    c_cnn = counts({n: r for n, r in shown.items() if module_of[n][1].get("cnn")})
    kinds = ["pass", "pass, parts frozen", "frozen", "fail"]
    ran = {t: sum(1 for r in shown.values() if t in r) for t in TOOLS}
    lines = [f"Generated by `python benchmarks/zoo.py --timm --doc {doc}` ({len(shown)} of the {built} timm models of "
             f"`benchmarks/timm_models.json`: one per timm module, the smallest; {n_cnn} modules are CNNs; inputs as in "
             f"the table, target 70 % of the FLOPs; {f'{total / 60:.0f} min' if total >= 60 else f'{total:.0f} s'} summed "
             f"over the rows that finished, on a 2-core CPU).", "",
             "| status | fxtaylor | torch-pruning | fxtaylor, CNN modules | torch-pruning, CNN modules |", "|---|---|---|---|---|"]
    for k in kinds:
        lines.append(f"| {k} | {c['fxtaylor'].get(k, 0)} | {c['tp'].get(k, 0)} | {c_cnn['fxtaylor'].get(k, 0)} | {c_cnn['tp'].get(k, 0)} |")
    lines.append(f"| rows | {ran['fxtaylor']} | {ran['tp']} | {sum(1 for n, r in shown.items() if 'fxtaylor' in r and module_of[n][1].get('cnn'))} "
                 f"| {sum(1 for n, r in shown.items() if 'tp' in r and module_of[n][1].get('cnn'))} |")
    reached_cnn = sum(1 for m, why in agg["reached"].items() if agg["cnn"][m] and why is None)
    lines += ["", f"fxtaylor reached 0.7 of the FLOPs (status pass) on {sum(1 for w in agg['reached'].values() if w is None)} "
              f"of {len(agg['reached'])} models, {reached_cnn} of {sum(1 for m in agg['reached'] if agg['cnn'][m])} CNN modules.",
              "", "What freezes channels in fxtaylor's graphs (each frozen group counted once, by its first reason: "
              "the op or layer class, and the kind of reason):", "",
              "| op: kind | models | CNN models | groups |", "|---|---|---|---|"]
    lines += [f"| {k} | {v['models']} | {v['cnn_models']} | {v['groups']} |" for k, v in agg["freezing"].items()]
    lines += ["", "CNN modules where fxtaylor did not reach 0.7:", ""]
    for m, why in sorted(agg["cnn_not_reached"].items()):
        frozen = (rows.get("timm/" + selection[m]["model"], {}).get("fxtaylor") or {}).get("frozen")
        lines.append(f"- {m} (`{selection[m]['model']}`): {why}" + (f" (frozen groups: {frozen})" if frozen else ""))
    if not agg["cnn_not_reached"]:
        lines.append("- none")
    table = {f"{n} ({module_of[n][0]}{', CNN' if module_of[n][1].get('cnn') else ''})": r for n, r in shown.items()}
    lines += ["", markdown(table, inputs=True)]
    replace_section(doc, "zoo-timm", "\n".join(lines), title="# The model zoo, pruned end to end")


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", help="default: every torchvision classification model")
    p.add_argument("--family", nargs="+", choices=list(FAMILIES), help="every torchvision model of these families")
    p.add_argument("--all", action="store_true", help="every torchvision model of every family (109)")
    p.add_argument("--timm", action="store_true", help="the timm selection instead: one model per timm module "
                   "(benchmarks/timm_models.json; needs timm)")
    p.add_argument("--select-timm", action="store_true", help="rewrite benchmarks/timm_models.json from the installed timm")
    p.add_argument("--tools", nargs="+", choices=list(TOOLS), default=list(TOOLS))
    p.add_argument("--size", type=int, default=None, help="input side (default per family: "
                   + ", ".join(f"{f.name} {f.size}" for f in FAMILIES.values()) + ")")
    p.add_argument("--timeout", type=float, default=None, help="seconds per model and tool [300; detection 420]")
    p.add_argument("--max-rss-gib", type=float, default=12, help="kill a child above this resident memory [12]")
    p.add_argument("--doc", default=None, help="write the tables here (docs/zoo.md); rows are kept in its .json")
    p.add_argument("--redo", action="store_true", help="recompute rows already in the .json")
    args = p.parse_args(argv)
    if args.select_timm:
        return write_timm_selection()
    families = list(FAMILIES) if args.all else args.family or []
    if args.models:
        names = args.models
    elif args.timm:
        names = timm_names()
    else:
        names = [n for f in families or ["classification"] for n in FAMILIES[f].models()]
    store = Path(args.doc).with_suffix(".json") if args.doc else None
    rows = json.loads(store.read_text()) if store and store.exists() else {}
    if store:
        store.parent.mkdir(parents=True, exist_ok=True)
    for name in names:
        r = rows.setdefault(name, {})
        fam = family_of(name)
        for tool in args.tools:
            if tool in r and not args.redo:
                continue
            timeout = args.timeout or fam.timeout.get(tool, 300)
            r[tool] = isolated(TOOLS[tool], name, args.size, timeout, args.max_rss_gib * 1024)
            print(f"{name} {tool}: {_status(r[tool])} ({r[tool].get('seconds', '–')} s, {r[tool].get('peak_mib', '–')} MiB)", flush=True)
            if store:
                tmp = store.with_suffix(".tmp")
                tmp.write_text(json.dumps(rows, indent=1, default=str))
                tmp.replace(store)
    shown = {n: rows[n] for n in names}
    if args.doc:
        touched = {"timm" if n.startswith("timm/") else family_of(n).name for n in names}
        for family in touched:
            if family == "timm":
                _timm_section(Path(args.doc), rows, timm_selection())
            else:
                _section(Path(args.doc), family, rows, FAMILIES[family].models())
    else:
        json.dump(shown, sys.stdout, indent=1, default=str)
    return shown


if __name__ == "__main__":
    main()
