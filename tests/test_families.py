"""fxtaylor.prune on models that are not (image -> class scores): each family with its own loss
(``batch_loss``) and example inputs, as docs/usage.md shows; auxiliary heads on the default path."""
import collections
import os
import warnings

import pytest
import torch
import torch.nn as nn

import fxtaylor
from fxtaylor.errors import FxTaylorError


def _detector():
    from torchvision.models import detection

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return detection.fasterrcnn_mobilenet_v3_large_320_fpn(weights=None, weights_backbone=None, num_classes=3,
                                                              min_size=96, max_size=128)


def _detection_batches():
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(3, 96, 128, generator=g) for _ in range(4)]
    targets = [{"boxes": torch.tensor([[10.0, 12, 60, 70], [40, 30, 110, 90]]), "labels": torch.tensor([1, 2])} for _ in range(4)]
    return [(images[:2], targets[:2]), (images[2:], targets[2:])]


def detection_loss(model, batch):
    images, targets = batch
    return sum(model(images, targets).values())  # train mode: the loss dict


def test_detection_model_prunes_with_its_own_loss_and_round_trips(tmp_path):
    torch.manual_seed(0)
    model = _detector()
    batches = _detection_batches()
    example = ([batches[0][0][0]],)  # the model's arguments: a list of one image
    r = fxtaylor.prune(model, batches, target_flops=0.9, batch_loss=detection_loss, example_inputs=example,
                       updates_between_prunes=1, maps_per_prune=128, final_updates=0, progress=False, measure_latency=False)
    assert r.reached and 0.9 * 0.99 <= r.after["flops"] / r.before["flops"] <= 0.9
    assert r.arch["input_shape"] == [[[3, 96, 128]]]
    model.train()
    detection_loss(model, batches[0]).backward()  # the pruned model still trains
    model.eval()
    out = model(*example)
    assert set(out[0]) == {"boxes", "labels", "scores"}
    fxtaylor.save(model, tmp_path / "m.pt", r.arch)
    torch.manual_seed(0)
    back = fxtaylor.load(tmp_path / "m.pt", base=_detector()).eval()
    again = back(*example)
    assert all(torch.equal(out[0][k], again[0][k]) for k in out[0])


@pytest.mark.parametrize("kwargs, message", [
    (dict(batch_loss=detection_loss, loss_fn=nn.CrossEntropyLoss()), "give one of loss_fn, batch_loss and train_step"),
    (dict(example_inputs=([torch.rand(3, 96, 128)],)), "example_inputs is for models whose batches are not"),
    (dict(batch_loss=lambda m, b: 1.0, example_inputs=([torch.rand(3, 96, 128)],)), "batch_loss must return the loss"),
    (dict(batch_loss=detection_loss, example_inputs=(torch.rand(5),)), "the model cannot run on example_inputs"),
    (dict(batch_loss=detection_loss, example_inputs=([torch.rand(3, 96, 128)],), target_latency=0.8),
     "target_latency needs a model whose input is one batched tensor"),
])
def test_family_arguments_are_checked_before_anything_changes(kwargs, message):
    torch.manual_seed(0)
    model = _detector()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(FxTaylorError, match=message):
        fxtaylor.prune(model, _detection_batches(), updates_between_prunes=1, progress=False, measure_latency=False,
                       **{"target_flops": 0.9, **kwargs} if "target_latency" not in kwargs else kwargs)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


Outputs = collections.namedtuple("Outputs", ["logits", "aux_logits"])


class WithAux(nn.Module):
    """GoogLeNet's shape: a named tuple (logits, aux_logits) in train mode, logits in eval."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.body = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.fc = nn.Linear(16, 10)
        self.aux = nn.Linear(16, 10)

    def forward(self, x):
        f = self.stem(x)
        logits = self.fc(self.body(f).mean((2, 3)))
        if self.training:
            return Outputs(logits, self.aux(f.mean((2, 3))))
        return logits


def test_auxiliary_heads_train_and_are_observed_on_the_default_path():
    from fxtaylor.datasets import digits
    from torch.utils.data import DataLoader

    torch.manual_seed(0)
    model = WithAux()
    r = fxtaylor.prune(model, DataLoader(digits("train"), batch_size=64), target_flops=0.7, tolerance=0.05,
                       updates_between_prunes=2, maps_per_prune=2, final_updates=0, progress=False,
                       measure_latency=False, seed=0)  # 32 maps: a 1 % band is finer than one map
    assert r.reached
    assert model.aux.in_features < 16  # the stem's channels, read by the aux head too, were pruned
    model.train()
    assert isinstance(model(torch.randn(2, 1, 8, 8)), Outputs)


def test_auxiliary_loss_is_the_main_loss_plus_its_weight_times_each_aux_loss():
    from fxtaylor.pruner.training import AUX_WEIGHT, with_aux

    g = torch.Generator().manual_seed(0)
    logits, aux, y = torch.randn(4, 5, generator=g), torch.randn(4, 5, generator=g), torch.tensor([0, 1, 2, 3])
    ce = nn.CrossEntropyLoss()
    got = with_aux(ce, Outputs(logits, aux), y)
    assert torch.allclose(got, ce(logits, y) + AUX_WEIGHT * ce(aux, y))
    assert torch.equal(with_aux(ce, logits, y), ce(logits, y))
