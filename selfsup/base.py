"""The method interface every SSL method in selfsup/ implements.

A method is an nn.Module holding the backbone and its heads. The training loop only calls
`forward(views)`; Hard Augment (accel/hard_augment.py) and other per-pair techniques use the two
pieces `forward` is built from:

    outs = method.embed(views)          # one output per view (tensors, or tuples of tensors)
    per_sample = method.pair_loss(outs[i], outs[j])   # [B]: loss of the pair (i, j) per sample

`forward(views, pairs=None)` averages pair_loss over `pairs` (default: all pairs of views) and
over the batch. A method whose loss is not a mean over pairs (DINO's multi-crop, SwAV's swapped
prediction) overrides `forward` and documents what its `pair_loss` means.
"""
import itertools

import torch
import torch.nn as nn


def mlp(dims, last_bn=True, last_bn_affine=False):
    """Linear-BN-ReLU stack; the last layer gets BN (without affine parameters by default, as in
    SimSiam's projector) and no ReLU. A Linear followed by BN has no bias (BN removes it)."""
    layers = []
    for i in range(len(dims) - 1):
        last = i == len(dims) - 2
        layers.append(nn.Linear(dims[i], dims[i + 1], bias=last and not last_bn))
        if not last:
            layers += [nn.BatchNorm1d(dims[i + 1]), nn.ReLU(inplace=True)]
        elif last_bn:
            layers.append(nn.BatchNorm1d(dims[i + 1], affine=last_bn_affine))
    return nn.Sequential(*layers)


class SSLMethod(nn.Module):
    def __init__(self, backbone):
        super().__init__()
        self.backbone = backbone

    def embed(self, views):
        raise NotImplementedError

    def pair_loss(self, a, b):
        raise NotImplementedError

    def forward(self, views, pairs=None, targets=None):
        """Mean loss over `pairs` of views (default: all pairs) and, when given, over every
        (view, target) pair: targets are per-view outputs computed elsewhere without gradient
        (Hard Augment's extra targets)."""
        outs = self.embed(views)
        if pairs is None:
            pairs = list(itertools.combinations(range(len(views)), 2))
        terms = [self.pair_loss(outs[i], outs[j]).mean() for i, j in pairs]
        terms += [self.pair_loss(out, t).mean() for out in outs for t in (targets or [])]
        return {"loss": torch.stack(terms).mean()}

    def param_groups(self):
        """Optimizer parameter groups. A group with fix_lr=True keeps the base learning rate
        instead of following the schedule; lr_mult scales the group's learning rate."""
        return [{"params": [p for p in self.parameters() if p.requires_grad]}]

    def on_step(self, step):
        """Called after each optimizer step (momentum encoders update here)."""
