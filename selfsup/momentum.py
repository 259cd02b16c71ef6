"""Momentum (EMA) target networks, shared by MoCo v1/v2/v2+, MoCo v3, BYOL and DINO.

The target is a frozen copy of some online modules (backbone + projector, say), updated after
every optimizer step as  theta_t <- m theta_t + (1 - m) theta_o  (MoCo Eq. 2, BYOL Eq. 1).
Buffers (BatchNorm running statistics) are not averaged: the target computes its own in its
training-mode forward, as in MoCo and BYOL. The momentum is a per-step array precomputed once,
like the learning rate: constant (MoCo: 0.999) or BYOL's cosine increase to 1
    m_k = 1 - (1 - m_base) (cos(pi k / K) + 1) / 2            (BYOL sec. 3.2; MoCo v3, DINO)
The target's forward runs inside the training step, so the FLOP ledger counts it (a momentum
method costs more per step than SimSiam: WACV'23 Table 2, 371 vs 248 petaFLOPs).
"""
import copy

import numpy as np
import torch
import torch.nn as nn

from common.schedules import cosine
from common.config import ConfigError
from selfsup.base import backbone_forward


def momentum_schedule(kind, base, total_steps):
    """Per-step EMA momentum: `constant` (base throughout) or `cosine` (base -> 1)."""
    if kind == "constant":
        return np.full(total_steps, float(base))
    if kind == "cosine":
        return cosine(total_steps, base, final=1.0)
    raise ConfigError(f"momentum schedule '{kind}' is not one of constant, cosine")


class MomentumTarget(nn.Module):
    """A frozen copy of `modules` applied in sequence; `update(modules, m)` is the EMA step.
    The first module is the backbone copy: `compression` (a token_dropout.SeqCompression, the
    key setting of NeurIPS'24 sec. 4.3) applies to it."""

    def __init__(self, *modules):
        super().__init__()
        self.nets = nn.ModuleList(copy.deepcopy(m) for m in modules)
        self.nets.requires_grad_(False)

    @torch.no_grad()
    def forward(self, x, compression=None):
        x = backbone_forward(self.nets[0], x, compression)
        for net in self.nets[1:]:
            x = net(x)
        return x

    @torch.no_grad()
    def update(self, modules, m):
        online = [p for mod in modules for p in mod.parameters()]
        target = list(self.nets.parameters())
        if len(online) != len(target):
            raise RuntimeError("online and target networks have different parameter lists")
        # theta_t <- m theta_t + (1 - m) theta_o, i.e. lerp towards theta_o by (1 - m)
        torch._foreach_lerp_(target, online, 1.0 - float(m))
