"""Schedule.quick() (``fxtaylor prune --quick``): fewer, larger steps to the same target; and the
run's predicted remaining time, printed once after the first steps and recorded in the report.

Small on purpose (one CPU thread): torchvision's ResNet-18 on 32×32 digits, one update between
steps (what is compared is how far a step goes, not how well the model recovers), no latency
measurement. No wall-clock assertion: the prediction is checked in steps, not seconds."""
import dataclasses

import pytest
import torch
import torchvision
from torch.utils.data import DataLoader

import fxtaylor
from fxtaylor import FxTaylorError, Schedule
from fxtaylor.cli import build_parser, schedule_of
from fxtaylor.datasets import digits
from fxtaylor.pruner import eta as eta_mod

TARGET = 0.7  # paper schedule: ~47 steps on this model; quick: 6
ONE_UPDATE = dict(updates_between_prunes=1)
RUN = dict(target_flops=TARGET, progress=False, measure_latency=False, seed=0)


def resnet18():
    torch.manual_seed(0)
    return torchvision.models.resnet18(num_classes=10)


def train_loader():
    return DataLoader(digits("train", size=32, channels=3), batch_size=16, shuffle=True,
                      generator=torch.Generator().manual_seed(0))


def steps_of(result):
    return [h for h in result.history if isinstance(h["step"], int) and h["step"] > 0]


@pytest.fixture(scope="module")
def runs():
    """Both schedules to the same target from the same model and data."""
    return {name: fxtaylor.prune(resnet18(), train_loader(), schedule=sched, **RUN)
            for name, sched in (("paper", Schedule(**ONE_UPDATE)), ("quick", Schedule.quick(**ONE_UPDATE)))}


def test_quick_takes_fewer_larger_steps_and_still_reaches_the_target(runs):
    paper, quick = runs["paper"], runs["quick"]
    for r in (paper, quick):
        assert r.reached and r.stop_reason == "target reached"
        assert TARGET * (1 - 0.01) <= r.flops_ratio <= TARGET
    # 5 % of the dense FLOPs a step: 6 steps to 0.7 (the last one lands in the band)
    assert len(steps_of(quick)) == 6
    assert len(steps_of(paper)) >= 3 * len(steps_of(quick))
    dense = quick.history[0]["flops"]
    steps = [quick.history[0], *steps_of(quick)]
    drops = [(a["flops"] - b["flops"]) / dense for a, b in zip(steps, steps[1:])]
    assert all(d == pytest.approx(0.05, rel=0.02) for d in drops[:-1])  # the last lands in the band
    assert quick.history[-1]["step"] == "final"  # its recovery updates after the last, larger cut
    assert quick.config["flops_per_prune"] == 0.05 and quick.config["updates_between_prunes"] == 1
    assert paper.config["flops_per_prune"] is None  # the paper's schedule stays the default


def test_the_prediction_is_recorded_and_near_the_steps_that_followed(runs):
    for name, r in runs.items():
        eta = r.timings["eta"]
        assert eta["after_step"] == eta_mod.ETA_AFTER and eta["from_steps"] == [1, eta_mod.ETA_AFTER]
        assert eta["steps_left"] >= 1 and eta["seconds_left"] > 0 and eta["step_s"] > 0
        assert eta["actual_steps_left"] == len(steps_of(r)) - eta_mod.ETA_AFTER
        if name == "quick":  # equal steps by construction: exact
            assert eta["steps_left"] == eta["actual_steps_left"] == 3
            assert eta["per_step"] == pytest.approx(0.05, rel=0.02)
        else:  # a fixed number of maps removes a varying share of the FLOPs: a generous factor
            assert 0.5 <= eta["steps_left"] / eta["actual_steps_left"] <= 2, eta


def test_the_default_schedule_is_the_papers_and_quick_overrides_win():
    assert Schedule() == Schedule(updates_between_prunes=30, maps_per_prune=None, per_prune=None)
    q = Schedule.quick()
    assert (q.updates_between_prunes, q.per_prune, q.maps_per_prune) == (10, 0.05, None)
    assert q.final_updates == 50 and q.eval_every == 1 and q.min_accuracy is None
    assert Schedule.quick(updates_between_prunes=20) == dataclasses.replace(q, updates_between_prunes=20)
    assert dataclasses.replace(q, final_updates=0) == Schedule(updates_between_prunes=10, per_prune=0.05)
    # a step size given replaces the preset's other kind; both at once is still refused
    assert (Schedule.quick(maps_per_prune=40).maps_per_prune, Schedule.quick(maps_per_prune=40).per_prune) == (40, None)
    assert Schedule(maps_per_prune=40).override(per_prune=0.1) == Schedule(per_prune=0.1)
    with pytest.raises(FxTaylorError, match="not both"):
        Schedule.quick(maps_per_prune=40, per_prune=0.1)
    with pytest.raises(FxTaylorError, match="updates_between_prunes must be an integer >= 1"):
        Schedule.quick(updates_between_prunes=0)


def test_keywords_win_over_a_schedule_passed_to_prune_and_pruner():
    x = torch.zeros(1, 3, 32, 32)
    pruner = fxtaylor.Pruner(resnet18(), x, target_flops=0.5, schedule=Schedule.quick(), progress=False)
    assert pruner.schedule == Schedule.quick()
    pruner = fxtaylor.Pruner(resnet18(), x, target_flops=0.5, schedule=Schedule.quick(), maps_per_prune=7, progress=False)
    assert (pruner.schedule.maps_per_prune, pruner.schedule.per_prune, pruner.k) == (7, None, 7)
    r = fxtaylor.prune(resnet18(), train_loader(), schedule=Schedule.quick(), flops_per_prune=0.1, final_updates=0,
                       **{**RUN, **ONE_UPDATE, "target_flops": 0.8})
    assert r.config["flops_per_prune"] == 0.1 and r.config["updates_between_prunes"] == 1 and len(steps_of(r)) == 2


def parse(*argv):
    return build_parser().parse_args(["prune", *argv])


def test_command_line_quick_is_schedule_quick_and_flags_win():
    assert schedule_of(parse("--quick")) == Schedule.quick()
    assert schedule_of(parse("--quick", "--data", "DIR")) == Schedule.quick()  # 10 updates on any data
    assert schedule_of(parse()) == Schedule(updates_between_prunes=10)  # the paper's steps; 10 updates on digits
    assert schedule_of(parse("--data", "DIR")) == Schedule()  # the paper's: 30 updates, 1 % of the maps
    assert schedule_of(parse("--quick", "--updates-between-prunes", "4")) == Schedule.quick(updates_between_prunes=4)
    assert schedule_of(parse("--quick", "--maps-per-prune", "40")) == \
        Schedule(updates_between_prunes=10, maps_per_prune=40, final_updates=50)
    assert schedule_of(parse("--quick", "--final-updates", "0")).final_updates == 0
    assert schedule_of(parse("--quick", "--flops-per-prune", "0.1", "--final-updates", "20")) == \
        Schedule.quick(per_prune=0.1, final_updates=20)
    with pytest.raises(SystemExit):  # the parser keeps refusing bad values with the library's message
        parse("--quick", "--flops-per-prune", "1.5")


@pytest.mark.parametrize("progress", [True, False])
def test_the_remaining_time_is_printed_once_with_progress_only(capsys, progress):
    r = fxtaylor.prune(resnet18(), train_loader(), schedule=Schedule.quick(**ONE_UPDATE),
                       **{**RUN, "progress": progress})
    assert r.reached and len(steps_of(r)) == 6
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "more step" in line]
    if progress:
        assert len(lines) == 1, err
        assert lines[0].strip().startswith("pruning: ≈ 3 more steps, about ")
        assert " with the 50 final updates (from steps 1–3: " in lines[0]
        assert "(from steps 1–3: 5.0 % of the FLOPs and " in lines[0]
    else:
        assert lines == [] and "pruning" not in err
    assert r.timings["eta"]["steps_left"] == r.timings["eta"]["actual_steps_left"] == 3  # recorded either way


def test_eta_arithmetic():
    """Steps of 10 s (5 s of it updates) removing 5 % of the FLOPs each: the updates ahead speed
    up with the FLOPs left, the rest of a step stays as measured."""
    eta = eta_mod.Eta(stop_at=0.5, updates=10, final_updates=30, start=0.0)
    for i, flops in enumerate((100, 95), start=1):
        eta.updated(5.0)
        assert eta.step(i, 0.05, flops / 100 - 0.05, (flops, flops - 5), 10.0 * i) == (None, None)
    eta.updated(5.0)
    pred, first = eta.step(3, 0.05, 0.85, (90, 85), 30.0)
    assert first == pred and pred["steps_left"] == 7  # 0.35 / 0.05, not 8 from float noise
    per_flop = 15 / (100 + 95 + 90)  # update seconds per FLOP trained
    trained = sum(85 - 5 * j for j in range(7))  # the FLOPs of the 7 steps left while they train
    assert pred["seconds_left"] == pytest.approx(7 * 5 + per_flop * trained + per_flop * 50 * 30 / 10, rel=1e-4)
    assert eta_mod.eta_line(pred, "FLOPs") == ("≈ 7 more steps, about 1 min 09 s with the 30 final updates (from steps 1–3: "
                                            "5.0 % of the FLOPs and 10.0 s each; updates scaled to the FLOPs left)")
    pred, first = eta.step(4, 0.0, 0.85, (85, 85), 40.0)  # later: the latest steps, and no second first line
    assert first is None and pred["from_steps"] == [2, 4]
    stuck = eta_mod.Eta(stop_at=0.5, updates=10, final_updates=0, start=0.0)  # a measured resource that did not fall
    assert [stuck.step(i, d, 0.9, (80, 80), 10.0 * i) for i, d in ((1, 0.0), (2, 0.01), (3, -0.01))][-1] == (None, None)
    assert stuck.first is None
    assert eta_mod.about(7.4) == "7 s" and eta_mod.about(130) == "2 min 10 s" and eta_mod.about(7380) == "2 h 03 min"
