"""Real image data that ships offline: scikit-learn's bundled handwritten digits (UCI optdigits,
1797 8×8 grey images of 10 classes). Nothing is downloaded."""
from __future__ import annotations

import torch
from torch.utils.data import TensorDataset


def digits(split: str = "train", *, size: int = 8, channels: int = 1, test_fraction: float = 0.25, seed: int = 0) -> TensorDataset:
    """The digits as ``(images, labels)``: images in [0, 1] shaped ``[N, channels, size, size]``
    (bilinear resize when ``size != 8``), split into train/test with a fixed shuffled order."""
    from sklearn.datasets import load_digits

    if split not in ("train", "test", "all"):
        raise ValueError(f"split must be 'train', 'test' or 'all', got {split!r}")
    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(d.target, dtype=torch.long)
    if size != 8:
        x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    x = x.expand(-1, channels, -1, -1).contiguous()
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    n_test = int(round(len(y) * test_fraction))
    idx = {"test": order[:n_test], "train": order[n_test:], "all": order}[split]
    return TensorDataset(x[idx], y[idx])
