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


def build_optimizer(name, param_groups, lr, momentum, weight_decay):
    """SGD or LARS over the method's parameter groups. For LARS each group is split into its
    adapted (>= 2-D) and excluded (biases, norm parameters) tensors."""
    if name == "sgd":
        return torch.optim.SGD(param_groups, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "lars":
        groups = []
        for g in param_groups:
            extra = {k: v for k, v in g.items() if k != "params"}
            adapted = [p for p in g["params"] if p.ndim > 1]
            excluded = [p for p in g["params"] if p.ndim <= 1]
            groups += [dict(extra, params=adapted), dict(extra, params=excluded, lars_exclude=True)]
        return LARS([g for g in groups if g["params"]], lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "adamw":
        # torch's AdamW decays by lr x weight_decay per step (decoupled from the gradient, but
        # scaled by the learning rate); recipes that state a decay independent of lr (big_vision)
        # divide it by the peak lr to get this value.
        return torch.optim.AdamW(param_groups, lr=lr, betas=(0.9, 0.999), weight_decay=weight_decay)
    raise ConfigError(f"optim.name '{name}' is not one of sgd, lars, adamw")
