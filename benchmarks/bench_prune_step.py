"""One pruning step on ResNet-50: fxtaylor's rank + surgery + FLOPs refresh ÷ torch-pruning's
``BasePruner.step()`` removing about the same number of conv output channels.

Goal: ``ratio_vs_tp_step`` ≤ 2.

fxtaylor's side is what its loop does once per step (``fxtaylor.prune``): ``cut(imp, 0, k=K)``
with K = 1 % of the prunable maps (the loop's default ``maps_per_prune``: 115 on ResNet-50) — global
ranking, then torch-pruning's per-layer functions through the channel graph — followed by the
fvcore re-count ``imp.total_flops()`` the loop needs after every cut. The criterion is
``WeightImportance`` (scores from the weights, so no training steps are needed to rank).
torch-pruning's side is ``BasePruner(..., GroupMagnitudeImportance(p=2), global_pruning=True,
ignored_layers=[fc]).step()``: ranking (its groups are re-collected inside ``step``) and surgery;
it counts no FLOPs.

What is not timed, on either side: building the model and the graph (``WeightImportance``
traces, ``BasePruner`` builds its ``DependencyGraph``): both are built once per run, not per
step. Pruning is destructive, so every timed step gets a fresh model built before its timer
starts, and the two sides alternate round by round (``interleaved_step_medians``).

Equal work: the criteria differ, so equal *maps* need not mean equal *channels* (a map of a
residual group is one output channel of every conv feeding the add). torch-pruning's
``pruning_ratio`` is calibrated (outside the timing) so that it removes about as many conv output
channels as fxtaylor's K maps; both counts, and both map counts, are in ``extra_info``. The split
of fxtaylor's step (rank/select, surgery, fvcore refresh) is in ``extra_info`` too, so a miss
can be explained.
"""
import functools
import gc
import math
import statistics
import time
from contextlib import ExitStack
from unittest import mock

import torch
import torch.nn as nn
import torch_pruning as tp
import torchvision

import fxtaylor
from fxtaylor.pruner import select as select_module
from fxtaylor.pruner.pruner import MAPS_FRACTION
from fxtaylor.pruner.select import cut
from ratios import report

ROUNDS = 7


def fresh_model():
    torch.manual_seed(0)  # identical weights every round: both sides remove the same maps each time
    return torchvision.models.resnet50(weights=None)


def conv_out_channels(model):
    return sum(m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d))


def maps_per_step(imp):
    """The loop's default maps_per_prune (``fxtaylor.pruner.pruner``)."""
    return max(1, math.ceil(MAPS_FRACTION * sum(g.num_prunable for g in imp.graph.prunable_groups)))


def ours_prepare(x):
    model = fresh_model()
    imp = fxtaylor.WeightImportance(model, x)
    # The loop has counted the current architecture's FLOPs before every step (at the start, or
    # the previous step's refresh), so the per-unit costs are cached when a step begins.
    imp.total_flops()
    return imp


def ours_step(imp, k):
    removed = cut(imp, 0, k=k)
    flops = imp.total_flops()  # the refresh: fvcore re-counts the pruned model
    return removed, flops


def tp_prepare(x, ratio):
    model = fresh_model()
    pruner = tp.pruner.BasePruner(
        model, x, importance=tp.importance.GroupMagnitudeImportance(p=2), global_pruning=True,
        pruning_ratio=ratio, ignored_layers=[model.fc],
    )
    return model, pruner


def tp_removed(x, ratio):
    """(maps, conv output channels) one ``step()`` of torch-pruning removes at ``ratio``; the
    interactive step yields the same groups ``step()`` prunes, so the maps can be counted."""
    model, pruner = tp_prepare(x, ratio)
    before, maps = conv_out_channels(model), 0
    for group in pruner.step(interactive=True):
        maps += len(group[0].idxs)
        group.prune()
    return maps, before - conv_out_channels(model)


def calibrate_tp_ratio(x, ratio, removed, channels):
    """Rescale torch-pruning's ``ratio`` (which removed ``removed`` = (maps, conv output
    channels)) by its channel shortfall until it removes about ``channels`` conv output channels."""
    for _ in range(6):
        if abs(removed[1] / channels - 1) < 0.1:
            break
        ratio = min(ratio * channels / max(removed[1], 1), 0.5)
        removed = tp_removed(x, ratio)
    return ratio, removed


def interleaved_step_medians(cases, rounds):
    """Median seconds of each ``step(prepare())``, timing only the step; the cases alternate
    round by round so drift hits them alike. Each round prepares fresh state (pruning is
    destructive) and collects garbage outside the timer."""
    times = [[] for _ in cases]
    for _ in range(rounds):
        for i, (prepare, step) in enumerate(cases):
            state = prepare()
            gc.collect()
            t = time.perf_counter()
            step(state)
            times[i].append(time.perf_counter() - t)
            del state
    return [statistics.median(t) for t in times]


class StepSplit:
    """Times the parts of fxtaylor's step per call: ``select`` (global ranking and choice) and
    ``prune_keeping_state`` (surgery), patched with timing wrappers; the refresh is timed by the
    step itself. The wrappers cost microseconds against a step of a second."""

    KEYS = ("rank_select_s", "surgery_s", "flops_refresh_s")

    def __init__(self):
        self.rounds = []

    def new_round(self):
        self.rounds.append(dict.fromkeys(self.KEYS, 0.0))

    def _timed(self, fn, key):
        @functools.wraps(fn)
        def timed(*args, **kwargs):
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.rounds[-1][key] += time.perf_counter() - t
        return timed

    def patch(self):
        stack = ExitStack()
        stack.enter_context(mock.patch.object(select_module, "select", self._timed(select_module.select, "rank_select_s")))
        stack.enter_context(mock.patch.object(
            fxtaylor.ChannelGraph, "prune_many", self._timed(fxtaylor.ChannelGraph.prune_many, "surgery_s")))
        return stack

    def step(self, imp, k):
        removed = cut(imp, 0, k=k)
        t = time.perf_counter()
        imp.total_flops()
        self.rounds[-1]["flops_refresh_s"] += time.perf_counter() - t
        return removed

    def medians(self):
        return {k: round(statistics.median(r[k] for r in self.rounds), 4) for k in self.KEYS}


def test_prune_step_vs_tp_step(benchmark):
    x = torch.randn(1, 3, 224, 224)
    probe = ours_prepare(x)
    k = maps_per_step(probe)
    f0, c0 = probe.total_flops(), conv_out_channels(probe.model)
    del probe

    last = {}

    def setup():
        last["imp"] = ours_prepare(x)
        return (last["imp"], k), {}

    removed, flops = benchmark.pedantic(ours_step, setup=setup, rounds=3, warmup_rounds=0)
    assert len(removed) == len(set(removed)) == k
    assert 0 < flops < f0
    # what one of our steps removes, and a model that still runs after it
    model = last.pop("imp").model
    ours_channels = c0 - conv_out_channels(model)
    assert ours_channels >= k  # every map is at least one conv's output channel
    with torch.no_grad():
        assert model.eval()(x).shape == (1, 1000)
    del model

    # torch-pruning at the same number of maps: it runs and removes channels
    initial_total = tp_prepare(x, MAPS_FRACTION)[1].initial_total_channels
    tp_maps, tp_channels = tp_removed(x, k / initial_total)
    assert tp_maps >= k and tp_channels >= tp_maps
    if benchmark.disabled:
        return

    # at equal maps the channel counts differ (the criteria pick different groups): recorded, then calibrated
    benchmark.extra_info["tp_at_equal_maps"] = {"maps": tp_maps, "conv_out_channels": tp_channels}
    ratio, (tp_maps, tp_channels) = calibrate_tp_ratio(x, k / initial_total, (tp_maps, tp_channels), ours_channels)
    benchmark.extra_info.update(
        maps_removed={"fxtaylor": k, "torch_pruning": tp_maps},
        conv_out_channels_removed={"fxtaylor": ours_channels, "torch_pruning": tp_channels},
        tp_pruning_ratio=round(ratio, 5),
    )
    assert 1 / 1.5 <= tp_channels / ours_channels <= 1.5, (tp_channels, ours_channels)

    split = StepSplit()

    def ours_prepare_split():
        split.new_round()
        return ours_prepare(x)

    with split.patch():
        ours, theirs = interleaved_step_medians(
            [(ours_prepare_split, lambda imp: split.step(imp, k)), (lambda: tp_prepare(x, ratio)[1], lambda p: p.step())],
            rounds=ROUNDS,
        )
    benchmark.extra_info["median_step_s"] = {"fxtaylor": round(ours, 4), "torch_pruning": round(theirs, 4)}
    benchmark.extra_info["fxtaylor_step_split_s"] = split.medians()
    report(benchmark, "ratio_vs_tp_step", ours / theirs, 2.0)
