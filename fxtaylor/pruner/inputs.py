"""Checking what the user passed before anything is modified: one-line errors."""
from __future__ import annotations

import collections.abc
import itertools
import math
import warnings
from typing import Any, Callable, Iterable

import torch
import torch.nn as nn

from .. import examples
from ..devices import device_of
from ..errors import FxTaylorError, describe as describe_error
from ..graph import selection


def check(schedule, val_loader, evaluate, ckpt_dir, resume) -> None:
    """What the dataclasses cannot check alone (they check their own fields)."""
    if schedule.min_accuracy is not None and val_loader is None and evaluate is None:
        raise FxTaylorError("min_accuracy needs val_loader or evaluate to measure accuracy")
    if resume and ckpt_dir is None:
        raise FxTaylorError("resume=True needs the checkpoint_dir of the interrupted run")


def check_arguments(model: nn.Module, *, optimizer: Any, seed: Any, arch: Any, **functions: Any) -> None:
    """Arguments that would otherwise fail mid-run (an arch record read at the end, a seed at
    the first resume) or silently (an optimizer over another model's parameters trains nothing)."""
    from .. import models

    for name, f in functions.items():
        if f is not None and not callable(f):
            raise FxTaylorError(f"{name} must be a function, got {type(f).__name__}")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise FxTaylorError(f"seed must be an integer or None, got {seed!r}")
    if arch is not None and not (isinstance(arch, dict) and arch.get("kind") in models.KINDS):
        raise FxTaylorError(f"arch must be an arch record, a dict whose 'kind' is one of {', '.join(models.KINDS)} "
                            f"(fxtaylor.models), got {arch!r:.80}")
    if optimizer is not None:
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise FxTaylorError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
        own = {id(p) for p in model.parameters()}
        foreign = sum(id(p) not in own for g in optimizer.param_groups for p in g["params"])
        if foreign:
            raise FxTaylorError(f"the optimizer holds {foreign} parameter(s) that are not the model's: build it on the "
                                "parameters of the model you prune (model.parameters())")


def reiterable(loader: Any, what: str) -> None:
    """``loader`` is read again every epoch (a validation loader at every evaluation): a one-shot
    iterator (a generator, ``iter(...)``, ``map(...)``) would run dry after its first pass — and
    the run would stop there, with the model already trained and pruned."""
    if isinstance(loader, collections.abc.Iterator):
        raise FxTaylorError(
            f"{what} is a one-shot iterator ({type(loader).__name__}): it is read again every epoch, so pass "
            "something that can be iterated many times (a DataLoader, a list of batches, or an object whose "
            "__iter__ returns a fresh iterator)")
    if not (hasattr(type(loader), "__iter__") or hasattr(type(loader), "__getitem__")):
        raise FxTaylorError(f"{what} must be an iterable of batches (a DataLoader, a list, ...), got {type(loader).__name__}")


def check_model(model: nn.Module) -> None:
    """The model is materialised, on one device, with finite weights."""
    examples.check_model(model)  # an nn.Module, no lazy or meta weights
    devices = sorted({str(t.device) for t in itertools.chain(model.parameters(), model.buffers())})
    if len(devices) > 1:
        raise FxTaylorError(f"the model is spread over several devices ({', '.join(devices)}): fxtaylor prunes a model "
                            "on one device; move it there first (model.to(device))")
    bad = next((n for n, p in model.named_parameters() if p.is_floating_point() and not bool(torch.isfinite(p).all())), None)
    if bad is not None:
        raise FxTaylorError(f"the model's weights hold NaN or inf (first: {bad}): load finite weights before pruning")


def first_batch(loader: Iterable, custom: bool = False) -> tuple[torch.Tensor, Any]:
    """The first batch as (inputs, labels). ``custom``: a ``train_step`` reads the batch, so
    only its inputs (a tensor, or the first item of a tuple/list) must be found."""
    try:
        batch = next(iter(loader))
    except StopIteration:
        raise FxTaylorError("the training loader yields no batches") from None
    except Exception as e:  # a corrupt file, a dataset that raises: one line, the cause kept for --debug
        raise FxTaylorError(f"the training loader failed on its first batch: {describe_error(e)}") from e
    if custom:
        x = batch if isinstance(batch, torch.Tensor) else batch[0] if isinstance(batch, (tuple, list)) and batch else None
        if not isinstance(x, torch.Tensor) or x.dim() == 0 or x.shape[0] == 0:
            raise FxTaylorError(f"the training loader's batches must be a tensor or start with the input tensor; got {describe(batch)}")
        return x, None
    if not (isinstance(batch, (tuple, list)) and len(batch) >= 2 and all(isinstance(b, torch.Tensor) for b in batch[:2])):
        raise FxTaylorError(f"the training loader must yield (inputs, labels) tensor pairs; got {describe(batch)}")
    if batch[0].dim() == 0 or batch[0].shape[0] == 0:
        raise FxTaylorError("the training loader yields empty batches")
    return batch[0], batch[1]


def example(model: nn.Module, example_inputs: Any, what: str = "example_inputs", graph: Any = None) -> examples.Args:
    """``example_inputs`` as the model's arguments, decided and checked by running the model on
    them once (:func:`fxtaylor.examples.resolve`: ``model(*inputs)``, else ``model(inputs)``).
    ``graph``: a channel graph traced from the same example object — its recorded decision is
    reused, nothing runs again."""
    return examples.resolve(model, example_inputs, what, graph=graph)


def as_args(example: Any) -> tuple:
    """``example_inputs`` as the tuple of the model's positional arguments without running the
    model (a lone tensor is one argument; a tuple is the arguments; a list is one argument).
    Prefer :func:`example`, which decides by running the model as torch-pruning does."""
    return example if isinstance(example, tuple) else (example,)


def run(model: nn.Module, x: Any, what: str, star: bool = False) -> Any:
    """``model(x)`` (``star``: ``model(*x)``) in eval mode without gradients — nothing about the
    model changes (every module's train/eval flag is restored) — or a one-line error naming the
    inputs."""
    try:
        return examples.run(model, tuple(x) if star else (x,))
    except FxTaylorError:
        raise
    except Exception as e:
        raise FxTaylorError(f"the model cannot run on {what} ({shape_of(x)}): {describe_error(e)}") from e


def shape_of(x: Any) -> str:
    if isinstance(x, torch.Tensor):
        return f"inputs of shape {tuple(x.shape)}, {str(x.dtype).replace('torch.', '')}"
    if isinstance(x, (tuple, list)):
        return f"a {type(x).__name__} of {len(x)} inputs"
    return f"inputs of type {type(x).__name__}"


class Classes:
    """What the default training step (cross-entropy on class indices) needs of every batch:
    labels in ``[0, count)`` (or ``ignore_index``). Checked up front on the first batch and on
    every label the dataset shows, then on each batch before it reaches the model."""

    def __init__(self, count: int, ignore_index: int):
        self.count, self.ignore_index = count, ignore_index

    def check(self, y: torch.Tensor, where: str) -> None:
        if y.is_floating_point() or y.numel() == 0:
            return
        valid = y.reshape(-1)
        valid = valid[valid != self.ignore_index]
        if valid.numel() == 0:
            return
        lo, hi = int(valid.min()), int(valid.max())
        if lo < 0 or hi >= self.count:
            raise FxTaylorError(
                f"{where} holds label {hi if hi >= self.count else lo}, but the model has {self.count} outputs (labels must "
                f"be class indices in [0, {self.count - 1}]): give the model one output per class, or fix the labels")


def check_batch(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn: Callable | None, loader: Iterable,
                val_loader: Iterable | None) -> Classes | None:
    """The first batch through the model in eval mode without gradients, before anything is
    modified: the model runs on it; on the default classification path (no ``train_step``)
    its outputs are class scores, its labels fit them, the data holds at least two classes and
    the loss is finite. Returns what every later batch is checked against (None when the loss
    is not cross-entropy on class indices)."""
    device = device_of(model)
    x = x.to(device)
    if x.is_floating_point() and not bool(torch.isfinite(x).all()):
        raise FxTaylorError(f"the training loader's first batch holds NaN or inf inputs ({shape_of(x)})")
    out = run(model, x, "the training loader's first batch")
    if not isinstance(out, torch.Tensor):
        raise FxTaylorError(
            f"the model returns {type(out).__name__}, not a tensor of class scores: the default training step "
            "(loss_fn(model(inputs), labels)) needs one; pass train_step=fn(model, batch) for models with other outputs")
    classes = None
    if loss_fn is None or isinstance(loss_fn, (nn.CrossEntropyLoss, nn.NLLLoss)):
        if out.dim() < 2 or out.shape[0] != x.shape[0]:
            raise FxTaylorError(f"the model's output has shape {tuple(out.shape)} for {x.shape[0]} inputs: cross-entropy "
                                "needs class scores shaped [batch, classes, ...]")
        if out.shape[1] < 2:
            raise FxTaylorError(
                f"the model has {out.shape[1]} output: cross-entropy over one class is always 0, so no channel can be "
                "ranked; a classifier needs at least two outputs (and the data at least two classes)")
        if not y.is_floating_point():
            expected = (out.shape[0], *out.shape[2:])
            if tuple(y.shape) != expected:
                raise FxTaylorError(f"the labels' shape {tuple(y.shape)} does not fit the model's output {tuple(out.shape)}: "
                                    f"cross-entropy needs class indices shaped {list(expected)}")
            classes = Classes(int(out.shape[1]), getattr(loss_fn, "ignore_index", -100))
            classes.check(y, "the training loader's first batch")
            _check_labels(classes, loader, y, "training")
            if val_loader is not None:
                labels = dataset_labels(val_loader)
                if labels is not None:
                    classes.check(labels, "the validation data")
        elif y.shape != out.shape:
            raise FxTaylorError(f"the labels' shape {tuple(y.shape)} does not fit the model's output {tuple(out.shape)}: "
                                "class probabilities must have the output's shape, class indices must be integers")
    try:
        with torch.no_grad():
            loss = (loss_fn or nn.functional.cross_entropy)(out, y.to(device))
        value = float(loss.detach().float().mean()) if isinstance(loss, torch.Tensor) else float(loss)
    except FxTaylorError:
        raise
    except Exception as e:
        raise FxTaylorError(f"the loss cannot be computed on the training loader's first batch: {describe_error(e)}") from e
    if not math.isfinite(value):
        raise FxTaylorError(f"the loss on the first batch is {value} before any update: the inputs, labels or weights hold NaN or inf")
    return classes


def peek(loader: Iterable) -> Any:
    """The first batch of ``loader`` without moving any random-number generator a run draws
    from (creating a DataLoader iterator draws its seed): checking leaves the run as it was."""
    gen = getattr(loader, "generator", None)
    gen = gen if isinstance(gen, torch.Generator) else None
    saved = torch.get_rng_state(), gen.get_state() if gen is not None else None
    try:
        return next(iter(loader))
    finally:
        torch.set_rng_state(saved[0])
        if gen is not None:
            gen.set_state(saved[1])


def check_val(model: nn.Module, loader: Iterable, classes: Classes | None) -> None:
    """The validation loader's first batch: (inputs, labels) the model runs on, labels in range."""
    try:
        batch = peek(loader)
    except StopIteration:
        raise FxTaylorError("val_loader yields no batches: accuracy cannot be measured (pass None to measure none)") from None
    except Exception as e:
        raise FxTaylorError(f"val_loader failed on its first batch: {describe_error(e)}") from e
    if not (isinstance(batch, (tuple, list)) and len(batch) >= 2 and all(isinstance(b, torch.Tensor) for b in batch[:2])):
        raise FxTaylorError(f"val_loader must yield (inputs, labels) tensor pairs for top-1 accuracy; got {describe(batch)} "
                            "(or pass evaluate=fn(model) -> accuracy)")
    out = run(model, batch[0].to(device_of(model)), "val_loader's first batch")
    if not (isinstance(out, torch.Tensor) and out.dim() >= 2):
        raise FxTaylorError(f"top-1 accuracy on val_loader needs class scores [batch, classes] from the model, got "
                            f"{tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__} (or pass evaluate=fn(model))")
    if classes is not None:
        classes.check(batch[1], "val_loader's first batch")


def _check_labels(classes: Classes, loader: Iterable, first: torch.Tensor, what: str) -> None:
    """Every label the data shows without reading its inputs (a dataset's ``targets``, a
    TensorDataset's labels, a list's batches): in range, and at least two classes."""
    labels = dataset_labels(loader)
    seen = labels if labels is not None else first
    if labels is not None:
        classes.check(labels, f"the {what} data")
    kinds = torch.unique(seen.reshape(-1))
    kinds = kinds[kinds != classes.ignore_index]
    if kinds.numel() >= 2:
        return
    one = f"class {int(kinds[0])}" if kinds.numel() else "no class (every label is ignore_index)"
    if labels is not None:
        raise FxTaylorError(
            f"the {what} data holds {one} only: the loss of a single class ranks nothing (the run would report "
            "success on a meaningless task); pruning needs at least two classes")
    warnings.warn(f"the first {what} batch holds {one} only and the loader does not show its labels (no dataset.targets): "
                  "if the data has a single class, the loss ranks nothing", RuntimeWarning, stacklevel=4)


def dataset_labels(loader: Any) -> torch.Tensor | None:
    """Every label of ``loader`` when it can be had without reading inputs: a list of batches,
    or a DataLoader over a TensorDataset (labels second), a dataset with ``targets`` (torchvision's
    ImageFolder, CIFAR, MNIST ...), and Subset / ConcatDataset of those. None otherwise."""
    if isinstance(loader, (list, tuple)):
        ys = [b[1] for b in loader if isinstance(b, (tuple, list)) and len(b) >= 2 and isinstance(b[1], torch.Tensor)]
        if not ys or len(ys) != len(loader) or any(y.is_floating_point() for y in ys):
            return None
        return torch.cat([y.reshape(-1).cpu() for y in ys])
    return _labels_of(getattr(loader, "dataset", None), 0)


def _labels_of(ds: Any, depth: int) -> torch.Tensor | None:
    from torch.utils.data import ConcatDataset, Subset, TensorDataset

    if ds is None or depth > 8:
        return None
    if isinstance(ds, Subset):
        inner = _labels_of(ds.dataset, depth + 1)
        return None if inner is None else inner[torch.as_tensor(list(ds.indices), dtype=torch.long)]
    if isinstance(ds, ConcatDataset):
        parts = [_labels_of(d, depth + 1) for d in ds.datasets]
        return None if any(p is None for p in parts) or not parts else torch.cat(parts)
    if isinstance(ds, TensorDataset):
        y = ds.tensors[1] if len(ds.tensors) >= 2 else None
        return None if y is None or y.is_floating_point() or y.dim() == 0 else y.reshape(-1).cpu()
    targets = getattr(ds, "targets", None)
    if targets is None or getattr(ds, "target_transform", None) is not None:
        return None
    try:
        t = torch.as_tensor(targets)
    except (TypeError, ValueError, RuntimeError):
        return None
    return t if t.dim() == 1 and not t.is_floating_point() and t.dtype != torch.bool else None


def describe(batch: Any) -> str:
    if isinstance(batch, torch.Tensor):
        return f"a single tensor of shape {tuple(batch.shape)} (no labels)"
    if isinstance(batch, (tuple, list)):
        return f"a {type(batch).__name__} of {len(batch)}: " + ", ".join(type(b).__name__ for b in batch[:3])
    return type(batch).__name__


def names(model: nn.Module, items: Iterable, types_ok: bool) -> list[str]:
    """Module names for ``ignored_layers`` / ``leaf_modules`` (types expand to every instance,
    by isinstance), so the arch record holds strings only. The same resolution as
    :func:`fxtaylor.trace` (:mod:`fxtaylor.graph.selection`)."""
    return selection.names(model, items, "leaf_modules" if types_ok else "ignored_layers", types_ok)
