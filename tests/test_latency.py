"""fxtaylor.latency: the deployment's checks, the measuring function, the latency model.

Timings on a shared 2-core machine are noisy: every timing comparison here has a tolerance
taken from the measured noise, and the models are tiny (the whole file runs in seconds). Timing
uses one thread: two OpenMP threads on cores that other processes also want stall each other at
every barrier, and a stall turns a 0.1 ms layer into a 10 ms one.
"""
import copy
import json
import warnings

import pytest
import torch
import torch.nn as nn

from fxtaylor.errors import FxTaylorError
from fxtaylor.latency import Deployment, LatencyModel, Timing, measure, noise
from fxtaylor.latency import timing as timing_mod
from fxtaylor.latency.alignment import detect

CPU1 = Deployment(device="cpu", threads=1)


def small_net() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10),
    )


X = torch.randn(1, 3, 32, 32)
WIDTHS = {"0": (3, 16), "1": (16, 16), "2": (16, 16), "3": (16, 32), "4": (32, 32), "5": (32, 32), "6": (32, 32), "8": (32, 10)}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    torch.manual_seed(0)
    net = small_net()
    cache = tmp_path_factory.mktemp("latency-cache")
    lm = LatencyModel.build(net, X, CPU1, cache_dir=cache, progress=False)
    return net, cache, lm


def scaled(f: float) -> dict[str, tuple[int, int]]:
    """Every prunable count (all but the image channels and the classes) times ``f``."""
    s = lambda c: max(1, round(c * f))  # noqa: E731
    return {n: (3 if n == "0" else s(i), 10 if n == "8" else s(o)) for n, (i, o) in WIDTHS.items()}


# -- the latency model ----------------------------------------------------------------------


def test_model_covers_layers_and_dense_prediction_is_the_measurement(built):
    _, _, lm = built
    assert set(lm.layers) == {"0", "1", "2", "3", "4", "5", "6", "8"}  # Flatten: a view, not modelled
    assert "7" in lm.skipped
    assert lm.build_s > 0 and lm.dense_ms > 0
    assert lm.predict({}) == pytest.approx(lm.dense_ms, rel=1e-9)
    assert lm.predict(WIDTHS) == pytest.approx(lm.dense_ms, rel=1e-9)
    # a grid point reads back exactly, times the layer's scale
    assert lm.layer_ms("1", 16, 16) == pytest.approx(lm.layers["1"].ms[-1][0] * lm.layers["1"].scale)
    r = lm.dense_ms - lm.isolated_ms  # the measured remainder: half rides on the layers, half stays
    assert lm.scale == pytest.approx(1 + 0.5 * r / lm.isolated_ms) and lm.remainder_ms == pytest.approx(0.5 * r)
    assert all(lm.alignment(n) >= 1 for n in lm.layers)
    with pytest.raises(KeyError):
        lm.layer_ms("7", 32, 32)


def test_model_is_monotone_in_channel_counts_within_noise(built):
    _, _, lm = built
    preds = [lm.predict(scaled(f)) for f in (0.125, 0.25, 0.5, 0.75, 1.0)]
    # noise of a prediction: each table's relative spread times its share, summed
    tol = 2 * sum(t.spread * t(*WIDTHS[n]) for n, t in lm.layers.items()) + 1e-3
    for small, big in zip(preds, preds[1:]):
        assert small <= big + tol, (preds, tol)
    for name, t in lm.layers.items():
        # each layer: its fewest channels no slower than its dense counts, within its noise
        # (µs-sized layers jitter by their whole size: only the prediction's sum is compared)
        if t.ms[-1][-1] >= 0.05:
            assert t.ms[0][0] <= t.ms[-1][-1] * (1 + 3 * t.spread), (name, t.ms)


def test_cache_hit_measures_nothing(built, monkeypatch):
    net, cache, lm = built
    before = timing_mod.CALLS

    def no_timing(*a, **k):
        raise AssertionError("a cache hit timed something")

    monkeypatch.setattr(timing_mod, "time_calls", no_timing)
    again = LatencyModel.build(net, X, CPU1, cache_dir=cache, progress=False)
    assert timing_mod.CALLS == before and again.build_s == 0
    assert again.dense_ms == lm.dense_ms and again.predict(scaled(0.5)) == pytest.approx(lm.predict(scaled(0.5)))


def test_corrupt_cache_is_rebuilt_with_a_warning(built, tmp_path):
    net, cache, _ = built
    first = LatencyModel.build(net, X, CPU1, cache_dir=tmp_path, progress=False)
    table = next((tmp_path / CPU1.resolved(net).key() / "tables").glob("*.json"))
    table.write_text(table.read_text()[:40])  # truncated, as by a crash without atomic writes
    calls = timing_mod.CALLS
    with pytest.warns(UserWarning, match=f"latency cache file .*{table.name}.* is corrupt"):
        again = LatencyModel.build(net, X, CPU1, cache_dir=tmp_path, progress=False)
    assert timing_mod.CALLS > calls and again.build_s > 0
    assert json.loads(table.read_text())["format"] == "fxtaylor-latency-table"  # rewritten whole
    model_file = first.path
    model_file.write_text("{not json")
    with pytest.warns(UserWarning, match=f"latency cache file .*{model_file.name}.* is corrupt"):
        LatencyModel.build(net, X, CPU1, cache_dir=tmp_path, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # and the rebuilt files are good again
        LatencyModel.build(net, X, CPU1, cache_dir=tmp_path, progress=False)


def test_build_leaves_the_model_alone(tmp_path):
    net = small_net().train()
    state = copy.deepcopy(net.state_dict())
    LatencyModel.build(net, X, Deployment(threads=1, dtype="bfloat16"), cache_dir=tmp_path, progress=False)
    assert net.training
    assert all(torch.equal(state[k], v) for k, v in net.state_dict().items())


# -- measure() ------------------------------------------------------------------------------


def test_measure_leaves_models_untouched_and_times_without_their_hooks():
    net = small_net().train()
    state = copy.deepcopy(net.state_dict())
    seen = []
    net[0].register_forward_hook(lambda m, i, o: seen.append(o.shape))
    other = small_net().eval()
    out = measure([net, other], X, Deployment(threads=1, dtype="bfloat16", memory_format="channels_last", batch_size=2),
                  min_run_time=0.05, rounds=2)
    assert len(out) == 2 and all(isinstance(t, Timing) and t.median_ms > 0 and t.runs >= 2 for t in out)
    assert noise(out[0]) >= 0
    assert net.training and not other.training
    for k, v in net.state_dict().items():
        assert v.dtype == state[k].dtype and torch.equal(v, state[k]) and v.is_contiguous()
    assert seen == []  # the observer hook was neither timed nor fed


def test_measure_batches_the_example_to_the_deployment(monkeypatch):
    shapes = []
    real = timing_mod.time_calls

    def spy(calls, dep, **kw):
        shapes.extend((tuple(x.shape), x.dtype, x.is_contiguous(memory_format=torch.channels_last)) for _, x in calls)
        return real(calls, dep, **kw)

    monkeypatch.setattr(timing_mod, "time_calls", spy)
    measure([small_net()], torch.randn(7, 3, 32, 32), Deployment(threads=1, batch_size=3, dtype="bfloat16"), min_run_time=0.01, rounds=1)
    assert shapes == [((3, 3, 32, 32), torch.bfloat16, True)]  # CPU default format: channels_last


# -- Deployment -----------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs, message", [
    ({"dtype": "float64"}, "latency dtype 'float64' is unknown: use one of float32, float16, bfloat16"),
    ({"memory_format": "nhwc"}, "latency memory format 'nhwc' is unknown: use one of channels_last, contiguous"),
    ({"batch_size": 0}, "latency batch size must be a whole number ≥ 1, got 0"),
    ({"threads": 0}, "latency threads must be a whole number ≥ 1, got 0"),
])
def test_bad_deployment_settings(kwargs, message):
    with pytest.raises(FxTaylorError) as e:
        Deployment(**kwargs)
    assert str(e.value) == message


@pytest.mark.parametrize("device, message", [
    ("tpu", "latency device 'tpu' is unknown: use 'cpu' or 'cuda[:index]'"),
    ("gpu:0", "latency device 'gpu:0' is unknown: use 'cpu' or 'cuda[:index]'"),
    ("cuda:99", None),  # message depends on whether CUDA is here
])
def test_unknown_device(tmp_path, device, message):
    net = small_net()
    state = copy.deepcopy(net.state_dict())
    for call in (lambda: measure([net], X, Deployment(device=device)), lambda: LatencyModel.build(net, X, Deployment(device=device), cache_dir=tmp_path)):
        with pytest.raises(FxTaylorError) as e:
            call()
        if message:
            assert str(e.value) == message
        assert f"latency device {device!r}" in str(e.value) and "\n" not in str(e.value)
    assert all(torch.equal(state[k], v) for k, v in net.state_dict().items())
    assert not any(tmp_path.iterdir())  # nothing written


def test_dtype_the_device_cannot_run(cpu_without_half_conv, tmp_path):
    """Simulates a CPU build without float16 convolution kernels."""
    net = small_net()
    state = copy.deepcopy(net.state_dict())
    with pytest.raises(FxTaylorError) as e:
        LatencyModel.build(net, X, Deployment(dtype="float16"), cache_dir=tmp_path)
    assert str(e.value) == "latency dtype float16 cannot run on cpu (channels_last): \"slow_conv2d_cpu\" not implemented for 'Half'"
    assert all(torch.equal(state[k], v) for k, v in net.state_dict().items())


def test_resolved_and_key():
    net = small_net()
    d = Deployment().resolved(net)
    assert d.device == "cpu" and d.memory_format == "channels_last" and d.threads == torch.get_num_threads()
    assert Deployment(device="cpu").resolved(net) == d
    k = d.key()
    assert k == Deployment(device="cpu", threads=d.threads).resolved(net).key()
    assert "b1" in k and "float32" in k and "channels_last" in k and torch.__version__.split("+")[0] in k and "/" not in k
    assert Deployment(batch_size=2).resolved(net).key() != k
    assert json.dumps(d.as_dict())


# -- alignment detection --------------------------------------------------------------------


@pytest.mark.parametrize("pattern, expected", [
    ("staircase16", 16), ("staircase32", 32), ("penalty8", 8), ("linear", 1),
])
def test_alignment_detection(pattern, expected):
    g = torch.Generator().manual_seed(0)
    counts = list(range(320, 385))
    base = {
        "staircase16": lambda c: 16 * -(-c // 16), "staircase32": lambda c: 32 * -(-c // 32),
        "penalty8": lambda c: c + (0 if c % 8 == 0 else 30), "linear": lambda c: c,
    }[pattern]
    ms = [0.01 * base(c) + 0.01 * float(torch.randn(1, generator=g)) for c in counts]  # no fixed cost: steps ≈ 2 %
    assert detect(counts, ms, sigma=0.01)[0] == expected


# -- CUDA -----------------------------------------------------------------------------------


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_float16_channels_last(tmp_path):
    net = small_net().cuda()
    dep = Deployment(dtype="float16", memory_format="channels_last", batch_size=8)
    t = measure([net], X.cuda(), dep, min_run_time=0.1, rounds=2)[0]
    assert t.median_ms > 0
    assert next(net.parameters()).dtype == torch.float32
    lm = LatencyModel.build(net, X.cuda(), dep, cache_dir=tmp_path, progress=False)
    assert lm.deployment.device == "cuda:0" and lm.predict({}) == pytest.approx(lm.dense_ms)
    assert lm.predict(scaled(0.5)) > 0
