"""Channel rules for torchvision's detection ops: region-of-interest pooling.

RoI pooling crops each box out of a feature map and pools it to a fixed size, channel by
channel: output channel k is input channel k. So the channels of the maps a box head reads
through it (the FPN's outputs, read by the RPN head too) are prunable, and the box head's
first linear layer narrows with them (most of a Faster R-CNN's FLOPs are there).
"""
from __future__ import annotations

import torch
import torch.fx as fx

from .atoms import Ann, Factor
from .call import Call, factor_on


def roi_pool(c: Call) -> Ann:
    """``roi_align`` / ``roi_pool`` (function or module): channels on dim 1 pass through."""
    f = factor_on(c.ann(0), 1)
    for g in c.ann(0):
        if g is not f:
            c.atoms.freeze(g.atoms, f"{c.name}: channels on a pooled dim")
    if f is None:
        return ()
    if not f.single:
        c.atoms.freeze(f.atoms, f"{c.name}: channels mixed with other dims")
        return ()
    return (Factor((1,), f.atoms),)


def multiscale_roi_pool(c: Call) -> Ann:
    """``MultiScaleRoIAlign(x: dict of maps, boxes, image_sizes)``: each box is pooled from one
    of the maps named in ``featmap_names``, so channel k of every such map is output channel k:
    they are tied. Maps not named are not read."""
    feats = c.node.args[0] if c.node.args else c.node.kwargs.get("x")
    if not isinstance(feats, dict):
        for a in c.all_input_anns():
            c.atoms.freeze_ann(a, f"{c.name}: maps not given as a dict")
        return ()
    names = [k for k in c.module.featmap_names if k in feats]  # names not in the dict are skipped
    atoms, unusable = [], []
    for k in names:
        node = feats[k]
        ann = c.anns.get(node, ()) if isinstance(node, fx.Node) else ()
        f = factor_on(ann, 1)
        unusable += [g.atoms for g in ann if g is not f or not g.single]
        atoms.append(f.atoms if f is not None and f.single else None)
    for a in unusable:
        c.atoms.freeze(a, f"{c.name}: channels of a pooled map not on dim 1")
    if not atoms or any(a is None for a in atoms):
        for a in atoms:
            if a is not None:
                c.atoms.freeze(a, f"{c.name}: pools maps with and without prunable channels")
        return ()
    stacked = torch.stack(atoms)
    holes = (stacked < 0).any(0) & (stacked >= 0).any(0)
    if bool(holes.any()):
        c.atoms.freeze(stacked[:, holes], f"{c.name}: pools positions with and without a channel")
    for a in atoms[1:]:
        c.atoms.tie(atoms[0], a)
    return (Factor((1,), stacked.max(0).values),)
