"""The paper's iterative prune / fine-tune loop (Molchanov et al. 2017, §2), made dependable.

Each step: N minibatch updates of ordinary fine-tuning with the Taylor criterion observing
them; one :meth:`Pruner.step` (global ranking, cut through the channel graph with the
optimizer's state following, FLOPs re-counted or latency re-measured); optionally accuracy
measured; the run state checkpointed. Until the target is reached or the accuracy floor would
be broken. Everything about *one* step lives in :mod:`.pruner`; this module adds training,
evaluation, checkpoints, resume and the result.
"""
from __future__ import annotations

import copy
import contextlib
import dataclasses
import math
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
import torch.nn as nn
import torch.utils._pytree as pytree
from tqdm.auto import tqdm

from .. import distributed, files, flops, models, optim, saving
from ..devices import device_of
from ..cost import RESOURCES
from ..errors import FxTaylorError, describe
from ..latency.timing import check_runtime
from ..latency.verdict import not_faster
from ..graph import arch_record, trace
from ..importance.base import GraphImportance
from . import inputs, measure, state
from .eta import Eta, about, eta_line, steps_text
from .options import Schedule, Target, check_ranking, split_options
from .pruner import Pruner, compare
from .result import PruneResult
from .training import Training, with_aux

DEFAULT_FLOPS_REG = 0.0
"""λ when none is given. The paper's 1e-3 is in its own (unstated) FLOPs units; ours are
"average maps" (docs/criterion.md). The quality study's sweep (docs/results.md: λ ∈ {0, 1e-3,
1e-2, 1e-1}, ResNet-18 on digits) found no λ > 0 better after recovery fine-tuning, so 0."""

PAPER_UPDATES = 30  # minibatch updates between prunings, Birds-200 / VGG-16 setting
CHECKPOINT = "checkpoint.pt"
CHECKPOINT_FORMAT = "fxtaylor.checkpoint/2"


def prune(
    model: nn.Module,
    train_loader: Iterable,
    *,
    target: Target | None = None,
    schedule: Schedule | None = None,
    deployment: Any = None,
    cost: Any = None,
    loss_fn: Callable[[Any, Any], torch.Tensor] | None = None,
    train_step: Callable[[nn.Module, Any], Any] | None = None,
    batch_loss: Callable[[nn.Module, Any], torch.Tensor] | None = None,
    example_inputs: Any = None,
    optimizer: torch.optim.Optimizer | None = None,
    flops_reg: float = DEFAULT_FLOPS_REG,
    normalize: str | None = "l2",
    criterion: str | Callable[..., GraphImportance] = "taylor",
    val_loader: Iterable | None = None,
    evaluate: Callable[[nn.Module], float] | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
    resume: bool = False,
    seed: int | None = None,
    arch: dict | None = None,
    ignored_layers: Iterable[nn.Module | str] = (),
    leaf_modules: Iterable[type | str | nn.Module] = (),
    exact: bool = True,
    measure_latency: bool = True,
    measure_fn: Callable | None = None,
    progress: bool = True,
    on_step: Callable[[dict], None] | None = None,
    on_start: Callable[[], None] | None = None,
    **options: Any,
) -> PruneResult:
    """Prune ``model`` (fine-tuned on the task of ``train_loader``) to a target, fine-tuning all
    along. The model is pruned in place; see :class:`PruneResult`.

    Target (exactly one ``target_<resource>=fraction``, or ``target=Target(resource,
    fraction)``; docs/resources.md): ``target_flops`` × its FLOPs (the paper's resource, counted
    by fvcore), ``target_latency`` × its latency *measured* as deployed, ``target_params`` × its
    saved state dict's bytes, ``target_memory`` × its peak activation memory at the
    deployment's batch size. ``deployment``: :class:`fxtaylor.latency.Deployment` — device,
    batch size, dtype, memory format, threads; default: the model's device, batch 1, float32.
    Every run measures the latency before and after on that deployment and warns when the
    pruned model is not faster. ``cost``: a :class:`fxtaylor.cost.CostModel` to predict the
    target's resource with (see :class:`Pruner`).

    Schedule (``schedule=Schedule(...)`` or the same names as keywords, docs/usage.md):
    ``updates_between_prunes`` (paper: 30) updates observe the criterion before each pruning
    step, which removes ``maps_per_prune`` maps (default: 1 % of the prunable maps) ranked
    globally by ℓ2-normalised Taylor score minus ``flops_reg`` × resource cost; or, with
    ``flops_per_prune``, as many maps as remove that fraction of the dense model's resource.
    ``round_to=8`` keeps every group at a multiple of 8 channels (None: what the latency tables
    measured as faster). ``selection``: ``"rank"`` or ``"knapsack"``. ``tolerance``: a FLOPs
    run ends with FLOPs in ``[target·(1 − tolerance), target]``; ``final_updates`` more updates.
    ``schedule=Schedule.quick()``: fewer, larger steps for a first look (10 to half the
    resource), at some cost in accuracy; keywords given with it win.

    Time: after the first :data:`~fxtaylor.pruner.eta.ETA_AFTER` steps the remaining steps and time are predicted
    from them (:class:`~fxtaylor.pruner.eta.Eta`); with ``progress`` one line says so and the bar keeps the latest
    estimate; ``result.timings["eta"]`` holds the first prediction beside what followed it.

    Training: ``train_loader`` yields batches; by default ``loss_fn(model(inputs), labels)``
    (cross-entropy) is minimised with ``optimizer`` (the paper's SGD: lr 1e-4, momentum 0.9,
    wd 1e-4). ``train_step(model, batch) -> loss`` replaces that update entirely — your loss,
    AMP, gradient scaler, scheduler: it must do backward and the optimizer step itself; pass
    its ``optimizer`` too so its state follows every cut. ``batch_loss(model, batch) -> loss``
    computes a family's own loss (a detection model's loss dict summed, RAFT's sequence loss);
    the update is the default one. ``example_inputs``: the model's arguments (a tuple), where a
    batch's first item is not its input (a detection model's list of images) — what the model
    is traced, counted and timed with (docs/usage.md, "Detection, segmentation, video and
    optical flow"). A model returning ``(logits, aux_logits...)`` in train mode (GoogLeNet,
    Inception-v3) gets cross-entropy on the logits + 0.3 × each auxiliary loss by default.

    Accuracy: ``val_loader`` (top-1) or ``evaluate(model) -> float``, every ``eval_every``
    steps; with ``min_accuracy`` a step whose pruned model falls below it is undone and the run
    stops. ``checkpoint_dir`` gets the run state after every step; ``resume=True`` continues
    from it (pass the same unpruned model, loaders and settings). ``seed`` seeds torch, random,
    numpy and the train loader's own generator if it has one. ``arch`` is the model's arch
    record (:mod:`fxtaylor.models`) so the result can be loaded by name; custom models are
    loaded with ``fxtaylor.load(path, base=unpruned_model)``.

    ``exact=False`` also prunes channels tied through a normaliser whose statistics span them
    (ConvNeXt's layer norms, ConvNeXt-V2's GRN, NFNets' weight-standardised convs): no removal
    of those is exact, so by default they are frozen; the criterion is unchanged, and the cost
    in accuracy is measured in docs/graph.md ("Exact and inexact"). On a model without such
    channels it is refused (it would change nothing).

    ``criterion``: ``"taylor"`` (the paper's), or a baseline (``"weight"``,
    ``"activation_mean"``, ``"activation_std"``, ``"random"``), or any factory
    ``f(model, example_inputs, normalize=, flops_reg=, graph=, cost=) -> GraphImportance``.
    ``on_step(record)`` is called after each step's checkpoint; ``on_start()`` once every check
    has passed, right before the first training update (the command writes its run directory
    there, so a run that fails its checks leaves nothing behind). ``measure_fn(models) ->
    [Timing]`` replaces latency measurement (testing).

    Bad input fails before anything is modified, with one :class:`~fxtaylor.FxTaylorError`
    (docs/usage.md, "Errors"): the settings; the loaders (re-iterable, not one-shot); the model
    (materialised, on one device, finite); ``checkpoint_dir`` (writable; on resume, a checkpoint
    of this model made with these settings); the first training batch run through the model in
    eval mode without gradients (on the default classification path also: class scores out,
    labels in range, at least two classes, a finite loss) and the validation loader's first
    batch; tracing and reachability.

    Distributed (torchrun, docs/distributed.md): call ``prune`` on every rank with the same
    model (bare or in ``DistributedDataParallel``), settings and a loader with a
    ``DistributedSampler``. Every rank's criterion is all-reduced before ranking, every rank
    removes the same channels (rank 0 decides latency checks), the DDP wrapper is rebuilt after
    each cut (the one passed in is spent after the first: use ``result.model``), and only rank
    0 writes the checkpoint.
    """
    target, schedule = split_options(target, schedule, options)
    inputs.check(schedule, val_loader, evaluate, checkpoint_dir, resume)
    if not isinstance(model, nn.Module):
        raise FxTaylorError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    check_ranking(criterion, normalize, flops_reg)
    given = [n for n, f in (("loss_fn", loss_fn), ("batch_loss", batch_loss), ("train_step", train_step)) if f is not None]
    if len(given) > 1:
        raise FxTaylorError(f"give one of loss_fn, batch_loss and train_step, not {' and '.join(given)} "
                            "(batch_loss and train_step compute their own loss)")
    if batch_loss is not None and not callable(batch_loss):
        raise FxTaylorError(f"batch_loss must be a function (model, batch) -> loss, got {type(batch_loss).__name__}")
    inputs.check_arguments(distributed.unwrap(model)[0], optimizer=optimizer, seed=seed, arch=arch,
                           loss_fn=loss_fn, train_step=train_step, evaluate=evaluate, on_step=on_step,
                           on_start=on_start, measure_fn=measure_fn)
    inputs.reiterable(train_loader, "the training loader (train_loader)")
    if val_loader is not None:
        inputs.reiterable(val_loader, "val_loader")
    inputs.check_model(distributed.unwrap(model)[0])
    from ..latency import Deployment

    elsewhere = getattr(cost, "measured_elsewhere", None)  # a latency table measured elsewhere carries its own deployment
    deployment = elsewhere or (deployment or Deployment()).resolved(distributed.unwrap(model)[0])  # unrunnable settings fail here
    ckpt = _agree(lambda: _checkpoint_dir(checkpoint_dir, resume))
    if seed is not None:
        state.seed_everything(seed)
        if isinstance(getattr(train_loader, "generator", None), torch.Generator):
            train_loader.generator.manual_seed(seed)  # it shuffles, not the global RNG
    ddp = model if distributed.is_ddp(model) else None  # the user's wrapper: used until the first cut
    model, ddp_kwargs = distributed.unwrap(model)
    training = Training(loss_fn=loss_fn, train_step=train_step, batch_loss=batch_loss, optimizer=optimizer,
                        val_loader=val_loader, evaluate=evaluate, checkpoint_dir=checkpoint_dir, seed=seed, arch=arch,
                        measure_latency=measure_latency, measure_fn=measure_fn,
                        progress=progress and distributed.is_main(),  # one set of bars, not one per rank
                        on_step=on_step, on_start=on_start)
    example, classes = _agree(lambda: _first_batch(model, train_loader, val_loader, loss_fn, training.custom, example_inputs))
    if measure_fn is None and elsewhere is None and (measure_latency or RESOURCES[target.resource].measured):
        # the runtime takes this model (an export, a compile) before anything is pruned or written
        _agree(lambda: check_runtime(model, example, deployment))
    ranking = {"criterion": criterion, "normalize": normalize, "flops_reg": flops_reg}
    trace_kwargs = {"ignored_layers": inputs.names(model, ignored_layers, False),
                    "leaf_modules": inputs.names(model, leaf_modules, True), "exact": exact}
    run = Run(model, train_loader, example, classes, target=target, schedule=schedule, deployment=deployment, cost=cost,
               ranking=ranking, training=training, trace_kwargs=trace_kwargs, ddp=(ddp, ddp_kwargs))
    return run.execute(ckpt)


def _agree(check: Callable[[], Any]) -> Any:
    """``check()``'s value; under torch.distributed the ranks fail together (a rank that stopped
    alone would leave the others waiting in the first collective forever)."""
    error = None
    try:
        value = check()
    except FxTaylorError as e:
        error, value = e, None
    if distributed.active():
        messages = distributed.gather(None if error is None else str(error))
        first = next((m for m in messages if m is not None), None)
        if first is not None and error is None:
            raise FxTaylorError(f"{first} (on rank {messages.index(first)})")
    if error is not None:
        raise error
    return value


def _checkpoint_dir(checkpoint_dir: str | os.PathLike | None, resume: bool) -> dict | None:
    """The checkpoint directory can be written (by rank 0, the one that writes); on resume,
    its checkpoint."""
    if checkpoint_dir is not None and distributed.is_main():
        files.check_writable_dir(checkpoint_dir, "checkpoint_dir")
    return _read_checkpoint(checkpoint_dir) if resume else None


def _first_batch(model: nn.Module, train_loader: Iterable, val_loader: Iterable | None, loss_fn, train_step,
                 example_inputs: Any = None) -> tuple:
    """The example input (the first batch's first item, or ``example_inputs``) and, on the
    default classification path, the classes every batch's labels are checked against; the
    first batches of both loaders run through the model (:mod:`.inputs`). ``train_step``: the
    user's step or batch loss, which read the batch themselves."""
    if example_inputs is not None:
        if train_step is None:
            raise FxTaylorError("example_inputs is for models whose batches are not (inputs, labels) tensor pairs: "
                                "give batch_loss or train_step with it")
        example = inputs.example(model, _to(example_inputs, device_of(model)))  # model(*x), else model(x)
        return example, None
    x, y = inputs.first_batch(train_loader, custom=train_step is not None)
    example = x[:1].to(device_of(model))
    if train_step is None:
        classes = inputs.check_batch(model, x, y, loss_fn, train_loader, val_loader)
    else:  # the step reads the batch: only the input the graph is traced with must run
        classes = None
        inputs.run(model, example, "the example input (the first item of the first batch)")
    if val_loader is not None:
        inputs.check_val(model, val_loader, classes)
    return example, classes


def _to(x: Any, device: torch.device) -> Any:
    return pytree.tree_map(lambda t: t.to(device) if isinstance(t, torch.Tensor) else t, x)


def _read_checkpoint(ckpt_dir: str | os.PathLike) -> dict:
    ckpt = saving.safe_load(Path(ckpt_dir) / CHECKPOINT, "checkpoint")
    if ckpt.get("format") != CHECKPOINT_FORMAT:
        raise FxTaylorError(f"{Path(ckpt_dir) / CHECKPOINT} is not an fxtaylor checkpoint")
    return ckpt


class Run:
    """One call of :func:`prune`: the :class:`Pruner` plus training, evaluation, checkpoints."""

    def __init__(self, model: nn.Module, loader: Iterable, example: Any, classes: inputs.Classes | None, *, target: Target,
                 schedule: Schedule, deployment: Any, cost: Any, ranking: dict[str, Any], training: Training,
                 trace_kwargs: dict[str, Any], ddp: tuple):
        self.model, self.example = model, example
        self.target, self.schedule, self.deployment, self.cost = target, schedule, deployment, cost
        self.ranking, self.training, self.trace_kwargs = ranking, training, trace_kwargs
        self.loss_fn = training.loss_fn or nn.CrossEntropyLoss()
        self.opt = training.optimizer
        self.ddp, self.ddp_kwargs = ddp
        self.progress = training.progress
        self.classes = classes  # what each batch's labels are checked against
        self.base_shapes = saving.shapes_of(model)  # the model passed in, before any cut: a resume must get the same
        self.resumed_at = None  # the run's time at the checkpoint it continues from
        self.batches = state.Batches(loader)
        self.ckpt_path = Path(training.checkpoint_dir) / CHECKPOINT if training.checkpoint_dir is not None else None
        self.removed: list[int] = []
        self.history: list[dict[str, Any]] = []
        self.t0 = time.perf_counter()

    # -- setup -------------------------------------------------------------------------------

    def execute(self, ckpt: dict | None) -> PruneResult:
        tr = self.training
        # the dense model: what latency is reported against, and a measured resource's reference
        self.original = copy.deepcopy(self.model) if (tr.measure_latency or RESOURCES[self.target.resource].measured) else None
        self.layers_before = measure.out_channels(self.model)
        graph = self._restore_model(ckpt) if ckpt is not None else trace(self.model, self.example, **self.trace_kwargs)
        self.pruner = Pruner(
            self.model, self.example, target=self.target, schedule=self.schedule, deployment=self.deployment, cost=self.cost,
            **self.ranking, optimizer=self.opt, graph=graph, reference=self.original, measure_fn=tr.measure_fn,
            loss_reduction=tr.loss_reduction, progress=self.progress,
            state=ckpt["pruner"] if ckpt is not None else None, **self.trace_kwargs,
        )
        self.imp = self.pruner.imp
        self._check_same_on_every_rank(graph)
        if self.ddp is not None and ckpt is None:
            self.train_model = self.ddp  # a second wrapper would put a second set of hooks on every parameter
        else:  # (on resume the user's wrapper holds the unpruned parameters: replaced)
            self.train_model = distributed.wrap(self.model, self.ddp_kwargs, self.ddp)
        if ckpt is None:
            self.opt = self.opt or optim.paper_sgd(self.model)
            self.pruner.optimizer = self.opt
            self.before = {"flops": self.imp.total_flops(), "params": measure.params(self.model), "accuracy": self._evaluate()}
            if not self.pruner.resource.measured:  # the target resource as counted (FLOPs: the same count)
                self.before.setdefault(self.pruner.resource.key, self.pruner.dense)
            self.history.append(self._record(0, 0, None, self.before["accuracy"]))
        else:
            self._restore_run(ckpt)
        if self.ckpt_path is not None and distributed.is_main():
            files.remove_leftovers(self.ckpt_path.parent)  # what a writer killed mid-write left
        if tr.on_start is not None:
            tr.on_start()
        result = self._loop()
        # over every part of a resumed run: from the first record (unpruned) to now
        self.timings = {"prune_s": time.perf_counter() - self.t0 - self.history[0]["time_s"]}
        if self.resumed_at is not None:
            self.timings["resumed_at_s"] = self.resumed_at
        return self._finish(result)

    def _check_same_on_every_rank(self, graph) -> None:
        """Under torch.distributed: the ranks must agree on the model and the settings that
        decide when they meet in a collective, or the first one would hang."""
        tr = self.training
        settings = (repr(self.target), repr(self.schedule), self.ranking["flops_reg"], str(self.ranking["criterion"]),
                    tr.checkpoint_dir is not None, tr.val_loader is None and tr.evaluate is None, len(graph.groups))
        distributed.check_same("model architecture", distributed.architecture(self.model))
        distributed.check_same("pruning settings", settings)

    def _settings(self) -> dict[str, Any]:
        """What decides the run, as the checkpoint records it: a resume must pass the same."""
        out = {f"target_{self.target.resource}": self.target.fraction, "tolerance": self.target.tolerance,
               **dataclasses.asdict(self.schedule), "flops_reg": float(self.ranking["flops_reg"]),
               "normalize": self.ranking["normalize"], "criterion": self._criterion_name(), "seed": self.training.seed}
        if RESOURCES[self.target.resource].per_deployment:
            out["deployment"] = self.deployment.as_dict()
        return out

    def _check_resumable(self, ckpt: dict) -> None:
        """The checkpoint belongs to this model and these settings; checked before the model is
        rebuilt from it (checkpoints written before these fields existed are not checked)."""
        where = self.ckpt_path
        base = ckpt.get("base_shapes")
        if base is not None and base != self.base_shapes:
            diff = sorted(set(base) ^ set(self.base_shapes)) or [k for k in base if base[k] != self.base_shapes[k]]
            k = diff[0]
            raise FxTaylorError(
                f"{where} was made from another model ({len(diff)} tensors differ; first: {k}, checkpoint "
                f"{base.get(k, 'absent')}, this model {self.base_shapes.get(k, 'absent')}): resume with the same unpruned model")
        saved = ckpt.get("settings")
        if saved is not None:
            now = self._settings()
            diff = [f"{k} (checkpoint: {saved.get(k)!r}, now: {now.get(k)!r})" for k in sorted(set(saved) | set(now))
                    if saved.get(k) != now.get(k)]
            if diff:
                raise FxTaylorError(
                    f"{where} was made with other settings; these differ: {', '.join(diff)}. A resume continues the run "
                    "as it was started: pass the same settings, or start a new run in another checkpoint_dir")

    def _restore_model(self, ckpt: dict) -> Any:
        """Rebuild the checkpoint's architecture from the unpruned model passed in."""
        old_names = {id(p): n for n, p in self.model.named_parameters()}
        arch = ckpt["arch"]
        now, then = models.shapes(self.example), arch["input_shape"]
        one = isinstance(self.example, torch.Tensor)  # then the batch size may differ
        if (now[1:] != then[1:]) if one else (now != then):
            raise FxTaylorError(f"the checkpoint was made with inputs {then}, the loader gives {now}")
        self._check_resumable(ckpt)
        graph = models.replay(self.model, arch["input_shape"], arch["trace"], arch["removed_units"])
        saving.load_state(self.model, ckpt["state_dict"], self.ckpt_path)
        opt = self.opt
        if opt is not None:  # point the user's optimizer at the rebuilt parameters
            new = dict(self.model.named_parameters())
            for pg in opt.param_groups:
                pg["params"] = [new[old_names[id(p)]] for p in pg["params"]]
        self.opt = opt or optim.paper_sgd(self.model)
        self.opt.load_state_dict(ckpt["optimizer"])
        self.removed = list(arch["removed_units"])
        return graph

    def _restore_run(self, ckpt: dict) -> None:
        self.imp.load_state_dict(ckpt["importance"])
        self.before, self.history = ckpt["before"], ckpt["history"]
        self.resumed_at = self.history[-1]["time_s"]
        self.t0 -= self.resumed_at
        mine = ckpt.get("ranks", [{"rng": ckpt["rng"], "data": ckpt["data"]}])
        if len(mine) != distributed.world_size():
            raise FxTaylorError(f"the checkpoint was written by {len(mine)} process(es), this run has {distributed.world_size()}")
        mine = mine[distributed.rank()]
        self.batches.restore(mine["data"])
        state.set_rng_state(mine["rng"])

    # -- the loop ----------------------------------------------------------------------------

    def _loop(self) -> tuple[bool, str]:
        p, s, r = self.pruner, self.schedule, self.pruner.resource
        what = r.label
        unit = f"% {what}"
        bar = tqdm(total=round(100 * (1 - self.target.fraction), 1), desc="pruning", unit=unit,
                   disable=not self.progress, bar_format="{l_bar}{bar}| {n:.1f}/{total} {unit} [{elapsed}{postfix}]")
        ratio = p.ratio
        bar.n = min(round(100 * (1 - ratio), 1), bar.total)
        bar.refresh()
        t = self.target
        self.eta = Eta(t.fraction * (1 + t.tolerance) if r.measured else t.fraction, s.updates_between_prunes, s.final_updates,
                       time.perf_counter())
        try:
            while True:
                if p.done:
                    return True, "target reached"
                step = len(self.history)
                started = time.perf_counter()
                loss = self._updates(s.updates_between_prunes, step, observe=True)
                self.eta.updated(time.perf_counter() - started)
                snapshot = copy.deepcopy((self.model, self.opt, self.removed)) if s.min_accuracy is not None else None
                rejected = p.rejected
                gone = p.step()
                self.removed += gone
                self.train_model = distributed.wrap(self.model, self.ddp_kwargs, self.train_model)  # new parameter shapes
                if not gone:
                    if r.measured:
                        # the rejected trials re-measured the model: the record shows the
                        # measurement the verdict below rests on, not the previous step's
                        self.history.append(self._record(step, 0, loss, None, rejected=p.rejected - rejected))
                    if p.done:
                        return True, "target reached"
                    if not r.measured:  # counted: within the tolerance of the target is reached
                        band = r.reached(p.ratio, self.target.fraction, self.target.tolerance)
                        return band, "target reached" if band else "nothing left to prune"
                    why = "no cut measured faster than the model before it" if p.rejected > rejected else "nothing left to prune"
                    return False, why
                done = p.done
                acc = self._evaluate() if (step % s.eval_every == 0 or done) else None
                rec = self._record(step, len(gone), loss, acc, rejected=p.rejected - rejected)
                if s.min_accuracy is not None and acc is not None and acc < s.min_accuracy:
                    rec["reverted"] = True
                    self.history.append(rec)
                    self.model, self.opt, self.removed = snapshot
                    self.train_model = distributed.wrap(self.model, self.ddp_kwargs, self.train_model)
                    return False, f"accuracy floor: step {step} gave {acc:.2%} < {s.min_accuracy:.2%}"
                self.history.append(rec)
                self._checkpoint()
                before, ratio = ratio, p.ratio
                bar.n = min(round(100 * (1 - ratio), 1), bar.total)
                flops = (self.history[-2]["flops"], rec["flops"])  # while it trained, after the cut
                eta, first = self.eta.step(step, before - ratio, ratio, flops, time.perf_counter())
                if first and self.progress:  # once, where the bars are (stderr), between them
                    tqdm.write(f"pruning: {eta_line(first, what)}", file=sys.stderr)
                bar.set_postfix_str(f"step {step}, {what} {ratio:.1%}" + (f", acc {acc:.2%}" if acc is not None else "")
                                    + (f", ≈ {steps_text(eta['steps_left'])} / {about(eta['seconds_left'])} left" if eta else ""))
                if self.training.on_step is not None:  # (its time counts in the next step's)
                    self.training.on_step(rec)
        finally:
            bar.close()

    def _updates(self, n: int, step: int | str, observe: bool) -> float | None:
        """``n`` training updates (observed by the criterion when ``observe``); mean loss."""
        if n == 0:
            return None
        self.model.train()
        total = 0.0
        bar = tqdm(range(n), desc=f"step {step}: {'observe' if observe else 'fine-tune'}", leave=False, disable=not self.progress)
        ctx = self.imp.observe() if observe else contextlib.nullcontext()
        with ctx:
            for u in bar:
                at = f"step {step}, update {u + 1}"
                try:
                    batch = self.batches.next()
                except Exception as e:  # a corrupt file mid-epoch, a loader that ran dry: one line, and where to resume
                    raise FxTaylorError(f"the training loader failed at {at}: {describe(e)} ({self._where()})") from e
                if self.training.train_step is not None:
                    loss = self.training.train_step(self.train_model, batch)
                    value = float(loss.detach().item() if isinstance(loss, torch.Tensor) else loss)
                elif self.training.batch_loss is not None:
                    loss, value = self._batch_loss(batch, at)
                else:
                    loss, value = self._default_update(batch, at)
                if distributed.active():  # a rank must not stop alone: the others would wait for it forever
                    bad = torch.tensor([float(not math.isfinite(value))], dtype=torch.float64, device=self.device)
                    value = math.nan if distributed.all_reduce_(bad, "max").item() else value
                if not math.isfinite(value):
                    raise FxTaylorError(f"the loss became {value} at {at}; stopped ({self._where()})")
                if self.training.train_step is None:
                    try:
                        self.opt.zero_grad(set_to_none=True)
                        loss.backward()
                        self.opt.step()
                    except Exception as e:
                        raise FxTaylorError(f"the training update failed at {at}: {describe(e)} ({self._where()})") from e
                total += value
        return total / n

    def _default_update(self, batch: Any, at: str) -> tuple[torch.Tensor, float]:
        """Forward and loss of the default step. Labels out of range are refused before the batch
        reaches the model, whose batch-norm statistics it would otherwise update."""
        if not (isinstance(batch, (tuple, list)) and len(batch) >= 2 and all(isinstance(b, torch.Tensor) for b in batch[:2])):
            raise FxTaylorError(f"the training loader must yield (inputs, labels) tensor pairs; at {at} it gave "
                                f"{inputs.describe(batch)} ({self._where()})")
        x, y = batch[:2]
        if self.classes is not None:
            try:
                self.classes.check(y, f"the batch of {at}")
            except FxTaylorError as e:
                raise FxTaylorError(f"{e} ({self._where()})") from None
        try:
            loss = with_aux(self.loss_fn, self.train_model(x.to(self.device, non_blocking=True)), y.to(self.device, non_blocking=True))
            return loss, loss.detach().item()
        except FxTaylorError:
            raise
        except Exception as e:
            raise FxTaylorError(f"the training step failed at {at} ({inputs.shape_of(x)}): {describe(e)} ({self._where()})") from e

    def _batch_loss(self, batch: Any, at: str) -> tuple[torch.Tensor, float]:
        """``batch_loss(model, batch)``: the family's own loss (a detection model's loss dict
        summed, a segmentation model's ``out`` + aux, RAFT's sequence loss); the update is ours."""
        try:
            loss = self.training.batch_loss(self.train_model, batch)
        except FxTaylorError:
            raise
        except Exception as e:
            raise FxTaylorError(f"batch_loss failed at {at}: {describe(e)} ({self._where()})") from e
        if not (isinstance(loss, torch.Tensor) and loss.numel() == 1 and loss.requires_grad):
            raise FxTaylorError(f"batch_loss must return the loss as a one-element tensor with a gradient; at {at} it "
                                f"returned {inputs.describe(loss)}")
        return loss, float(loss.detach().item())

    def _where(self) -> str:
        """Where a run that stopped mid-way can continue from."""
        if self.ckpt_path is not None and self.ckpt_path.exists():
            return f"the last good checkpoint is {self.ckpt_path}"
        return "no checkpoint was written"

    @property
    def device(self) -> torch.device:
        return device_of(self.model)

    # -- bookkeeping -------------------------------------------------------------------------

    def _evaluate(self) -> float | None:
        """Accuracy; under torch.distributed, rank 0's (one rank decides the accuracy floor)."""
        acc = None
        tr = self.training
        if tr.evaluate is not None:
            acc = float(tr.evaluate(self.model))
        elif tr.val_loader is not None:
            try:
                acc = measure.accuracy(self.model, tr.val_loader)
            except Exception as e:  # a corrupt validation image mid-run: one line, and where to resume
                raise FxTaylorError(f"evaluating on val_loader failed: {describe(e)} ({self._where()})") from e
        return distributed.broadcast(acc)

    def _record(self, step: int | str, removed: int, loss: float | None, acc: float | None, rejected: int = 0) -> dict[str, Any]:
        rec = {
            "step": step, "flops": self._flops(), "params": measure.params(self.model), "accuracy": acc,
            "loss": loss, "removed": removed, "time_s": round(time.perf_counter() - self.t0, 3),
        }
        r = self.pruner.resource
        if self.pruner.model is self.model:
            rec[f"{r.name}_ratio"] = self.pruner.ratio  # counted, or measured against the dense model side by side
            if r.measured:
                rec["rejected"] = rejected
            else:
                rec.setdefault(r.key, self.pruner.now)
        return rec

    def arch(self) -> dict:
        # always a pruning record, even before the first cut: resume replays it onto the model passed in
        return arch_record.pruned(self.training.arch or {"kind": "custom"}, models.shapes(self.example), self.trace_kwargs,
                                  self.removed)

    def _checkpoint(self) -> None:
        if self.ckpt_path is None:
            return
        ranks = distributed.gather({"rng": state.rng_state(), "data": self.batches.position()})
        if not distributed.is_main():
            return
        saving.atomic_save({
            "format": CHECKPOINT_FORMAT, "arch": self.arch(),
            "state_dict": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "optimizer": self.opt.state_dict(),
            "importance": {k: v.cpu() if isinstance(v, torch.Tensor) else v for k, v in self.imp.state_dict().items()},
            "pruner": self.pruner.state_dict(),
            "rng": ranks[0]["rng"], "data": ranks[0]["data"], "ranks": ranks,
            "before": self.before, "history": self.history,
            "base_shapes": self.base_shapes, "settings": self._settings(),
        }, self.ckpt_path)

    def _finish(self, outcome: tuple[bool, str]) -> PruneResult:
        reached, reason = outcome
        t = time.perf_counter()
        if self.schedule.final_updates:
            loss = self._updates(self.schedule.final_updates, "final", observe=False)
            self.history.append(self._record("final", 0, loss, self._evaluate()))
        self.timings["final_s"] = time.perf_counter() - t
        if self.eta.first is not None:  # the first prediction beside what followed it
            self.timings["eta"] = self.eta.outcome(self.history, time.perf_counter())
        last = self.history[-1]
        last_acc = last["accuracy"] if last["accuracy"] is not None and not last.get("reverted") else self._evaluate()
        after = {"flops": self._flops(), "params": measure.params(self.model), "accuracy": last_acc}
        r = self.pruner.resource
        if not r.measured and r.key not in after:  # FLOPs: counted above already
            after[r.key] = self._count()
        speedup = None
        if self.original is not None:
            speedup = self._latency(after)
        t, tol = self.target.fraction, self.target.tolerance
        if reached and not r.measured:
            ratio = after[r.key] / self.before[r.key]
            reached = r.reached(ratio, t, tol)
            if not reached:  # the reason must say so: a report never reads "target reached" and not reached
                reason = f"stopped at {ratio:.2%} of the {r.label}, outside the target {t:.0%} ± {tol:.0%} (target not reached)"
        layers_after = measure.out_channels(self.model)
        self.timings["total_s"] = time.perf_counter() - self.t0
        s = self.schedule
        config = {
            "target": self.target.resource, **{f"target_{name}": None for name in RESOURCES},
            f"target_{self.target.resource}": t, "tolerance": tol,
            "flops_reg": self.ranking["flops_reg"], "normalize": self.ranking["normalize"],
            "updates_between_prunes": s.updates_between_prunes, "flops_per_prune": s.per_prune, "round_to": s.round_to,
            "selection": self.pruner.selection, "eval_every": s.eval_every, "final_updates": s.final_updates,
            "min_accuracy": s.min_accuracy, "seed": self.training.seed, "maps_per_prune": self.pruner.k,
            "criterion": self._criterion_name(),
            "model": models.base_name(self.arch()), "optimizer": type(self.opt).__name__ if self.opt is not None else None,
            "input_shape": models.shapes(self.example), "deployment": self.deployment.as_dict(), "cost_model": self.pruner.cost.describe(),
            "rejected_cuts": self.pruner.rejected,
            "reachable": self.pruner.reachable,  # predicted share of the resource channel pruning can remove
        }
        return PruneResult(
            model=self.model, arch=self.arch(), target=self.target, reached=reached, stop_reason=reason,
            before=self.before, after=after, speedup=speedup, history=self.history,
            layers=[{"name": n, "before": c, "after": layers_after.get(n, 0)} for n, c in self.layers_before.items()],
            config=config, environment=measure.environment(self.device), timings=self.timings,
        )

    def _criterion_name(self) -> str:
        c = self.ranking["criterion"]
        return c if isinstance(c, str) else getattr(c, "__name__", type(c).__name__)

    def _count(self) -> float:
        """The counted target resource of the model now; after an accuracy-floor revert the
        pruner's graph belongs to the discarded model, so the kept one is traced and counted."""
        if self.pruner.model is self.model:
            return self.pruner.cost.sync(self.imp.graph, self.example).total()
        fresh = RESOURCES[self.target.resource].for_run(self.deployment, progress=False)
        return fresh.sync(trace(self.model, self.example, **self.trace_kwargs), self.example).total()

    def _latency(self, after: dict) -> float | None:
        """Dense and pruned latency as deployed, side by side, with their spread; a warning
        when the pruned model is not faster."""
        ref, now = self.pruner.measure([self.original, self.model])
        self.before["latency_ms"], after["latency_ms"] = ref.median_ms, now.median_ms
        self.before["latency_iqr_ms"], after["latency_iqr_ms"] = ref.iqr_ms, now.iqr_ms
        ratio, margin = compare(ref, now)
        speedup = 1 / ratio  # per-round ratios: robust to load that changes during the measurement
        after["latency_ratio"], after["latency_ratio_noise"] = ratio, margin
        said = not_faster(ratio, margin, self.deployment.describe(), measured=RESOURCES[self.target.resource].measured)
        if said is not None:
            warnings.warn(f"{said} ({ref.median_ms:.3g} ms → {now.median_ms:.3g} ms, speed-up {speedup:.2f}× ± {margin:.2f})",
                          RuntimeWarning, stacklevel=3)
        return speedup

    def _flops(self) -> int:
        """FLOPs of the model now; after an accuracy-floor revert the criterion's graph
        belongs to the discarded model, so count afresh."""
        if self.imp.model is self.model:
            return self.imp.total_flops()
        return flops.count(self.model, self.example)[0]

