"""What ``fxtaylor prune`` prunes: a model, its weights, its data, fine-tuned if asked.

Two workloads:

- the embedded default (no ``--data``): scikit-learn's bundled handwritten digits (real 8×8
  scans, upsampled to 32×32 RGB), a torchvision ResNet-18 trained on them. Pretrained weights
  cannot be downloaded offline, so "fine-tuning" here is training from scratch, once: the
  result is cached (:func:`fxtaylor.cache.cache_dir`: ``$FXTAYLOR_CACHE`` or ``~/.cache/fxtaylor``), so later runs start pruning.
- ``--data DIR``: an ImageFolder tree ``DIR/train/<class>/*`` and ``DIR/val/<class>/*``, with
  ``--weights`` (a torchvision weights name such as ``DEFAULT``/``IMAGENET1K_V1``, a local
  state dict, or a model saved by fxtaylor) and optionally ``--finetune-epochs``.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset
from torch.utils.data.distributed import DistributedSampler
from tqdm.auto import tqdm

from . import datasets, distributed, models, saving
from .cache import cache_dir
from .devices import device_of
from .errors import FxTaylorError, describe


@dataclass
class Job:
    model: nn.Module
    arch: dict
    train: DataLoader
    val: DataLoader
    description: str
    finetune_s: float = 0.0


def build(args) -> Job:
    """The job the command-line settings describe (model on ``args.device``). Under torchrun the
    default job is built by rank 0 first (it may train and cache the model), then by the others
    from the cache; ``--data`` jobs are built by all ranks together (fine-tuning runs in DDP)."""
    make = _digits if args.data is None else _folder
    if not distributed.active() or args.data is not None:
        return make(args)
    error, work = None, None
    if distributed.is_main():
        try:
            work = make(args)
        except FxTaylorError as e:
            error = str(e)
    error = distributed.broadcast(error)  # the others wait here for rank 0
    if error is not None:
        raise FxTaylorError(error)
    return work if work is not None else make(args)


def train_loader(dataset: Dataset, args, shard: bool = True, **kw) -> DataLoader:
    """Shuffled batches of ``args.batch_size``; under torchrun (and ``shard``) each rank gets
    its own shard (DistributedSampler, reshuffled every epoch), so ``--batch-size`` is per
    process."""
    g = torch.Generator().manual_seed(args.seed)
    if shard and distributed.active():
        # a shard's last batch can be tiny (digits: 674 examples per rank → a batch of 2), and
        # BatchNorm over 2 examples of ResNet-18's 1×1 last stage wrecked a pruning run
        # (94 % → 9 % accuracy after 7 steps): incomplete batches are dropped
        kw["drop_last"] = True
        sampler = DistributedSampler(dataset, shuffle=True, seed=args.seed, drop_last=True)
        return DataLoader(dataset, batch_size=args.batch_size, sampler=sampler, generator=g, **kw)
    return DataLoader(dataset, batch_size=args.batch_size, shuffle=True, generator=g, **kw)


def _digits(args) -> Job:
    size = args.input_size or 32
    train_set = datasets.digits("train", size=size, channels=3)
    train = train_loader(train_set, args)
    val = DataLoader(datasets.digits("test", size=size, channels=3), batch_size=256)
    desc = f"digits (scikit-learn, {len(train.dataset)} train / {len(val.dataset)} test, {size}×{size})"
    epochs = 8 if args.finetune_epochs is None else args.finetune_epochs
    # every setting of that training is in the key (a run at another --finetune-lr reused another's model)
    key = (f"digits{size}-{args.model}-e{epochs}-lr{args.finetune_lr:g}-b{args.batch_size}-s{args.seed}"
           f"-torch{torch.__version__.split('+')[0]}.pt")
    cached = cache_dir() / key
    if args.weights is None and cached.is_file():
        model, arch = saving.load_with_arch(cached)
        return Job(model.to(args.device), arch, train, val, desc + f"; trained model from cache {cached}")
    model, arch = models.build_named(args.model, num_classes=10)
    model, arch = _with_weights(model, arch, args.weights)
    model.to(args.device)
    if getattr(args, "resume", False):  # the checkpoint holds the weights: training them again would be wasted
        return Job(model, arch, train, val, desc + "; weights from the checkpoint")
    t = time.perf_counter()
    # trained once, in one process, on all the data: the cache is the same for any launch
    whole = train_loader(train_set, args, shard=False)
    finetune(model, whole, epochs, args.finetune_lr, args.progress, "train on digits", ddp=False)
    spent = time.perf_counter() - t
    if args.weights is None:
        saving.save(model, cached, arch)
    return Job(model, arch, train, val, desc + f"; trained {epochs} epochs in {spent:.0f} s", spent)


def _folder(args) -> Job:
    size = args.input_size or 224
    train_set = datasets.image_folder(args.data, "train", size, train=True)
    val_set = datasets.image_folder(args.data, "val", size, train=False)
    if train_set.classes != val_set.classes:
        raise FxTaylorError(f"--data {args.data}: train/ and val/ have different class folders")
    workers = args.workers if args.workers is not None else min(4, os.cpu_count() or 1)
    kw = {"num_workers": workers, "pin_memory": args.device.startswith("cuda"), "persistent_workers": workers > 0}
    train = train_loader(train_set, args, drop_last=True, **kw)
    val = DataLoader(val_set, batch_size=args.batch_size * 2, **kw)
    model, arch = models.build_named(args.model, num_classes=len(train_set.classes))
    model, arch = _with_weights(model, arch, args.weights)
    model.to(args.device)
    desc = f"{args.data} ({len(train_set.classes)} classes, {len(train_set)} train / {len(val_set)} val, {size}×{size})"
    spent = 0.0
    if args.finetune_epochs and getattr(args, "resume", False):
        desc += "; fine-tuned weights from the checkpoint"
    elif args.finetune_epochs:
        t = time.perf_counter()
        finetune(model, train, args.finetune_epochs, args.finetune_lr, args.progress, "fine-tune")
        spent = time.perf_counter() - t
        desc += f"; fine-tuned {args.finetune_epochs} epochs"
    return Job(model, arch, train, val, desc, spent)


def _with_weights(model: nn.Module, arch: dict, weights: str | None) -> tuple[nn.Module, dict]:
    """Load ``weights`` into ``model``: an fxtaylor model file replaces it (pruned models can be
    pruned again), a state dict or a torchvision weights name fills it, skipping tensors whose
    shape differs (the classifier, for another number of classes)."""
    if weights is None:
        return model, arch
    path = Path(weights)
    if path.is_file():
        obj = saving.safe_load(path, "weights file")
        if obj.get("format") == saving.MODEL_FORMAT:
            return saving.model_from(obj, path), obj["arch"]
        state = obj.get("state_dict", obj.get("model", obj))
    elif arch["kind"] == "torchvision":
        import torchvision

        try:
            enum = torchvision.models.get_model_weights(arch["name"])
            w = enum.DEFAULT if weights == "DEFAULT" else enum[weights.rpartition(".")[2]]
        except (KeyError, ValueError):
            raise FxTaylorError(f"--weights {weights}: neither a file nor a torchvision weights name for {arch['name']}") from None
        try:
            state = w.get_state_dict(progress=True)
        except (OSError, RuntimeError) as e:  # offline, a proxy, a truncated download
            raise FxTaylorError(f"--weights {weights}: downloading {w} failed ({describe(e)}); pass a local weights "
                                "file instead (a state dict or a model saved by fxtaylor)") from e
    else:
        raise FxTaylorError(f"--weights {weights}: no such file")
    skipped = load_matching(model, state)
    if skipped:
        print(f"fxtaylor: not loaded (shape differs, trained from scratch): {', '.join(skipped[:4])}{' ...' if len(skipped) > 4 else ''}")
    return model, arch


def load_matching(model: nn.Module, state: dict) -> list[str]:
    """Load the tensors of ``state`` whose name and shape match; the names skipped."""
    own = model.state_dict()
    if not isinstance(state, dict) or not any(k in own for k in state):
        raise FxTaylorError("the weights do not belong to this architecture (no parameter name matches)")
    ok = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    model.load_state_dict(ok, strict=False)
    return sorted(set(own) - set(ok))


def finetune(model: nn.Module, loader: DataLoader, epochs: int, lr: float, progress: bool, desc: str, ddp: bool = True) -> None:
    """SGD (momentum 0.9, wd 5e-4) with a one-cycle learning rate peaking at ``lr``: converges
    in a few epochs from scratch or from pretrained weights. Under torchrun (and ``ddp``) in
    DistributedDataParallel, each rank on its shard of the loader."""
    if epochs <= 0:
        return
    from .pruner import inputs

    try:  # the first batch through the model before the first update: shapes, labels, classes
        x, y = inputs.first_batch([inputs.peek(loader)])
    except StopIteration:
        raise FxTaylorError("the training data yields no batches") from None
    except FxTaylorError:
        raise
    except Exception as e:
        raise FxTaylorError(f"the training loader failed on its first batch: {describe(e)}") from e
    inputs.check_batch(model, x, y, None, loader, None)
    net = distributed.wrap(model, None) if ddp else model
    progress = progress and distributed.is_main()
    device = device_of(model)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * len(loader))
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    with tqdm(total=epochs * len(loader), desc=desc, unit="batch", disable=not progress) as bar:
        for epoch in range(epochs):
            if hasattr(loader.sampler, "set_epoch"):
                loader.sampler.set_epoch(epoch)
            for x, y in loader:
                loss = loss_fn(net(x.to(device, non_blocking=True)), y.to(device, non_blocking=True))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                bar.update()
                bar.set_postfix(loss=f"{loss.item():.3f}")
    distributed.release(net)  # the pruning loop builds its own wrapper
