"""Pruning under torch.distributed: 2 CPU processes (gloo), each on its own shard of the data.

Each test spawns the ranks (``torch.multiprocessing``), which write what they hold to files;
the test process compares. A rank that hangs fails the test through the join timeout.
"""
import datetime
import json
import os
import subprocess
import sys
import traceback

import torch
import torch.distributed as dist
import torch.multiprocessing as tmp_mp
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, Subset, TensorDataset
from torch.utils.data.distributed import DistributedSampler

import fxtaylor

WORLD = 2
TIMEOUT = 240  # seconds for a whole launch; a hang fails instead of blocking CI


class Net(nn.Module):
    def __init__(self, width=8):
        super().__init__()
        self.a = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU())
        self.b = nn.Sequential(nn.Conv2d(width, 12, 3, padding=1), nn.BatchNorm2d(12), nn.ReLU())
        self.fc = nn.Linear(12, 4)

    def forward(self, x):
        return self.fc(self.b(self.a(x)).mean((2, 3)))


def data(n=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, 8, 8, generator=g)
    return TensorDataset(x, (x.mean((1, 2, 3)) > 0).long() + 2 * (x[:, 0].mean((1, 2)) > 0).long())


def model(width=8):
    torch.manual_seed(0)  # the same initial weights in every process
    return Net(width)


def shards(batch=4):
    """The batches each rank sees with an unshuffled DistributedSampler."""
    ds = data()
    return [list(DataLoader(ds, batch_size=batch, sampler=DistributedSampler(ds, WORLD, r, shuffle=False))) for r in range(WORLD)]


# -- the ranks -----------------------------------------------------------------------------------


def _rank(rank, task, out):
    try:
        dist.init_process_group("gloo", init_method=f"file://{out}/store", rank=rank, world_size=WORLD,
                                timeout=datetime.timedelta(seconds=60))
        torch.set_num_threads(1)
        result = TASKS[task](rank, out)
    except Exception as e:  # the test reads the error of every rank
        result = {"error": f"{type(e).__name__}: {e}", "trace": traceback.format_exc()}
    torch.save(result, os.path.join(out, f"rank{rank}.pt"))
    if dist.is_initialized():
        dist.destroy_process_group()


def _criterion(rank, out):
    net = model()
    imp = fxtaylor.TaylorImportance(net, torch.randn(1, 3, 8, 8), normalize=None)
    ddp = DDP(net)
    with imp.observe():
        for x, y in shards()[rank]:
            ddp.zero_grad()
            F.cross_entropy(ddp(x), y).backward()
    local = imp.examples
    imp.all_reduce()
    return {"scores": imp.unit_scores(), "local": local, "examples": imp.examples}


def _prune(rank, out, stop_after=None, resume=False):
    net = model()
    ds = data()
    sampler = DistributedSampler(ds, shuffle=True, seed=0)
    loader = DataLoader(ds, batch_size=4, sampler=sampler)
    seen = []

    def on_step(rec):
        seen.append(rec["step"])
        if stop_after is not None and rec["step"] == stop_after:
            raise KeyboardInterrupt

    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    try:
        res = fxtaylor.prune(DDP(net), loader, target_flops=0.6, optimizer=opt, updates_between_prunes=3, maps_per_prune=2,
                             checkpoint_dir=os.path.join(out, "ckpt"), resume=resume, seed=0, measure_latency=False,
                             progress=False, on_step=on_step)
    except KeyboardInterrupt:
        return {"interrupted": seen}
    return {"state": {k: v.clone() for k, v in res.model.state_dict().items()}, "steps": seen,
            "flops": res.after["flops"] / res.before["flops"], "indices": list(sampler)}


class Plain(nn.Module):
    """No BatchNorm: then a step of 2 ranks × 4 examples is exactly a step on the 8 together."""

    def __init__(self):
        super().__init__()
        self.a = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU())
        self.b = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.ReLU())
        self.fc = nn.Linear(16, 4)

    def forward(self, x):
        return self.fc(self.b(self.a(x)).mean((2, 3)))


def _plain_run(rank, out, world=WORLD):
    """Rank r's batch i holds examples 8i + 4r … 8i + 4r + 3; one process takes 8i … 8i + 7."""
    torch.manual_seed(0)
    net = Plain()
    idx = [8 * i + 4 * rank + j for i in range(4) for j in range(4)] if world > 1 else list(range(32))
    loader = DataLoader(Subset(data(), idx), batch_size=4 if world > 1 else 8)
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    res = fxtaylor.prune(net, loader, target_flops=0.4, optimizer=opt, updates_between_prunes=3, maps_per_prune=2,
                         measure_latency=False, progress=False)
    return {"state": {k: v.clone() for k, v in res.model.state_dict().items()}, "steps": len(res.history)}


def _mismatch(rank, out):
    """Rank 1 builds another width: the error, and the model and run directory untouched."""
    net = model(6 if rank == 1 else 8)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    loader = DataLoader(data(), batch_size=4, sampler=DistributedSampler(data(), shuffle=True, seed=0))
    try:
        fxtaylor.prune(net, loader, target_flops=0.6, updates_between_prunes=3, checkpoint_dir=os.path.join(out, "ckpt"),
                       measure_latency=False, progress=False)
    except fxtaylor.errors.FxTaylorError as e:
        after = net.state_dict()
        return {"error": str(e), "intact": before.keys() == after.keys() and all(torch.equal(v, after[k]) for k, v in before.items()),
                "files": os.listdir(out)}
    return {"no error": True}


TASKS = {
    "plain": _plain_run,
    "mismatch": _mismatch,
    "criterion": _criterion,
    "prune": _prune,
    "interrupt": lambda r, o: _prune(r, o, stop_after=2),
    "resume": lambda r, o: _prune(r, o, resume=True),
}


def launch(task, out):
    """Run ``task`` on every rank; each rank's result (or error)."""
    for f in ("store", *(f"rank{r}.pt" for r in range(WORLD))):
        if os.path.exists(os.path.join(out, f)):
            os.remove(os.path.join(out, f))
    ctx = tmp_mp.get_context("spawn")
    procs = [ctx.Process(target=_rank, args=(r, task, str(out))) for r in range(WORLD)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(TIMEOUT)
    hung = [r for r, p in enumerate(procs) if p.is_alive()]
    for p in procs:
        p.kill()
    assert not hung, f"rank(s) {hung} still running after {TIMEOUT} s: a hang"
    return [torch.load(os.path.join(out, f"rank{r}.pt"), weights_only=False) for r in range(WORLD)]


# -- the tests -----------------------------------------------------------------------------------


def test_criterion_is_the_average_over_the_union_of_the_ranks_examples(tmp_path):
    ranks = launch("criterion", tmp_path)
    assert all("error" not in r for r in ranks), [r.get("trace") for r in ranks]
    assert [r["local"] for r in ranks] == [16, 16] and all(r["examples"] == 32 for r in ranks)
    # one process over the same batches (BatchNorm couples the examples of a batch)
    net = model()
    imp = fxtaylor.TaylorImportance(net, torch.randn(1, 3, 8, 8), normalize=None)
    with imp.observe():
        for batch in shards():
            for x, y in batch:
                net.zero_grad()
                F.cross_entropy(net(x), y).backward()
    single = imp.unit_scores()
    # and one rank alone, to show the reduction matters: the ranks' own data differ
    local = fxtaylor.TaylorImportance(model(), torch.randn(1, 3, 8, 8), normalize=None)
    with local.observe():
        for x, y in shards()[0]:
            local.model.zero_grad()
            F.cross_entropy(local.model(x), y).backward()
    one_rank = local.unit_scores()
    units = torch.cat([g.units for g in imp.graph.prunable_groups])
    for r in ranks:
        torch.testing.assert_close(r["scores"][units], single[units], rtol=1e-5, atol=0)
    assert not torch.allclose(one_rank[units], single[units], rtol=1e-3)


def test_ranks_prune_the_same_channels_and_hold_the_same_weights(tmp_path):
    ranks = launch("prune", tmp_path)
    assert all("error" not in r for r in ranks), [r.get("trace") for r in ranks]
    a, b = ranks
    assert set(a["indices"]).isdisjoint(b["indices"])  # the ranks trained on different examples
    assert len(a["steps"]) >= 3 and a["steps"] == b["steps"]
    assert a["flops"] <= 0.6 and a["flops"] == b["flops"]
    assert a["state"].keys() == b["state"].keys()
    for k in a["state"]:
        assert a["state"][k].shape == b["state"][k].shape, k
        assert torch.equal(a["state"][k], b["state"][k]), k
    assert a["state"]["a.0.weight"].shape[0] < 8 or a["state"]["b.0.weight"].shape[0] < 12  # something was pruned
    assert os.path.exists(tmp_path / "ckpt" / "checkpoint.pt")


def test_distributed_run_equals_one_process_on_the_union_of_the_batches(tmp_path):
    """Training, criterion and cuts together: 2 ranks with 4 examples each per update end with
    the architecture and weights of one process with the 8 examples per update."""
    ranks = launch("plain", tmp_path)
    assert all("error" not in r for r in ranks), [r.get("trace") for r in ranks]
    single = _plain_run(0, None, world=1)
    assert ranks[0]["steps"] == single["steps"] >= 5
    for k, v in single["state"].items():
        assert ranks[0]["state"][k].shape == v.shape, k
        torch.testing.assert_close(ranks[0]["state"][k], v, rtol=1e-4, atol=1e-5)
    assert single["state"]["a.0.weight"].shape[0] < 16 and single["state"]["b.0.weight"].shape[0] < 16


def test_resume_under_torch_distributed_continues_each_rank(tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "cut").mkdir()
    full = launch("prune", tmp_path / "full")
    stopped = launch("interrupt", tmp_path / "cut")
    assert [r.get("interrupted") for r in stopped] == [[1, 2], [1, 2]], stopped
    resumed = launch("resume", tmp_path / "cut")
    assert all("error" not in r for r in resumed), [r.get("trace") for r in resumed]
    for r in range(WORLD):
        assert full[r]["state"].keys() == resumed[r]["state"].keys()
        for k, v in full[r]["state"].items():
            assert torch.equal(v, resumed[r]["state"][k]), (r, k)


def test_a_rank_with_another_model_gets_a_clear_error_not_a_hang(tmp_path):
    ranks = launch("mismatch", tmp_path)
    for r in ranks:
        assert "disagree on the model architecture" in r.get("error", ""), r
        assert "rank(s) [1]" in r["error"]
        assert r["intact"] and "ckpt" not in r["files"]  # nothing trained, nothing written



def test_torchrun_runs_the_command_on_two_processes(tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "FXTAYLOR_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(WORLD), "-m", "fxtaylor", "prune",
           "--no-progress", "--out", str(out), "--target-flops", "0.9", "--finetune-epochs", "1", "--updates-between-prunes", "3"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=TIMEOUT)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("stop reason") == 1  # rank 0 alone prints the summary
    report = json.loads((out / "report.json").read_text())
    assert report["config"]["processes"] == WORLD
    assert report["after"]["flops"] <= 0.9 * report["before"]["flops"]
    pruned = fxtaylor.load(out / "model.pt")
    assert fxtaylor.flops.count(pruned, torch.randn(1, 3, 32, 32))[0] == report["after"]["flops"]
