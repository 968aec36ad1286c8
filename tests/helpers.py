"""Helpers shared by several test files (imported from ``sys.path``, like ``deadcheck``)."""
import torch


def image_folder(root, classes=("a", "b", "c"), per_class=4, splits=("train", "val")):
    """A tiny ImageFolder tree ``root/<split>/<class>/<i>.png`` of random 40×40 RGB images."""
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    for split in splits:
        for c in classes:
            (root / split / c).mkdir(parents=True)
            for i in range(per_class):
                pixels = (torch.rand(40, 40, 3, generator=g) * 255).to(torch.uint8).numpy()
                Image.fromarray(pixels).save(root / split / c / f"{i}.png")
    return root


def cloned_state(model):
    """A copy of ``model``'s state dict (parameters and buffers), to compare against later."""
    return {k: v.clone() for k, v in model.state_dict().items()}
