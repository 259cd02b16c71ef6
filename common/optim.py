"""Optimizers: SGD with momentum, AdamW (ViT recipes), and LARS (You et al. 2017) as used by SimCLR, BYOL and the
SimSiam linear-evaluation protocol: biases and normalisation parameters (1-D tensors) are
excluded from the trust-ratio adaptation and from weight decay."""
import torch
from torch.optim import Optimizer

from common.config import ConfigError


class LARS(Optimizer):
    """update = momentum buffer of (g + wd w) x trust, trust = eta ||w|| / ||g + wd w|| for
    adapted parameters; groups with lars_exclude=True get plain momentum SGD without decay."""

    def __init__(self, params, lr, momentum=0.9, weight_decay=0.0, eta=0.001):
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta,
                                      lars_exclude=False))

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for g in self.param_groups:
            for p in g["params"]:
                if p.grad is None:
                    continue
                d = p.grad
                if not g["lars_exclude"]:
                    if g["weight_decay"]:
                        d = d.add(p, alpha=g["weight_decay"])
                    w_norm, d_norm = torch.norm(p), torch.norm(d)
                    trust = torch.where((w_norm > 0) & (d_norm > 0), g["eta"] * w_norm / d_norm,
                                        torch.ones_like(w_norm))
                    d = d.mul(trust)
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.clone(d).detach()
                else:
                    state["momentum_buffer"].mul_(g["momentum"]).add_(d)
                p.add_(state["momentum_buffer"], alpha=-g["lr"])
        return loss


def split_decay(param_groups, flag):
    """Each group split into its >= 2-D tensors and its biases / norm parameters (1-D), the
    latter marked with `flag` (excluded from weight decay, and from LARS's adaptation)."""
    groups = []
    for g in param_groups:
        extra = {k: v for k, v in g.items() if k != "params"}
        groups += [dict(extra, params=[p for p in g["params"] if p.ndim > 1]),
                   dict(extra, params=[p for p in g["params"] if p.ndim <= 1], **{flag: True})]
    return [g for g in groups if g["params"]]


def build_optimizer(name, param_groups, lr, momentum, weight_decay):
    """SGD, LARS or AdamW over the method's parameter groups. For LARS and AdamW, biases and
    normalisation parameters get no weight decay (SimCLR / BYOL's LARS, DINO's AdamW groups)."""
    if name == "sgd":
        return torch.optim.SGD(param_groups, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "lars":
        return LARS(split_decay(param_groups, "lars_exclude"), lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "adamw":
        # torch's AdamW decays by lr x weight_decay per step (decoupled from the gradient, but
        # scaled by the learning rate); recipes that state a decay independent of lr (big_vision)
        # divide it by the peak lr to get this value.
        groups = [dict(g, weight_decay=0.0) if g.get("no_decay") else g for g in split_decay(param_groups, "no_decay")]
        return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.999), weight_decay=weight_decay)
    raise ConfigError(f"optim.name '{name}' is not one of sgd, lars, adamw")


def set_weight_decay(optimizer, value):
    """Weight decay of the step for every group that decays (a weight-decay schedule)."""
    for g in optimizer.param_groups:
        if not (g.get("no_decay") or g.get("lars_exclude")):
            g["weight_decay"] = value
