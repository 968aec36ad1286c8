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


def image_folder(root: str, split: str, size: int, train: bool, normalize: tuple | None = None):
    """``root/split`` as a torchvision ImageFolder: one sub-folder per class. Training images
    get a random resized crop and flip, evaluation images a resize and center crop; then the
    weights' normalisation (ImageNet statistics by default)."""
    from pathlib import Path

    from torchvision import datasets, transforms

    from .errors import FxTaylorError

    path = Path(root) / split
    if not path.is_dir():
        raise FxTaylorError(f"--data {root}: no {split}/ folder (expected {root}/train/<class>/... and {root}/val/<class>/...)")
    classes = [d for d in path.iterdir() if d.is_dir()]
    if not classes:
        raise FxTaylorError(f"--data {root}: {path} has no class sub-folders (expected {path}/<class>/<image>)")
    if len(classes) == 1:
        raise FxTaylorError(f"--data {root}: {path} has one class folder ({classes[0].name}): the loss of a single class "
                            "is always 0 and ranks nothing; a classification task needs at least two")
    mean, std = normalize or ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    if train:
        t = [transforms.RandomResizedCrop(size), transforms.RandomHorizontalFlip()]
    else:
        t = [transforms.Resize(int(size * 256 / 224)), transforms.CenterCrop(size)]
    tf = transforms.Compose(t + [transforms.ToTensor(), transforms.Normalize(mean, std)])
    try:
        return datasets.ImageFolder(str(path), transform=tf, loader=read_image)
    except (FileNotFoundError, RuntimeError) as e:
        raise FxTaylorError(f"--data {root}: {str(e).splitlines()[0]}") from None


def read_image(path: str):
    """An image file as RGB (what torchvision's ImageFolder reads), or a one-line error naming
    the file: a corrupt or truncated image stops a run with the file's name, not PIL's traceback."""
    from PIL import Image

    from .errors import FxTaylorError, describe

    try:
        with open(path, "rb") as f:
            return Image.open(f).convert("RGB")
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        why = "not an image file PIL can read" if isinstance(e, Image.UnidentifiedImageError) else describe(e)
        raise FxTaylorError(f"cannot read image {path} ({why}): remove or replace the file") from None
