"""The paper's iterative prune / fine-tune loop (Molchanov et al. 2017, §2), made dependable.

Each step: N minibatch updates of ordinary fine-tuning with the Taylor criterion observing
them; one global ranking of every prunable map; the lowest ones removed through the channel
graph (the optimizer's state follows, :mod:`fxtaylor.optim`); the criterion reset; FLOPs
re-counted with fvcore; optionally accuracy measured; the run state checkpointed. Until the
FLOPs target is reached (within ``tolerance`` below it) or the accuracy floor would be broken.
"""
from __future__ import annotations

import copy
import contextlib
import math
import os
import time
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from .. import distributed, flops, models, optim, saving
from ..errors import FxTaylorError
from ..graph import trace
from ..importance import (
    ActivationMeanImportance, ActivationStdImportance, RandomImportance, TaylorImportance, WeightImportance,
)
from ..importance.base import GraphImportance
from . import inputs, measure, state
from .result import PruneResult
from .select import cut, min_flops

DEFAULT_FLOPS_REG = 0.0
"""λ when none is given. The paper's 1e-3 is in its own (unstated) FLOPs units; ours are
"average maps" (docs/criterion.md). The quality study's sweep (docs/results.md: λ ∈ {0, 1e-3,
1e-2, 1e-1}, ResNet-18 on digits) found no λ > 0 better after recovery fine-tuning, so 0."""

PAPER_UPDATES = 30  # minibatch updates between prunings, Birds-200 / VGG-16 setting
MAPS_FRACTION = 0.01  # default maps per prune: 1 % of the prunable maps (see docs/usage.md)
CRITERIA = {
    "taylor": TaylorImportance, "weight": WeightImportance, "activation_mean": ActivationMeanImportance,
    "activation_std": ActivationStdImportance, "random": RandomImportance,
}
CHECKPOINT = "checkpoint.pt"
CHECKPOINT_FORMAT = "fxtaylor.checkpoint/1"


def prune(
    model: nn.Module,
    train_loader: Iterable,
    *,
    target_flops: float,
    loss_fn: Callable[[Any, Any], torch.Tensor] | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    updates_between_prunes: int = PAPER_UPDATES,
    maps_per_prune: int | None = None,
    flops_per_prune: float | None = None,
    round_to: int = 1,
    flops_reg: float = DEFAULT_FLOPS_REG,
    normalize: str | None = "l2",
    val_loader: Iterable | None = None,
    evaluate: Callable[[nn.Module], float] | None = None,
    min_accuracy: float | None = None,
    eval_every: int = 1,
    final_updates: int = 0,
    checkpoint_dir: str | os.PathLike | None = None,
    resume: bool = False,
    seed: int | None = None,
    arch: dict | None = None,
    ignored_layers: Iterable[nn.Module | str] = (),
    leaf_modules: Iterable[type | str | nn.Module] = (),
    tolerance: float = 0.01,
    measure_latency: bool = True,
    progress: bool = True,
    on_step: Callable[[dict], None] | None = None,
    criterion: str | Callable[..., GraphImportance] = "taylor",
) -> PruneResult:
    """Prune ``model`` (fine-tuned on the task of ``train_loader``) to ``target_flops`` × its
    FLOPs, fine-tuning all along. The model is pruned in place; see :class:`PruneResult`.

    ``train_loader`` yields ``(inputs, labels)``; ``loss_fn(outputs, labels)`` defaults to
    cross-entropy, ``optimizer`` to the paper's SGD (lr 1e-4, momentum 0.9, wd 1e-4).
    ``updates_between_prunes`` (paper: 30) updates observe the criterion before each pruning
    step, which removes ``maps_per_prune`` maps (default: 1 % of the prunable maps) ranked
    globally by ℓ2-normalised Taylor score minus ``flops_reg`` × FLOPs cost; or, with
    ``flops_per_prune``, as many maps as remove that fraction of the original FLOPs (so every
    criterion reaches a target in the same number of steps). ``round_to=8`` keeps every group
    at a multiple of 8 channels (kernel-friendly widths; docs/results.md). The run ends with
    FLOPs in ``[target·(1 − tolerance), target]`` × the original (slightly above only if no
    remaining map fits that band), and ``final_updates`` more updates.

    Accuracy: ``val_loader`` (top-1) or ``evaluate(model) -> float``, every ``eval_every``
    steps; with ``min_accuracy`` a step whose pruned model falls below it is undone and the run
    stops. ``checkpoint_dir`` gets the run state after every step; ``resume=True`` continues
    from it (pass the same unpruned model, loaders and settings). ``seed`` seeds torch, random,
    numpy and the train loader's own generator if it has one. ``arch`` is the model's arch
    record (:mod:`fxtaylor.models`) so the result can be loaded by name; custom models are
    loaded with ``fxtaylor.load(path, base=unpruned_model)``.

    ``criterion``: ``"taylor"`` (the paper's), or a baseline (``"weight"``,
    ``"activation_mean"``, ``"activation_std"``, ``"random"``), or any factory
    ``f(model, example_inputs, normalize=, flops_reg=, graph=) -> GraphImportance`` — e.g. a
    torch-pruning criterion through :class:`fxtaylor.importance.TorchPruningImportance` — all
    inside the same loop, for comparisons at equal fine-tuning budget. ``on_step(record)`` is
    called after each step's checkpoint.

    Distributed (torchrun, docs/distributed.md): call ``prune`` on every rank with the same
    model (bare or in ``DistributedDataParallel``), settings and a loader with a
    ``DistributedSampler``. Every rank's criterion is all-reduced before ranking, every rank
    removes the same channels, the DDP wrapper is rebuilt after each cut (the one passed in is
    spent after the first: use ``result.model``, the bare module), and only rank 0 writes the
    checkpoint.
    """
    inputs.check(target_flops, flops_reg, updates_between_prunes, maps_per_prune, min_accuracy,
                 val_loader, evaluate, eval_every, final_updates, tolerance, checkpoint_dir, resume)
    if flops_per_prune is not None and (maps_per_prune is not None or not 0 < flops_per_prune < 1):
        raise FxTaylorError(f"flops_per_prune must be in (0, 1) and excludes maps_per_prune, got {flops_per_prune!r}")
    if not (isinstance(round_to, int) and round_to >= 1):
        raise FxTaylorError(f"round_to must be an integer >= 1, got {round_to!r}")
    if isinstance(criterion, str) and criterion not in CRITERIA:
        raise FxTaylorError(f"unknown criterion {criterion!r}; choose one of {', '.join(CRITERIA)} or pass a GraphImportance factory")
    ckpt = _read_checkpoint(checkpoint_dir) if resume else None
    if seed is not None:
        state.seed_everything(seed)
        if isinstance(getattr(train_loader, "generator", None), torch.Generator):
            train_loader.generator.manual_seed(seed)  # it shuffles, not the global RNG
    ddp = model if distributed.is_ddp(model) else None  # the user's wrapper: used until the first cut
    model, ddp_kwargs = distributed.unwrap(model)
    progress = progress and distributed.is_main()  # one set of bars, not one per rank
    example = inputs.first_batch(train_loader)[0][:1].to(measure.device_of(model))
    run = _Run(model, train_loader, example, locals())
    return run.execute(ckpt)


def _read_checkpoint(ckpt_dir: str | os.PathLike) -> dict:
    ckpt = saving.safe_load(Path(ckpt_dir) / CHECKPOINT, "checkpoint")
    if ckpt.get("format") != CHECKPOINT_FORMAT:
        raise FxTaylorError(f"{Path(ckpt_dir) / CHECKPOINT} is not an fxtaylor checkpoint")
    return ckpt


class _Run:
    def __init__(self, model: nn.Module, loader: Iterable, example: torch.Tensor, args: dict[str, Any]):
        self.model, self.example, self.a = model, example, args
        self.device = measure.device_of(model)
        self.loss_fn = args["loss_fn"] or nn.CrossEntropyLoss()
        self.batches = state.Batches(loader)
        self.trace_kwargs = {
            "ignored_layers": inputs.names(model, args["ignored_layers"], False),
            "leaf_modules": inputs.names(model, args["leaf_modules"], True),
        }
        self.ckpt_path = Path(args["checkpoint_dir"]) / CHECKPOINT if args["checkpoint_dir"] is not None else None
        self.removed: list[int] = []
        self.history: list[dict[str, Any]] = []
        self.t0 = time.perf_counter()

    # -- setup -------------------------------------------------------------------------------

    def execute(self, ckpt: dict | None) -> PruneResult:
        a = self.a
        self.original = copy.deepcopy(self.model) if a["measure_latency"] else None
        self.layers_before = measure.out_channels(self.model)
        if ckpt is not None:
            graph = self._restore_model(ckpt)
        else:
            graph = trace(self.model, self.example, **self.trace_kwargs)
        self.opt = a["optimizer"]
        reduction = getattr(self.loss_fn, "reduction", "mean")
        factory = CRITERIA[a["criterion"]] if isinstance(a["criterion"], str) else a["criterion"]
        kwargs = {"normalize": a["normalize"], "flops_reg": a["flops_reg"], "graph": graph}
        if factory is TaylorImportance:
            kwargs["loss_reduction"] = "sum" if reduction == "sum" else "mean"
        self.imp = factory(self.model, self.example, **kwargs)
        self._check_same_on_every_rank(graph)
        if a["ddp"] is not None and ckpt is None:
            self.train_model = a["ddp"]  # a second wrapper would put a second set of hooks on every parameter
        else:  # (on resume the user's wrapper holds the unpruned parameters: replaced)
            self.train_model = distributed.wrap(self.model, a["ddp_kwargs"], a["ddp"])
        if ckpt is None:
            self._check_reachable()
            self.opt = self.opt or optim.paper_sgd(self.model)
            self.before = {"flops": self.imp.total_flops(), "params": measure.params(self.model), "accuracy": self._evaluate()}
            self.history.append(self._record(0, 0, None, self.before["accuracy"]))
            n_prunable = sum(g.num_prunable for g in graph.prunable_groups)
            self.k = a["maps_per_prune"] or max(1, math.ceil(MAPS_FRACTION * n_prunable))
        else:
            self._restore_run(ckpt)
        self.target = a["target_flops"] * self.before["flops"]
        t_prune = time.perf_counter()
        result = self._loop()
        self.timings = {"prune_s": time.perf_counter() - t_prune}
        return self._finish(result)

    def _check_same_on_every_rank(self, graph) -> None:
        """Under torch.distributed: the ranks must agree on the model and the settings that
        decide when they meet in a collective, or the first one would hang."""
        a = self.a
        settings = (a["target_flops"], a["updates_between_prunes"], a["maps_per_prune"], a["flops_per_prune"], a["round_to"],
                    a["flops_reg"], str(a["criterion"]), a["checkpoint_dir"] is None, a["eval_every"], a["final_updates"],
                    a["min_accuracy"], a["val_loader"] is None and a["evaluate"] is None, len(graph.groups))
        distributed.check_same("model architecture", distributed.architecture(self.model))
        distributed.check_same("pruning settings", settings)

    def _check_reachable(self) -> None:
        groups = self.imp.graph.prunable_groups
        if not groups:
            reasons = list(dict.fromkeys(g.frozen[0] for g in self.imp.graph.groups if g.frozen))
            raise FxTaylorError("nothing to prune: every channel group is frozen or at its minimum"
                                + (f" ({'; '.join(reasons[:3])}{'; ...' if len(reasons) > 3 else ''})" if reasons else ""))
        total = self.imp.total_flops()
        least = min_flops(self.imp, self.example, **self.trace_kwargs)
        if least > self.a["target_flops"] * total:
            raise FxTaylorError(
                f"target_flops={self.a['target_flops']} cannot be reached: pruning every prunable channel "
                f"leaves {least / total:.2%} of the FLOPs (the rest is in frozen groups or layers that are not pruned)"
            )

    def _restore_model(self, ckpt: dict) -> Any:
        """Rebuild the checkpoint's architecture from the unpruned model passed in."""
        old_names = {id(p): n for n, p in self.model.named_parameters()}
        arch = ckpt["arch"]
        if list(self.example.shape[1:]) != list(arch["input_shape"][1:]):
            raise FxTaylorError(f"the checkpoint was made with inputs {arch['input_shape']}, the loader gives {list(self.example.shape)}")
        graph = models.replay(self.model, arch["input_shape"], arch["trace"], arch["removed_units"])
        saving.load_state(self.model, ckpt["state_dict"], self.ckpt_path)
        opt = self.a["optimizer"]
        if opt is not None:  # point the user's optimizer at the rebuilt parameters
            new = dict(self.model.named_parameters())
            for pg in opt.param_groups:
                pg["params"] = [new[old_names[id(p)]] for p in pg["params"]]
        self.a["optimizer"] = opt or optim.paper_sgd(self.model)
        self.a["optimizer"].load_state_dict(ckpt["optimizer"])
        self.removed = list(arch["removed_units"])
        return graph

    def _restore_run(self, ckpt: dict) -> None:
        self.imp.load_state_dict(ckpt["importance"])
        self.before, self.history, self.k = ckpt["before"], ckpt["history"], ckpt["maps_per_prune"]
        self.t0 -= self.history[-1]["time_s"]
        mine = ckpt.get("ranks", [{"rng": ckpt["rng"], "data": ckpt["data"]}])
        if len(mine) != distributed.world_size():
            raise FxTaylorError(f"the checkpoint was written by {len(mine)} process(es), this run has {distributed.world_size()}")
        mine = mine[distributed.rank()]
        self.batches.restore(mine["data"])
        state.set_rng_state(mine["rng"])

    # -- the loop ----------------------------------------------------------------------------

    def _loop(self) -> tuple[bool, str]:
        a, F0 = self.a, self.before["flops"]
        bar = tqdm(total=round(100 * (1 - a["target_flops"]), 1), desc="pruning", unit="% FLOPs",
                   disable=not a["progress"], bar_format="{l_bar}{bar}| {n:.1f}/{total} {unit} [{elapsed}{postfix}]")
        bar.n = min(round(100 * (1 - self.imp.total_flops() / F0), 1), bar.total)
        bar.refresh()
        try:
            while True:
                if self.imp.total_flops() <= self.target:
                    return True, "target reached"
                step = len(self.history)
                loss = self._updates(a["updates_between_prunes"], step, observe=True)
                snapshot = copy.deepcopy((self.model, self.opt, self.removed)) if a["min_accuracy"] is not None else None
                self.imp.all_reduce()  # every rank ranks the union of the examples
                removed = self._cut()
                self.train_model = distributed.wrap(self.model, a["ddp_kwargs"], self.train_model)  # new parameter shapes
                self.imp.reset()
                if removed == 0:
                    band = self.imp.total_flops() <= self.target * (1 + a["tolerance"])
                    return band, "target reached" if band else "nothing left to prune"
                new_flops = self.imp.total_flops()
                done = new_flops <= self.target
                acc = self._evaluate() if (step % a["eval_every"] == 0 or done) else None
                rec = self._record(step, removed, loss, acc)
                if a["min_accuracy"] is not None and acc is not None and acc < a["min_accuracy"]:
                    rec["reverted"] = True
                    self.history.append(rec)
                    self.model, self.opt, self.removed = snapshot
                    self.train_model = distributed.wrap(self.model, a["ddp_kwargs"], self.train_model)
                    return False, f"accuracy floor: step {step} gave {acc:.2%} < {a['min_accuracy']:.2%}"
                self.history.append(rec)
                self._checkpoint()
                bar.n = min(round(100 * (1 - new_flops / F0), 1), bar.total)
                bar.set_postfix_str(f"step {step}, FLOPs {new_flops / F0:.1%}" + (f", acc {acc:.2%}" if acc is not None else ""))
                if a["on_step"] is not None:
                    a["on_step"](rec)
        finally:
            bar.close()

    def _updates(self, n: int, step: int | str, observe: bool) -> float | None:
        """``n`` training updates (observed by the criterion when ``observe``); mean loss."""
        if n == 0:
            return None
        self.model.train()
        total = 0.0
        bar = tqdm(range(n), desc=f"step {step}: {'observe' if observe else 'fine-tune'}", leave=False, disable=not self.a["progress"])
        ctx = self.imp.observe() if observe else contextlib.nullcontext()
        with ctx:
            for u in bar:
                x, y = self.batches.next()[:2]
                loss = self.loss_fn(self.train_model(x.to(self.device, non_blocking=True)), y.to(self.device, non_blocking=True))
                value = loss.detach().item()
                if distributed.active():  # a rank must not stop alone: the others would wait for it forever
                    bad = torch.tensor([float(not math.isfinite(value))], dtype=torch.float64, device=self.device)
                    value = math.nan if distributed.all_reduce_(bad, "max").item() else value
                if not math.isfinite(value):
                    where = f"the last good checkpoint is {self.ckpt_path}" if self.ckpt_path and self.ckpt_path.exists() else "no checkpoint was written"
                    raise FxTaylorError(f"the loss became {value} at step {step}, update {u + 1}; stopped ({where})")
                self.opt.zero_grad(set_to_none=True)
                loss.backward()
                self.opt.step()
                total += value
        return total / n

    def _cut(self) -> int:
        if self.a["flops_per_prune"]:
            step_target = max(self.target, self.imp.total_flops() - self.a["flops_per_prune"] * self.before["flops"])
            gone = cut(self.imp, step_target, None, self.a["tolerance"], self.opt, self.a["round_to"])
        else:
            gone = cut(self.imp, self.target, self.k, self.a["tolerance"], self.opt, self.a["round_to"])
        self.removed += gone
        # identical scores and a deterministic ranking make this hold; checked, never assumed
        distributed.check_same("channels removed", gone)
        return len(gone)

    # -- bookkeeping -------------------------------------------------------------------------

    def _evaluate(self) -> float | None:
        """Accuracy; under torch.distributed, rank 0's (one rank decides the accuracy floor)."""
        acc = None
        if self.a["evaluate"] is not None:
            acc = float(self.a["evaluate"](self.model))
        elif self.a["val_loader"] is not None:
            acc = measure.accuracy(self.model, self.a["val_loader"])
        return distributed.broadcast(acc)

    def _record(self, step: int | str, removed: int, loss: float | None, acc: float | None) -> dict[str, Any]:
        return {
            "step": step, "flops": self._flops(), "params": measure.params(self.model), "accuracy": acc,
            "loss": loss, "removed": removed, "time_s": round(time.perf_counter() - self.t0, 3),
        }

    def arch(self) -> dict:
        return {
            "kind": "pruned", "base": self.a["arch"] or {"kind": "custom"}, "input_shape": list(self.example.shape),
            "trace": self.trace_kwargs, "removed_units": list(self.removed),
        }

    def _checkpoint(self) -> None:
        if self.ckpt_path is None:
            return
        ranks = distributed.gather({"rng": state.rng_state(), "data": self.batches.position()})
        if not distributed.is_main():
            return
        imp = self.imp
        saving.atomic_save({
            "format": CHECKPOINT_FORMAT, "arch": self.arch(),
            "state_dict": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "optimizer": self.opt.state_dict(),
            "importance": {k: v.cpu() if isinstance(v, torch.Tensor) else v for k, v in imp.state_dict().items()},
            "rng": ranks[0]["rng"], "data": ranks[0]["data"], "ranks": ranks,
            "before": self.before, "history": self.history, "maps_per_prune": self.k,
        }, self.ckpt_path)

    def _finish(self, outcome: tuple[bool, str]) -> PruneResult:
        reached, reason = outcome
        a = self.a
        t = time.perf_counter()
        if a["final_updates"]:
            loss = self._updates(a["final_updates"], "final", observe=False)
            self.history.append(self._record("final", 0, loss, self._evaluate()))
        self.timings["final_s"] = time.perf_counter() - t
        last = self.history[-1]
        last_acc = last["accuracy"] if last["accuracy"] is not None and not last.get("reverted") else self._evaluate()
        after = {"flops": self._flops(), "params": measure.params(self.model), "accuracy": last_acc}
        speedup = None
        if self.original is not None:
            self.before["latency_ms"], after["latency_ms"] = measure.latency_ms([self.original, self.model], self.example)
            speedup = self.before["latency_ms"] / after["latency_ms"]
        if reached:
            reached = abs(after["flops"] / self.before["flops"] - a["target_flops"]) <= a["tolerance"] * a["target_flops"]
        layers_after = measure.out_channels(self.model)
        self.timings["total_s"] = time.perf_counter() - self.t0
        config = {k: a[k] for k in ("target_flops", "flops_reg", "normalize", "updates_between_prunes", "flops_per_prune", "round_to", "eval_every",
                                     "final_updates", "min_accuracy", "seed", "tolerance")}
        crit = a["criterion"]
        config.update(criterion=crit if isinstance(crit, str) else getattr(crit, "__name__", type(crit).__name__), maps_per_prune=self.k, model=models.base_name(self.arch()), optimizer=type(self.opt).__name__,
                      input_shape=list(self.example.shape))
        return PruneResult(
            model=self.model, arch=self.arch(), target_flops=a["target_flops"], reached=reached, stop_reason=reason,
            before=self.before, after=after, speedup=speedup, history=self.history,
            layers=[{"name": n, "before": c, "after": layers_after.get(n, 0)} for n, c in self.layers_before.items()],
            config=config, environment=measure.environment(self.device), timings=self.timings,
        )

    def _flops(self) -> int:
        """FLOPs of the model now; after an accuracy-floor revert the criterion's graph
        belongs to the discarded model, so count afresh."""
        if self.imp.model is self.model:
            return self.imp.total_flops()
        return flops.count(self.model, self.example)[0]
