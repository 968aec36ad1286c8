"""TaylorImportance against a brute-force eq. 8, and its observation contract."""
import gc
import weakref

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.models.resnet import BasicBlock

import fxtaylor
from fxtaylor.errors import FxTaylorError

X = torch.randn(1, 3, 12, 12)


def cbr(cin, cout, inplace=False):
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=inplace))


class Chain(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = cbr(3, 6), cbr(6, 5, inplace=True)
        self.fc = nn.Linear(5 * 3 * 3, 4)

    def forward(self, x):
        return self.fc(torch.flatten(F.max_pool2d(self.b(self.a(x)), 4), 1))


class ResNetTiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = cbr(3, 8, inplace=True)
        self.l1, self.l2 = BasicBlock(8, 8), BasicBlock(8, 8)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        return self.fc(self.l2(self.l1(self.stem(x))).mean((2, 3)))


def produced_elements(model, graph, x):
    """M_u of eq. 8, measured independently of fxtaylor's hooks: a forward hook on every module
    that produces channels (conv, linear) counts the elements of each unit in its output — the
    map where the unit is produced, whatever pooling comes before it is read."""
    n_units = int(graph.group_of_unit.numel())
    elements = torch.zeros(n_units, dtype=torch.float64)
    handles = []
    for (name, role), units in graph.unit_maps.items():
        module = model.get_submodule(name)
        if role != "out" or not isinstance(module, (nn.Conv2d, nn.Linear)):
            continue

        def hook(m, args, out, units=units):
            c = 1 if isinstance(m, nn.Conv2d) else out.dim() - 1
            spatial = out.numel() // (out.shape[0] * out.shape[c])
            per_unit = torch.bincount(units[units >= 0], minlength=n_units).double()
            elements.copy_(torch.maximum(elements, per_unit * spatial))

        handles.append(module.register_forward_hook(hook))
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return elements


def brute_force(model, batches, per_read=False):
    """Eq. 8 from gate gradients: a gate γ[n, u] = 1 multiplies unit u of example n at every
    place u is read; Θ_n(u) = |∂(Σ_n ℓ_n)/∂γ[n, u]| / M_u, averaged over examples, with M_u
    the elements of u in the map that produces it (:func:`produced_elements`).

    With ``per_read`` the gates are separate per read: returns [examples, reads, units] signed
    derivatives (to build alternative group rules)."""
    graph = fxtaylor.trace(model, X)
    n_units = int(graph.group_of_unit.numel())
    reads = []  # (consumer, call index, dim, units per position)
    for (consumer, _call, _node, dim, _shape), units in graph.node_maps.items():
        reads.append((consumer, sum(r[0] == consumer for r in reads), dim, units))
    elements = produced_elements(model, graph, batches[0][0])
    out, scores, count = [], torch.zeros(n_units, dtype=torch.float64), 0
    for x, y in batches:
        n = x.shape[0]
        gates = torch.ones(n, len(reads) if per_read else 1, n_units, requires_grad=True)
        calls, handles = {}, []
        by_module = {}
        for r, (consumer, call, dim, units) in enumerate(reads):
            by_module.setdefault(consumer, []).append((r, dim, units))

        def make_hook(consumer):
            def hook(module, args):
                i = calls.get(consumer, 0)
                calls[consumer] = i + 1
                r, dim, units = by_module[consumer][i]
                z = args[0]
                g = gates[:, r if per_read else 0][:, units.clamp(min=0)]  # [n, positions]
                g = torch.where(units >= 0, g, torch.ones_like(g))
                shape = [n] + [1] * (z.dim() - 1)
                shape[dim] = z.shape[dim]
                return (z * g.reshape(shape),)
            return hook

        for consumer in by_module:
            handles.append(model.get_submodule(consumer).register_forward_pre_hook(make_hook(consumer)))
        try:
            loss = F.cross_entropy(model(x), y, reduction="sum")  # Σ_n ℓ_n
            (grad,) = torch.autograd.grad(loss, gates)
        finally:
            for h in handles:
                h.remove()
        if per_read:
            out.append(grad.detach())
        else:
            scores += grad[:, 0].abs().sum(0).double()
            count += n
    if per_read:
        return torch.cat(out), elements
    return scores / count / elements.clamp(min=1)


def batches(sizes, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(n, 3, 12, 12, generator=g), torch.randint(0, 4, (n,), generator=g)) for n in sizes]


def observed(model, data, together=False):
    """TaylorImportance after one mean-reduced backward per batch (or one for all batches)."""
    imp = fxtaylor.TaylorImportance(model, X, normalize=None, flops_reg=0.0)
    with imp.observe():
        if together:
            sum(F.cross_entropy(model(x), y) for x, y in data).backward()
        for x, y in data if not together else []:
            model.zero_grad()
            F.cross_entropy(model(x), y).backward()  # a mean-reduced loss, as users write it
    return imp


def assert_matches(imp, expected):
    units = torch.cat([g.units for g in imp.graph.prunable_groups])
    torch.testing.assert_close(imp.unit_scores()[units], expected[units], rtol=1e-5, atol=0)


@pytest.mark.parametrize("net", [Chain, ResNetTiny])
def test_raw_scores_equal_brute_force_eq8(net):
    torch.manual_seed(0)
    model = net().train()
    data = batches([3, 5, 2])
    imp = observed(model, data)
    assert imp.examples == 10
    assert_matches(imp, brute_force(model, data))


def test_gradient_accumulation_and_module_reuse_count_every_example():
    torch.manual_seed(0)
    model = ResNetTiny().train()
    data = batches([4, 4])
    imp = observed(model, data, together=True)  # two forwards, one backward
    assert imp.examples == 8
    # the summed loss of two mean-reduced batches is what was backpropagated: per example, the
    # gradient is that of ℓ_n / 4, exactly as in two separate steps
    assert_matches(imp, brute_force(model, data))


class Shared(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = cbr(3, 6), cbr(3, 6)
        self.shared = nn.Conv2d(6, 5, 3, padding=1)
        self.fc = nn.Linear(5, 4)

    def forward(self, x):
        return self.fc((self.shared(self.a(x)) + self.shared(self.b(x))).mean((2, 3)))


class Pooled(nn.Module):
    """The last map is read only after global average pooling, as in ResNet's last stage and
    most classifier heads: its read has one element per channel, the map it pools 12×12."""

    def __init__(self):
        super().__init__()
        self.a, self.b = cbr(3, 6), cbr(6, 5)
        self.fc = nn.Linear(5, 4)

    def forward(self, x):
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(self.b(self.a(x)), 1), 1))


@pytest.mark.parametrize("net", [Pooled, Chain])
def test_read_after_pooling_is_normalised_like_the_map_it_pools(net):
    """Eq. 8 on the produced map: a gate γ[n, c] on the output of ``b`` (after its ReLU, where
    the map is produced), Θ_n = |∂(Σ_n ℓ_n)/∂γ[n, c]| / (H·W of that map). Global average
    pooling (Pooled) and max pooling before flatten→linear (Chain) both read fewer elements
    than the map has; M is the map's."""
    torch.manual_seed(0)
    model = net().train()
    data = batches([3, 5, 2])
    imp = observed(model, data)
    total = torch.zeros(5, dtype=torch.float64)
    for x, y in data:
        gate = torch.ones(x.shape[0], 5, 1, 1, requires_grad=True)
        maps = []

        def on_b(m, a, out):
            maps.append(out)
            return out * gate

        h = model.b.register_forward_hook(on_b)
        try:
            (g,) = torch.autograd.grad(F.cross_entropy(model(x), y, reduction="sum"), gate)
        finally:
            h.remove()
        hw = maps[0].shape[2] * maps[0].shape[3]
        total += g.flatten(1).abs().sum(0).double() / hw
    units = imp.graph.group_of("b.0").units
    torch.testing.assert_close(imp.unit_scores()[units], total / 10, rtol=1e-5, atol=0)


def test_module_called_twice_matches_brute_force():
    torch.manual_seed(0)
    model = Shared().train()
    data = batches([3, 2])
    assert_matches(observed(model, data), brute_force(model, data))


def test_autocast_scores_track_float32():
    torch.manual_seed(0)
    model = ResNetTiny().train()
    data = batches([8, 8])
    imps = []
    for amp in (False, True):
        imp = fxtaylor.TaylorImportance(model, X, normalize=None)
        with imp.observe(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            for x, y in data:
                F.cross_entropy(model(x), y).backward()
        imps.append(imp.unit_scores())
    units = torch.cat([g.units for g in fxtaylor.trace(model, X).prunable_groups])
    assert fxtaylor.spearman(imps[0][units], imps[1][units]) > 0.9


def test_hooks_release_activations_and_are_removed_on_exception():
    model = Chain().train()
    imp = fxtaylor.TaylorImportance(model, X)
    seen = []
    model.b.register_forward_hook(lambda m, i, o: seen.append(weakref.ref(o)))
    with pytest.raises(RuntimeError, match="boom"):
        with imp.observe():
            loss = F.cross_entropy(model(torch.randn(2, 3, 12, 12)), torch.tensor([0, 1]))
            loss.backward()
            gc.collect()
            assert seen[-1]() is None  # `loss` is still alive; the activation is not
            raise RuntimeError("boom")
    assert not model.b[0]._forward_pre_hooks and not model.fc._forward_pre_hooks and not model._forward_pre_hooks
    assert imp.examples == 2  # what was observed before the exception still counts


def test_evaluation_passes_are_not_counted_and_ranking_needs_observations():
    model = Chain()
    imp = fxtaylor.TaylorImportance(model, X)
    with pytest.raises(FxTaylorError, match="observed nothing"):
        imp.unit_scores()
    with imp.observe(), torch.no_grad():
        model(torch.randn(4, 3, 12, 12))
    with pytest.raises(FxTaylorError, match="observed nothing"):
        imp.unit_scores()


def test_in_place_change_after_read_is_an_error_not_a_wrong_score():
    class Bad(nn.Module):
        def __init__(self):
            super().__init__()
            # batch norm and a frozen linear save no activation, so autograd cannot notice
            self.a = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
            self.c = nn.Linear(4, 2).requires_grad_(False)

        def forward(self, x):
            x = self.a(x).mean((2, 3))
            y = self.c(x)
            x.mul_(2)
            return y + x[:, :2]

    model = Bad()
    imp = fxtaylor.TaylorImportance(model, X)
    with imp.observe(), pytest.raises(FxTaylorError, match="modified in place"):
        F.cross_entropy(model(torch.randn(2, 3, 12, 12)), torch.tensor([0, 1])).backward()


class PositionBias(nn.Module):
    """Swin-V2's continuous position bias in miniature: an MLP over a coordinate table (a buffer,
    the same for every image) whose output is added to the image features. The MLP's hidden
    channels are read by ``mlp2`` in a tensor whose dim 0 (1) is not the batch."""

    def __init__(self):
        super().__init__()
        self.conv = cbr(3, 6)
        self.register_buffer("table", torch.randn(1, 9, 2))
        self.mlp1, self.mlp2 = nn.Linear(2, 7), nn.Linear(7, 6)
        self.fc = nn.Linear(6, 4)

    def forward(self, x):
        bias = self.mlp2(F.relu(self.mlp1(self.table)))  # [1, 9, 6]
        h = F.adaptive_avg_pool2d(self.conv(x), 3).flatten(2).transpose(1, 2) + bias  # [N, 9, 6]
        return self.fc(h.mean(1))


def test_reads_without_an_example_dimension_share_the_batch_mean():
    torch.manual_seed(0)
    model = PositionBias().train()
    data = batches([3, 5, 2])
    imp = observed(model, data)
    assert imp.examples == 10
    hidden = imp.graph.group_of("mlp1").units
    # expected for the hidden units: one gate per unit, shared by all examples of a batch;
    # per batch the examples get the mean of Σ_n ∂ℓ_n/∂γ, so Θ = Σ_batches |Σ_n ∂ℓ_n/∂γ| / N / M
    total = torch.zeros(7, dtype=torch.float64)
    for x, y in data:
        gate = torch.ones(7, requires_grad=True)
        h = model.mlp2.register_forward_pre_hook(lambda m, a: (a[0] * gate,))
        try:
            (g,) = torch.autograd.grad(F.cross_entropy(model(x), y, reduction="sum"), gate)
        finally:
            h.remove()
        total += g.abs().double()
    torch.testing.assert_close(imp.unit_scores()[hidden], total / 10 / 9, rtol=1e-5, atol=0)
    # the units read per example are untouched by the shared read: still eq. 8 exactly
    conv = imp.graph.group_of("conv.0").units
    torch.testing.assert_close(imp.unit_scores()[conv], brute_force(model, data)[conv], rtol=1e-5, atol=0)
