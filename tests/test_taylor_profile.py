"""What observing adds to a training step, counted in operators: the regressions that make the
criterion expensive on a GPU (a host sync or a copy per read, a dozen small kernels per read)
show on the CPU too, as operator counts in torch.profiler.

The budget, for a ResNet-18 step (20 reads, one forward pass) observed ÷ plain:

- no ``aten::item`` / ``aten::_local_scalar_dense`` (a device→host read, a sync on CUDA);
- at most one more ``aten::_to_copy`` (and ``aten::to``) than the plain step: the fold of the
  pass's float32 buffer into the float64 running sums, once per forward pass. On the CPU the
  in-place ``add_`` casts its float32 operand with a copy; on CUDA the cast is inside the kernel;
- at most K = 6 operators per read, plus 6 per pass, counting the operators the hooks and the
  autograd nodes they add call (top-level ``aten::`` events; what those call inside is the
  operator's own business, except copies and syncs, which are counted at every level). Per read
  there are 5: ``alias`` in the forward (the reader's own view), and ``mul``, ``sum``,
  ``slice``, ``add_`` in the backward (one ``addcmul_`` for a read without spatial dims);
  per pass ``zeros`` and the fold's ``abs``, ``sum``, ``add_``. Before issue 13 the same step
  had 836 more operators at all levels (≈ 42 per read) and 41 more ``aten::_to_copy``.
"""
from collections import Counter

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch.profiler import ProfilerActivity, profile

import fxtaylor

PER_READ = 6  # K
PER_PASS = 6
EXTRA_COPIES = 1  # the fold's float32 → float64, once per forward pass


def _setup(device="cpu", channels_last=False):
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).to(device)
    x = torch.randn(2, 3, 32, 32, device=device)
    y = torch.tensor([1, 3], device=device)
    if channels_last:
        model, x = model.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

    def step(amp=False):
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp):
            loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    return model, x, step


def _ops(step) -> tuple[Counter, Counter]:
    """(all aten operators, top-level ones) of one step, after a warm-up step."""
    step()  # lazy initialisation is not the step's cost
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    every, top = Counter(), Counter()
    for e in prof.events():
        if e.name.startswith("aten::"):
            every[e.name] += 1
            if e.cpu_parent is None or not e.cpu_parent.name.startswith("aten::"):
                top[e.name] += 1
    return every, top


def extra_ops(channels_last=False):
    """Operators an observed step issues beyond a plain one: (all levels, top level), and the
    number of reads per step."""
    model, x, step = _setup(channels_last=channels_last)
    imp = fxtaylor.TaylorImportance(model, x[:1])
    plain = _ops(step)
    with imp.observe():
        observed = _ops(step)
    assert imp.examples == 4  # both steps were observed
    extra = []
    for o, p in zip(observed, plain):
        d = Counter(o)
        d.subtract(p)
        extra.append(d)
    return extra[0], extra[1], len(imp.graph.node_maps)


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
def test_observed_step_adds_no_sync_no_copies_and_few_operators_per_read(channels_last):
    extra, top, reads = extra_ops(channels_last)
    assert reads == 20
    for op in ("aten::item", "aten::_local_scalar_dense", "aten::is_nonzero", "aten::nonzero", "aten::lift_fresh"):
        assert extra[op] <= 0, (op, extra[op])
    assert extra["aten::_to_copy"] <= EXTRA_COPIES, extra
    assert extra["aten::to"] <= EXTRA_COPIES, extra
    assert extra["aten::copy_"] <= EXTRA_COPIES, extra  # no contiguous() copy of a channels_last map
    added = sum(v for v in top.values() if v > 0)
    assert added <= PER_READ * reads + PER_PASS, (added, dict(top.most_common(12)))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("amp,channels_last", [(False, False), (True, False), (True, True)])
def test_observed_cuda_step_never_synchronises(amp, channels_last):
    model, x, step = _setup("cuda", channels_last)
    imp = fxtaylor.TaylorImportance(model, x[:1])
    step(amp)  # cuDNN / allocator warm-up outside the check
    with imp.observe():  # building the plan copies indices to the device once, here
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            step(amp)  # first observed step: also sets M from the produced maps
            step(amp)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    assert imp.examples == 4
    assert torch.isfinite(imp.unit_scores()).all()
