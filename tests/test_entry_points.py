"""Example inputs as torch-pruning takes them, checked at every entry point (issue 18, item 4).

Positive: a tensor (``model(x)``), a tuple or list of arguments (``model(*inputs)``), a list a
model takes whole (``model(inputs)``: a detection model's images) work at trace, Pruner and the
criteria, and the convention decided once is what later calls use. Negative: every public
entry point refuses bad arguments with one FxTaylorError line before anything changes (the
model's state dict with its buffers, its train/eval flags, the files)."""
import math
import os

import pytest
import torch
import torch.nn as nn
import torchvision

import fxtaylor
from fxtaylor import FxTaylorError
from fxtaylor.examples import Args
from fxtaylor.latency import Deployment, LatencyModel, measure, widths


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                  nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.pool, self.fc = nn.AdaptiveAvgPool2d(1), nn.Linear(8, 4)

    def forward(self, x):
        return self.fc(self.pool(self.body(x)).flatten(1))


class TwoFrames(nn.Module):
    """RAFT-style ``model(a, b)``: two images, features of each, their difference."""

    def __init__(self):
        super().__init__()
        self.enc = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU())
        self.head = nn.Conv2d(8, 2, 1)

    def forward(self, a, b):
        return self.head(self.enc(a) - self.enc(b))


class Images(nn.Module):
    """Takes a list of images (``model([img, ...])``), like torchvision's detection models."""

    def __init__(self):
        super().__init__()
        self.net = Net()

    def forward(self, images):
        return torch.cat([self.net(img[None]) for img in images])  # fx cannot iterate: traced in parts


X = torch.rand(1, 3, 8, 8)


def _model(cls=Net):
    torch.manual_seed(0)
    m = cls()
    m.train()
    m.body[1].eval() if cls is Net else None  # a module frozen in eval while the rest trains
    return m


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}, [(n, m.training) for n, m in model.named_modules()]


def _unchanged(model, before):
    state, flags = before
    now = model.state_dict()
    assert now.keys() == state.keys() and all(torch.equal(now[k], v) for k, v in state.items())  # buffers too
    assert [(n, m.training) for n, m in model.named_modules()] == flags


def _refused(call, message, model=None):
    """``call()`` raises one FxTaylorError line matching ``message``; ``model`` is untouched."""
    before = _state(model) if model is not None and not _is_meta(model) else None
    with pytest.raises(FxTaylorError, match=message) as e:
        call()
    assert "\n" not in str(e.value), str(e.value)
    if before is not None:
        _unchanged(model, before)
    return str(e.value)


def _is_meta(model):
    return any(p.is_meta for p in model.parameters())


# -- 1. both conventions, decided once -----------------------------------------------------------


def test_a_tensor_a_tuple_and_a_list_all_trace_and_record_the_arguments():
    m = _model()
    for example in (X, (X,), [X]):
        g = fxtaylor.trace(m, example)
        assert type(g.example_args) is Args and len(g.example_args) == 1 and g.example_args[0] is X
        assert len(g.prunable_groups) == 2
    two = _model(TwoFrames)
    a, b = torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 8)
    for example in ((a, b), [a, b]):  # model(*inputs)
        g = fxtaylor.trace(two, example)
        assert len(g.example_args) == 2 and g.example_args[0] is a
        assert g.group_of("enc.0") is not None and g.group_of("enc.0").prunable
    imgs = _model(Images)
    for example in ([X[0], X[0]], ([X[0], X[0]],)):  # model(inputs) where model(*inputs) fails; and the explicit form
        g = fxtaylor.trace(imgs, example)
        assert len(g.example_args) == 1 and isinstance(g.example_args[0], list)


def test_a_detection_model_traces_on_a_list_of_images():
    model = torchvision.models.detection.fasterrcnn_mobilenet_v3_large_320_fpn(
        weights=None, weights_backbone=None, num_classes=3, min_size=128, max_size=160).eval()
    image = torch.rand(3, 128, 160)
    before = _state(model)
    g = fxtaylor.trace(model, [image])  # model(image) fails, model([image]) runs: as torch-pruning takes it
    assert isinstance(g.example_args[0], list) and g.partial is not None and g.prunable_groups
    _unchanged(model, before)


def test_the_recorded_convention_is_what_later_calls_use(monkeypatch):
    from fxtaylor import examples

    calls = []
    real = examples.run
    monkeypatch.setattr(examples, "run", lambda model, args: calls.append(len(args)) or real(model, args))
    two = _model(TwoFrames)
    a, b = torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 8)
    pruner = fxtaylor.Pruner(two, [a, b], target_flops=0.6, maps_per_prune=2, progress=False)
    assert calls == [2]  # decided once, by one run: model(a, b)
    assert type(pruner.example) is Args and len(pruner.example) == 2
    assert pruner.imp.example_inputs is pruner.example and pruner.graph.example_args is pruner.example
    imp = fxtaylor.TaylorImportance(two, pruner.graph.example_args, graph=pruner.graph)  # decided: not run again
    g = fxtaylor.trace(two, pruner.example)
    assert calls == [2] and imp.example_inputs is pruner.example and g.example_args is pruner.example
    imp = fxtaylor.TaylorImportance(two, [a, b])  # a new example: decided (and checked) again, once
    assert calls == [2, 2] and len(imp.example_inputs) == 2
    with imp.observe():  # observes model(a, b) training steps
        two(a, b).square().mean().backward()
    assert imp.group_scores(imp.graph.group_of("enc.0")).abs().sum() > 0
    # the list-taking model: model(*inputs) fails, model(inputs) is recorded and used from then on
    imgs = _model(Images)
    calls.clear()
    pruner = fxtaylor.Pruner(imgs, [X[0], X[0]], target_flops=0.6, maps_per_prune=2, progress=False)
    assert calls == [2, 1] and len(pruner.example) == 1 and isinstance(pruner.example[0], list)
    with pruner.observe():
        imgs([X[0], X[0]]).square().mean().backward()
    pruner.step()  # FLOPs recounted on the recorded arguments
    assert pruner.ratio < 1 and calls == [2, 1]


def test_prune_takes_both_conventions(tmp_path):
    two = _model(TwoFrames)
    a, b = torch.rand(4, 3, 8, 8), torch.rand(4, 3, 8, 8)
    batches = [(a, b)] * 4

    def loss(model, batch):
        return model(*batch).square().mean()

    r = fxtaylor.prune(two, batches, example_inputs=[a[:1], b[:1]], batch_loss=loss, target_flops=0.7,
                       maps_per_prune=2, updates_between_prunes=1, progress=False, checkpoint_dir=tmp_path)
    assert r.after["flops"] < r.before["flops"] and r.arch["input_shape"] == [[1, 3, 8, 8], [1, 3, 8, 8]]


def test_latency_functions_take_both_conventions():
    dep = Deployment(device="cpu", threads=1)
    two = _model(TwoFrames)
    a, b = torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 8)
    for example in ((a, b), [a, b]):
        (t,) = measure([two], example, dep, min_run_time=0.01, rounds=1)
        assert t.median_ms > 0
    imgs = _model(Images)
    (t,) = measure([imgs], [X[0]], dep, min_run_time=0.01, rounds=1)  # model([img])
    assert t.median_ms > 0
    net = _model()
    before = _state(net)
    (t,) = measure([net], (X,), dep, min_run_time=0.01, rounds=1)
    assert t.median_ms > 0
    _unchanged(net, before)


# -- 2. bad input at every entry point: one line, nothing changed ---------------------------------


def _lazy():
    m = nn.Sequential(nn.LazyConv2d(4, 3), nn.ReLU())
    return m


BAD_EXAMPLES = {
    # name: (example, message)
    "channels": (torch.rand(1, 4, 8, 8), r"the model cannot run on example_inputs \(inputs of shape \(1, 4, 8, 8\), float32\): "
                                         r"RuntimeError: .*channels"),
    "dtype": (X.double(), r"the model cannot run on example_inputs \(inputs of shape \(1, 3, 8, 8\), float64\): RuntimeError: "),
    "NaN": (torch.full((1, 3, 8, 8), math.nan), r"example_inputs holds NaN: pass finite example values"),
    "meta example": (torch.rand(1, 3, 8, 8, device="meta"), r"example_inputs is on the meta device"),
    "string": ("image.png", r"example_inputs must be the model's example input: a tensor, or a tuple or list of its arguments "
                            r"\(tensors\), got str 'image.png'"),
    "None": (None, r"example_inputs must be the model's example input: .* got None"),
    "list without tensors": ([1, 2], r"example_inputs must be the model's example input: .* got list"),
    "neither convention": ([X, X], r"the model cannot run on example_inputs \(a list of 2: \(1, 3, 8, 8\) float32, \(1, 3, 8, 8\) "
                                   r"float32\), called either way: model\(\*example_inputs\) \(2 arguments\) failed with TypeError: .*; "
                                   r"model\(example_inputs\) \(one argument\) failed with "),
    "NaN in a list": ([X, torch.full((2,), math.nan)], r"example_inputs\[1\] holds NaN"),
}

# trace runs a lone tensor on meta tensors only (a real forward tripled its time): the meta run
# checks channels and dtypes, and the real run of the failing node names the layer, in one line
TRACE_CHECKED = {
    "channels": r"^running the traced graph on the example inputs failed at module 'body.0' \(node body_0\): RuntimeError: "
                r".*expected input\[1, 4, 8, 8\] to have 3 channels, but got 4 channels instead\. [^\n]*$",
    "dtype": r"^running the traced graph on the example inputs failed at module 'body.0' \(node body_0\): RuntimeError: "
             r"Input type \(double\) and bias type \(float\) should be the same\. [^\n]*$",
}

ENTRY_POINTS = {
    "trace": lambda m, x: fxtaylor.trace(m, x),
    "Pruner": lambda m, x: fxtaylor.Pruner(m, x, target_flops=0.5, progress=False),
    "TaylorImportance": lambda m, x: fxtaylor.TaylorImportance(m, x),
    "WeightImportance": lambda m, x: fxtaylor.WeightImportance(m, x),
    "RandomImportance": lambda m, x: fxtaylor.RandomImportance(m, x),
}


@pytest.mark.parametrize("entry", ENTRY_POINTS)
@pytest.mark.parametrize("case", BAD_EXAMPLES)
def test_a_bad_example_is_refused_at_every_entry_point(entry, case):
    example, message = BAD_EXAMPLES[case]
    if entry == "trace" and case in TRACE_CHECKED:  # a lone tensor: checked by the meta run, the layer named
        message = TRACE_CHECKED[case]
    model = _model()
    _refused(lambda: ENTRY_POINTS[entry](model, example), message, model)


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_a_model_that_cannot_run_is_refused_at_every_entry_point(entry):
    _refused(lambda: ENTRY_POINTS[entry]("resnet18", X), r"model must be a torch.nn.Module, got str 'resnet18'")
    _refused(lambda: ENTRY_POINTS[entry](_model().to("meta"), X), r"the model's weights are on the meta device \(not materialised; "
                                                                   r"first: body.0.weight\)")
    lazy = _lazy()
    _refused(lambda: ENTRY_POINTS[entry](lazy, X), r"the model has uninitialised \(lazy\) parameters \(first: 0.weight\)")
    assert isinstance(lazy[0].weight, nn.parameter.UninitializedParameter)  # not materialised by a check


def test_an_example_on_another_device_is_refused():
    model = _model()
    before = _state(model)
    # only the meta device is sure to exist here: stand in for another device with a model placed on it
    calls = [lambda x: fxtaylor.trace(model, x), lambda x: fxtaylor.TaylorImportance(model, x)]
    for call in calls:
        with pytest.raises(FxTaylorError, match=r"example_inputs is on the meta device"):
            call(X.to("meta"))
    _unchanged(model, before)


@pytest.mark.parametrize("kwargs, message", [
    ({"ignored_layers": "fc"}, r"ignored_layers must be a list \(or tuple, set\) of modules, module names or types, got 'fc': "
                               r"wrap a single one in a list"),
    ({"ignored_layers": nn.Linear(8, 4)}, r"ignored_layers must be a list .* got Linear"),
    ({"ignored_layers": 3}, r"ignored_layers must be a list .* got int"),
    ({"ignored_layers": ["fcc"]}, r"ignored_layers: the model has no module named 'fcc' \(did you mean 'fc'\?\)"),
    ({"ignored_layers": [nn.Linear(8, 4)]}, r"ignored_layers: Linear .* is not a module of this model"),
    ({"leaf_modules": nn.Linear}, r"leaf_modules must be a list .* got <class 'torch.nn.modules.linear.Linear'>"),
    ({"leaf_modules": ["body.9"]}, r"leaf_modules: the model has no module named 'body.9'"),
    ({"leaf_modules": [3.5]}, r"leaf_modules: cannot select 3.5: pass modules, module names or module types"),
])
def test_trace_and_pruner_refuse_bad_selections(kwargs, message):
    model = _model()
    _refused(lambda: fxtaylor.trace(model, X, **kwargs), message, model)
    _refused(lambda: fxtaylor.Pruner(model, X, target_flops=0.5, progress=False, **kwargs), message, model)


@pytest.mark.parametrize("kwargs, message", [
    ({"deployment": "cpu"}, r"deployment must be a fxtaylor.Deployment, got str"),
    ({"optimizer": "sgd"}, r"optimizer must be a torch.optim.Optimizer, got str"),
    ({"graph": "g"}, r"graph must be the ChannelGraph of this model \(fxtaylor.trace\(model, ...\)\), got str"),
    ({"reference": 3}, r"reference must be the dense model"),
    ({"measure_fn": 3}, r"measure_fn must be a function"),
    ({"loss_reduction": "avg"}, r"loss_reduction must be 'mean' or 'sum', got 'avg'"),
    ({"cost": "flops"}, r"cost must be a cost model"),
    ({"criterion": 3}, r"criterion must be a name or a GraphImportance factory, got int"),
    ({"flops_reg": True}, r"flops_reg \(λ\) must be >= 0, got True"),
])
def test_pruner_refuses_bad_arguments(kwargs, message):
    model = _model()
    _refused(lambda: fxtaylor.Pruner(model, X, target_flops=0.5, progress=False, **kwargs), message, model)


def test_pruner_refuses_the_graph_of_another_model_and_nan_weights():
    model = _model()
    other = fxtaylor.trace(_model(), X)
    _refused(lambda: fxtaylor.Pruner(model, X, target_flops=0.5, graph=other, progress=False), r"got the graph of another model", model)
    with torch.no_grad():
        model.fc.weight[0, 0] = math.nan
    _refused(lambda: fxtaylor.Pruner(model, X, target_flops=0.5, progress=False), r"the model's weights hold NaN or inf \(first: fc.weight\)")


@pytest.mark.parametrize("make, message", [
    (lambda m: fxtaylor.TaylorImportance(m, X, normalize="l3"), r"normalize must be one of None, 'l2'"),
    (lambda m: fxtaylor.TaylorImportance(m, X, flops_reg=-1), r"flops_reg \(λ\) must be >= 0, got -1"),
    (lambda m: fxtaylor.TaylorImportance(m, X, loss_reduction="avg"), r"loss_reduction must be 'mean' or 'sum'"),
    (lambda m: fxtaylor.TaylorImportance(m, X, graph="g"), r"graph must be a ChannelGraph \(fxtaylor.trace\), got str"),
    (lambda m: fxtaylor.TaylorImportance(m, X, graph=fxtaylor.trace(_model(), X)), r"graph was traced from another model"),
    (lambda m: fxtaylor.TaylorImportance(m, X, cost="flops"), r"cost must be a cost model"),
    (lambda m: fxtaylor.TaylorImportance(m, X, normalise="l2"), r"unknown argument 'normalise'"),
    (lambda m: fxtaylor.RandomImportance(m, X, seed="1"), r"seed must be an integer, got '1'"),
    (lambda m: fxtaylor.OracleImportance(m, X, [], "mse"), r"loss_fn must be a function"),
    (lambda m: fxtaylor.OracleImportance(m, X, 5, nn.functional.cross_entropy), r"batches must be an iterable"),
])
def test_criteria_refuse_bad_arguments(make, message):
    model = _model()
    err = _refused(lambda: make(model), message, model)
    assert err


def test_criteria_errors_are_still_value_errors():
    with pytest.raises(ValueError, match="normalize"):
        fxtaylor.WeightImportance(_model(), X, normalize="l3")


# -- save / load -------------------------------------------------------------------------------------


def _files(d):
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def test_save_refuses_bad_arguments_and_writes_nothing(tmp_path):
    model = _model()
    (tmp_path / "adir").mkdir()
    (tmp_path / "afile").write_text("keep")
    files = _files(tmp_path)
    custom = {"kind": "custom"}
    for call, message in [
        (lambda: fxtaylor.save("model", tmp_path / "m.pt", custom), r"cannot save: model must be a torch.nn.Module, got str"),
        (lambda: fxtaylor.save(model, 5, custom), r"path must be a file path \(str or os.PathLike\), got int 5"),
        (lambda: fxtaylor.save(model, tmp_path / "adir", custom), r"cannot write .*adir: it is a directory"),
        (lambda: fxtaylor.save(model, tmp_path / "afile" / "m.pt", custom), r"cannot write .*afile/m.pt"),
        (lambda: fxtaylor.save(model, tmp_path / "m.pt", {"kind": "custom", "base": model}),
         r"arch must be plain data .*: arch\['base'\] \(Net\) is not, and loading it would need pickled code"),
        (lambda: fxtaylor.save(model, tmp_path / "m.pt", custom, note=object()), r"meta 'note' must be plain data"),
        (lambda: fxtaylor.save(_model().to("meta"), tmp_path / "m.pt", custom), r"weights are on the meta device"),
    ]:
        _refused(call, message, model)
    assert _files(tmp_path) == files


def test_save_keeps_its_meta(tmp_path):
    fxtaylor.save(_model(), tmp_path / "m.pt", {"kind": "custom"}, flops=12, accuracy=None)
    assert torch.load(tmp_path / "m.pt", weights_only=True)["meta"] == {"flops": 12, "accuracy": None}


def test_load_refuses_every_file_that_is_not_an_fxtaylor_model_file(tmp_path):
    model = _model()
    (tmp_path / "random.bin").write_bytes(os.urandom(2000))
    (tmp_path / "notes.txt").write_text("a text file\nnot a model\n")
    torch.save(model.state_dict(), tmp_path / "state.pt")
    torch.save(model, tmp_path / "module.pt")
    torch.save([1, 2], tmp_path / "list.pt")
    (tmp_path / "empty.pt").write_bytes(b"")
    (tmp_path / "adir").mkdir()
    fxtaylor.save(model, tmp_path / "good.pt", {"kind": "custom"})
    good = (tmp_path / "good.pt").read_bytes()
    (tmp_path / "half.pt").write_bytes(good[: len(good) // 2])
    files = _files(tmp_path)
    for name, message in [
        ("random.bin", r"model file .*random.bin is corrupt or truncated, or not a file torch.save wrote"),
        ("notes.txt", r"model file .*notes.txt is corrupt or truncated, or not a file torch.save wrote \(it is a text file\)"),
        ("state.pt", r"state.pt is a plain state dict \(\d+ tensors\), not an fxtaylor model file: load it into your model"),
        ("module.pt", r"refusing to load .*module.pt: it needs pickled code \(test_entry_points.Net\)"),
        ("list.pt", r"list.pt is not an fxtaylor model file \(it holds a list\)"),
        ("empty.pt", r"model file .*empty.pt is corrupt or truncated \(empty\)"),
        ("half.pt", r"model file .*half.pt is corrupt or truncated"),
        ("adir", r"adir is a directory, not a model file"),
        ("missing.pt", r"no model file at .*missing.pt"),
    ]:
        _refused(lambda: fxtaylor.load(tmp_path / name, base=model), message, model)
    _refused(lambda: fxtaylor.load(3), r"model file must be a file path \(str or os.PathLike\), got int 3")
    _refused(lambda: fxtaylor.load(tmp_path / "good.pt", base="Net"), r"base must be the unpruned model")
    _refused(lambda: fxtaylor.load(tmp_path / "good.pt", base=_model(), map_location="gpu7"), r"map_location must be a device")
    assert _files(tmp_path) == files
    assert isinstance(fxtaylor.load(tmp_path / "good.pt", base=_model()), Net)


# -- latency functions ---------------------------------------------------------------------------------


DEP = Deployment(device="cpu", threads=1)


@pytest.mark.parametrize("call, message", [
    (lambda m, d: measure(m, X, DEP), r"models must be a list of models, got one Net: pass \[model\]"),
    (lambda m, d: measure(["m"], X, DEP), r"models\[0\] must be a torch.nn.Module, got str"),
    (lambda m, d: measure([m], X, "cpu"), r"deployment must be a fxtaylor.Deployment"),
    (lambda m, d: measure([m], X, DEP, rounds=0), r"rounds must be a number ≥ 1, got 0"),
    (lambda m, d: measure([m], X, DEP, min_run_time=math.nan), r"min_run_time must be a number ≥ 0, got nan"),
    (lambda m, d: measure([m], torch.rand(1, 4, 8, 8), DEP), r"the model cannot run on example_input"),
    (lambda m, d: measure([m], "x", DEP), r"example_input must be the model's example input"),
    (lambda m, d: measure([m], torch.full((1, 3, 8, 8), math.nan), DEP), r"example_input holds NaN"),
    (lambda m, d: measure([m, TwoFrames()], X, DEP), r"models\[1\] cannot run on example_input .*models\[0\] can: TypeError"),
    (lambda m, d: LatencyModel.build(m, torch.rand(1, 4, 8, 8), DEP, cache_dir=d),
     r"the model cannot run on the example input \(inputs of shape \(1, 4, 8, 8\), float32, on cpu\): RuntimeError"),
    (lambda m, d: LatencyModel.build(m, [X, X], DEP, cache_dir=d), r"a latency model needs a model whose input is one batched tensor"),
    (lambda m, d: LatencyModel.build(m, X, DEP, cache_dir=d, layers="fc"), r"layers must be a list of module names"),
    (lambda m, d: LatencyModel.build(m, X, DEP, cache_dir=3), r"cache_dir must be a path"),
    (lambda m, d: LatencyModel.build(_model().to("meta"), X, DEP, cache_dir=d), r"weights are on the meta device"),
    (lambda m, d: LatencyModel.load(d / "nothing", m, X), r"nothing is missing: pass the latency cache folder"),
    (lambda m, d: LatencyModel.load(d, m, "x"), r"example_input must be the model's example input"),
    (lambda m, d: widths(m, torch.rand(1, 4, 8, 8)), r"the model cannot run on the example input"),
    (lambda m, d: widths("m", X), r"model must be a torch.nn.Module"),
])
def test_latency_functions_refuse_bad_arguments(tmp_path, call, message):
    model = _model()
    _refused(lambda: call(model, tmp_path), message, model)
    assert not any(tmp_path.iterdir())  # nothing measured, nothing written


@pytest.mark.parametrize("kwargs, message", [
    ({"device": "gpu"}, r"latency device 'gpu' is unknown: use 'cpu' or 'cuda\[:index\]'"),
    ({"device": 0.5}, r"latency device must be a name such as 'cpu' or 'cuda:0', got float 0.5"),
    ({"dtype": torch.float16}, r"latency dtype torch.float16 is unknown"),
    ({"memory_format": torch.channels_last}, r"latency memory format torch.channels_last is unknown"),
    ({"batch_size": 0}, r"latency batch size must be a whole number ≥ 1, got 0"),
    ({"threads": 1.5}, r"latency threads must be a whole number ≥ 1, got 1.5"),
])
def test_bad_deployment_values(kwargs, message):
    _refused(lambda: Deployment(**kwargs), message)
    assert Deployment(device=torch.device("cpu")).device == "cpu"
