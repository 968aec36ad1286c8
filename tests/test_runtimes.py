"""The runtime is part of the deployment: ONNX Runtime, torch.compile, TensorRT (issue 21).

Every latency — tables, the check of each cut, the before/after numbers — is timed in
``Deployment.runtime``. These tests check that the runtime really runs the model (its outputs,
its sessions, its compiled graphs), that each runtime's settings are refused up front when they
cannot hold, and that a latency-targeted run measures and reports in the runtime. Tiny models,
one thread (see tests/test_latency.py for why).
"""
import copy
import sys

import pytest
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, TensorDataset

import fxtaylor
from fxtaylor.errors import FxTaylorError
from fxtaylor.latency import Deployment, LatencyModel, measure
from fxtaylor.latency import deployment as deployment_mod
from fxtaylor.latency.runtimes import RUNTIMES, runtime_of, vector_floats

ORT = Deployment(device="cpu", threads=1, runtime="onnxruntime")


def net(width: int = 16) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
        nn.Conv2d(width, 32, 3, stride=2, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10),
    ).eval()


X = torch.randn(1, 3, 32, 32)


# -- choosing a runtime: refused up front when it cannot hold -------------------------------


@pytest.mark.parametrize("bad", ["onnx", "ORT", "", 3, None])
def test_unknown_runtime_is_one_error(bad):
    with pytest.raises(FxTaylorError, match="latency runtime .* is unknown: use one of eager, onnxruntime, torch.compile"):
        Deployment(runtime=bad)


def test_missing_package_says_what_to_install(monkeypatch):
    model = net()
    before = copy.deepcopy(model.state_dict())
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime now fails
    with pytest.raises(FxTaylorError, match=r"needs the onnxruntime package.*pip install 'fxtaylor\[deploy\]'"):
        Deployment(runtime="onnxruntime").resolved(model)
    with pytest.raises(FxTaylorError, match="onnxruntime package"):
        measure([model], X, Deployment(runtime="onnxruntime"))
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


def test_tensorrt_without_gpu_or_package_is_refused():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the refusal is for machines without it")
    with pytest.raises(FxTaylorError, match="tensorrt"):
        Deployment(runtime="tensorrt").resolved(net())


def test_onnx_has_no_channels_last():
    with pytest.raises(FxTaylorError, match="onnxruntime latency runtime has no channels_last"):
        Deployment(runtime="onnxruntime", memory_format="channels_last").resolved(net())
    assert Deployment(runtime="onnxruntime").resolved(net()).memory_format == "contiguous"
    # eager keeps the device's default
    assert Deployment().resolved(net()).memory_format == deployment_mod.DEFAULT_MEMORY_FORMAT["cpu"]


def test_runtime_names_itself_in_key_description_and_how_to_run():
    m = net()
    eager, ort = Deployment(threads=1).resolved(m), ORT.resolved(m)
    assert "onnxruntime" not in eager.key() and "eager" not in eager.key()  # eager caches keep their old keys
    assert f"onnxruntime{RUNTIMES['onnxruntime'].version()}" in ort.key()
    assert eager.describe().endswith("eager PyTorch")
    assert ort.describe().endswith(f"ONNX Runtime {RUNTIMES['onnxruntime'].version()}")
    assert "InferenceSession" in ort.how_to_run() and "intra_op_num_threads = 1" in ort.how_to_run()
    assert "torch.compile(model)" in Deployment(runtime="torch.compile").how_to_run()
    # a report written before runtimes existed: eager
    assert deployment_mod.describe({"device": "cpu", "batch_size": 1, "dtype": "float32"}).endswith("eager PyTorch")
    assert ort.as_dict()["runtime"] == "onnxruntime" and ort.as_dict()["runtime_version"]


def test_compile_tables_are_eager_others_their_own():
    assert Deployment(runtime="torch.compile").for_tables().runtime == "eager"
    assert ORT.for_tables().runtime == "onnxruntime"
    assert Deployment().for_tables().runtime == "eager"


# -- ONNX Runtime runs the exported model ----------------------------------------------------


def test_onnxruntime_runner_runs_the_model_and_caches_its_session():
    m, ort = net(), runtime_of("onnxruntime")
    dep = ORT.resolved(m)
    run = ort.runner(m, (X,), dep)
    with torch.no_grad():
        want = m(X)
    got = torch.from_numpy(run()[0])
    assert (got - want).abs().max() <= 1e-4 * want.abs().max()
    built = ort.exports
    ort.runner(copy.deepcopy(m), (X,), dep)  # same structure and shapes: the cached session
    assert ort.exports == built
    ort.runner(net(24), (X,), dep)  # another width: exported once more
    assert ort.exports == built + 1


def test_measure_in_onnxruntime_times_the_session():
    a, b = net(), net(64)
    ort = runtime_of("onnxruntime")
    built = ort.exports
    ta, tb = measure([a, b], X, ORT, min_run_time=0.2)
    assert ort.exports <= built + 2 and ta.median_ms > 0 and tb.median_ms > 0
    assert ta.setup_s > 0 and tb.setup_s > 0  # export + session, outside the timed blocks
    # four times the first conv's outputs, twice the second's inputs: measurably slower in ORT too
    assert tb.median_ms > ta.median_ms


def test_latency_model_in_onnxruntime(tmp_path):
    m = net()
    lm = LatencyModel.build(m, X, ORT, cache_dir=tmp_path, progress=False)
    assert lm.deployment.runtime == "onnxruntime"
    assert lm.predict({}) == pytest.approx(lm.dense_ms, rel=1e-9)
    assert lm.path.parent.parent.name == ORT.resolved(m).key()  # its own cache, apart from eager's
    again = LatencyModel.load(lm.path.parent.parent, m, X)  # copied to another machine: the runtime comes along
    assert again.deployment.runtime == "onnxruntime" and again.dense_ms == lm.dense_ms


def test_latency_target_measured_and_reported_in_onnxruntime(tmp_path, monkeypatch):
    monkeypatch.setenv("FXTAYLOR_CACHE", str(tmp_path))
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(),
        nn.Conv2d(64, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10),
    )
    data = TensorDataset(torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,)))
    ort = runtime_of("onnxruntime")
    built = ort.exports
    res = fxtaylor.prune(model, DataLoader(data, batch_size=4), target_latency=0.6, flops_per_prune=0.15,
                         updates_between_prunes=1, optimizer=torch.optim.SGD(model.parameters(), lr=0.0),
                         deployment=Deployment(threads=1, runtime="onnxruntime"), progress=False, seed=0)
    assert res.config["deployment"]["runtime"] == "onnxruntime"
    assert "ONNX Runtime" in res.summary()
    assert ort.exports > built + 1  # every cut checked was exported and run in ORT
    ratios = [h["latency_ratio"] for h in res.history if "latency_ratio" in h]
    assert len(ratios) >= 2 and res.after["latency_ratio"] < 1.0
    # ONNX Runtime's CPU convs work in blocks of one vector register: widths stay multiples of it
    block = runtime_of("onnxruntime").multiple("cpu")
    assert block == vector_floats() and block in (4, 8, 16) and runtime_of("eager").multiple("cpu") == 1
    widths = [m.out_channels for m in res.model.modules() if isinstance(m, nn.Conv2d)]
    assert widths != [64, 64] and all(w % block == 0 for w in widths), widths


# -- torch.compile --------------------------------------------------------------------------


def test_torch_compile_compiles_what_it_times():
    from torch._dynamo.utils import counters

    m = net()
    dep = Deployment(threads=1, runtime="torch.compile")
    graphs = counters["stats"]["unique_graphs"]
    a, b = measure([m, net(24)], X, dep, min_run_time=0.1)
    assert counters["stats"]["unique_graphs"] >= graphs + 2  # two widths: two compiled graphs, timed
    assert a.setup_s > 0 and b.setup_s > 0
    # many widths of one model class in one process: never past dynamo's recompile limit (which
    # would fall back to eager silently; the runtime makes hitting it an error)
    for w in range(17, 29):
        measure([net(w)], X, dep, min_run_time=0.01, rounds=1)


@pytest.mark.cuda
def test_tensorrt_on_cuda():
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    pytest.importorskip("torch_tensorrt")
    m = net().cuda()
    (t,) = measure([m], X.cuda(), Deployment(runtime="tensorrt", memory_format="contiguous"), min_run_time=0.1)
    assert t.median_ms > 0


def test_a_model_the_runtime_cannot_take_fails_before_the_run(tmp_path, monkeypatch):
    """An op the ONNX exporter lacks: one error before anything is pruned, trained or written."""
    monkeypatch.setenv("FXTAYLOR_CACHE", str(tmp_path / "cache"))

    class Histogram(nn.Module):  # torch.histc has no ONNX translation at this range
        def forward(self, x):
            return x + torch.histc(x, 4).sum() * 0

    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), Histogram(), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(8, 10))
    before = copy.deepcopy(model.state_dict())
    data = TensorDataset(torch.randn(8, 3, 16, 16), torch.randint(0, 10, (8,)))
    for target in ({"target_flops": 0.5}, {"target_latency": 0.5}):  # measured before/after, or the target itself
        with pytest.raises(FxTaylorError, match=r"cannot be timed in ONNX Runtime: .*histc"):
            fxtaylor.prune(model, DataLoader(data, batch_size=4), **target, checkpoint_dir=tmp_path / "run",
                           deployment=Deployment(threads=1, runtime="onnxruntime"), progress=False)
        assert not (tmp_path / "run").exists() and model.training
        assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert [m for m in model.modules() if m._forward_hooks] == []


def test_not_faster_after_a_measured_target_does_not_advise_measuring():
    from fxtaylor.latency.verdict import not_faster

    counted = not_faster(1.0, 0.02, "cpu")
    measured = not_faster(1.0, 0.02, "cpu", measured=True)
    assert "--target-latency" in counted and "--target-latency" not in measured
    assert "cannot remove" in measured and not_faster(0.5, 0.02, measured=True) is None


def test_check_runtime_runs_only_what_has_something_to_build(monkeypatch):
    """``check_runtime`` (prune's up-front check) neither copies nor runs the model in eager
    PyTorch on its own device and dtype, where the first batch already ran it (a runtime row
    says it: ``builds``); it does in a runtime that builds (ONNX Runtime's export) and in eager
    at another dtype."""
    from fxtaylor.latency import runtimes, timing

    assert [name for name, rt in RUNTIMES.items() if not rt.builds] == ["eager"]
    built = []
    real = runtimes.run_once
    monkeypatch.setattr(timing, "run_once", lambda m, args, dep: built.append(dep.dtype) or real(m, args, dep))
    model = net()
    timing.check_runtime(model, X, Deployment(threads=1))
    assert built == []
    timing.check_runtime(model, X, Deployment(threads=1, dtype="bfloat16"))
    assert built == ["bfloat16"]
    timing.check_runtime(model, X, ORT)
    assert built == ["bfloat16", "float32"]
