import pytest
import torch


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def cpu_without_half_conv(monkeypatch):
    """A CPU torch build without float16 convolution kernels (simulated), with the deployment
    check's per-process cache cleared before and after so the simulation is what it sees."""
    import torch.nn as nn

    from fxtaylor.latency import deployment

    real = nn.Conv2d._conv_forward

    def no_half(self, x, w, b):
        if x.dtype == torch.float16:
            raise RuntimeError('"slow_conv2d_cpu" not implemented for \'Half\'')
        return real(self, x, w, b)

    monkeypatch.setattr(nn.Conv2d, "_conv_forward", no_half)
    deployment.check_runs.cache_clear()
    yield
    deployment.check_runs.cache_clear()
