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
        loss = None
        if closure is not None:
            with torch.enable_grad():   # a closure runs forward + backward (torch's optimizers do the same)
                loss = closure()
        for g in self.param_groups:
            # foreach kernels take lists of one device and dtype: one bucket each, as torch's own
            # foreach optimizers group them; parameters without a gradient are left out.
            buckets = {}
            for p in g["params"]:
                if p.grad is not None:
                    buckets.setdefault((p.device, p.dtype), []).append(p)
            for params in buckets.values():
                self._update(g, params)
        return loss

    def _update(self, g, params):
        """One group's step on parameters of one device and dtype, as multi-tensor ops. Every
        value stays on the device (no .item(), no branch on a tensor), so a CUDA step never waits
        for the GPU."""
        grads = [p.grad for p in params]
        d = grads
        if not g["lars_exclude"]:
            if g["weight_decay"]:
                d = torch._foreach_add(grads, params, alpha=g["weight_decay"])
            w_norm = torch.stack(torch._foreach_norm(params))
            d_norm = torch.stack(torch._foreach_norm(d))
            trust = torch.where((w_norm > 0) & (d_norm > 0), g["eta"] * w_norm / d_norm, torch.ones_like(w_norm))
            # one 0-d factor per tensor (shapes differ, so on CUDA torch may run this multiply one kernel per
            # tensor, still without a sync); without weight decay d is still p.grad: not in place
            if d is grads:
                d = torch._foreach_mul(d, trust.unbind(0))
            else:
                torch._foreach_mul_(d, trust.unbind(0))
        bufs = [self.state[p].get("momentum_buffer") for p in params]
        old = [i for i, b in enumerate(bufs) if b is not None]
        if old:
            old_bufs = [bufs[i] for i in old]
            torch._foreach_mul_(old_bufs, g["momentum"])
            torch._foreach_add_(old_bufs, [d[i] for i in old])
        for i, b in enumerate(bufs):
            if b is None:   # first step of this parameter: the buffer starts at d (a copy: d may be p.grad)
                bufs[i] = self.state[params[i]]["momentum_buffer"] = torch.clone(d[i]).detach()
        torch._foreach_add_(params, bufs, alpha=-g["lr"])


class SGD(torch.optim.SGD):
    """torch's SGD, whose fused kernel takes the momentum buffers of a step all or none: a
    parameter that first gets a gradient after the others (DINO's and SwAV's layers frozen for the
    first epoch, a block that partial back-propagation reached late) would stop it. Such a
    parameter gets a zero buffer before its first step, which is the same update: torch starts a
    buffer at the gradient, and 0 x momentum + gradient is the gradient (dampening 0)."""

    @torch.no_grad()
    def step(self, closure=None):
        for g in self.param_groups:
            if g["momentum"] and g.get("fused"):
                for p in g["params"]:
                    if p.grad is not None and self.state[p].get("momentum_buffer") is None:
                        self.state[p]["momentum_buffer"] = torch.zeros_like(p)
        return super().step(closure)


def split_decay(param_groups, flag):
    """Each group split into its >= 2-D tensors and its biases / norm parameters (1-D), the
    latter marked with `flag` (excluded from weight decay, and from LARS's adaptation)."""
    groups = []
    for g in param_groups:
        extra = {k: v for k, v in g.items() if k != "params"}
        groups += [dict(extra, params=[p for p in g["params"] if p.ndim > 1]),
                   dict(extra, params=[p for p in g["params"] if p.ndim <= 1], **{flag: True})]
    return [g for g in groups if g["params"]]


def implementation(device):
    """Keyword arguments that pick torch's SGD / AdamW kernels for parameters on `device`.
    CUDA: fused (one kernel for the whole update instead of one per op, no host round trips).
    CPU: fused as well. Measured on this repo's shared 2-core CPU (torch 2.14.1, median of 15
    alternated steps, ResNet-18 / ViT-Ti parameters): SGD 13 / 6.5 ms fused against 78 / 15 ms
    foreach and 19 / 9 ms for-loop; AdamW 20 / 8 ms fused against 106 / 40 ms foreach and
    190 / 37 ms for-loop. Fused was the fastest in every run (also for ResNet-50 / ViT-S:
    benchmarks/optimizer_step.py); foreach on the CPU is a per-tensor loop in C++ with extra
    temporaries, no faster than the for-loop. In float64 fused matches the for-loop update to
    3e-16 (tests/test_optim.py). None or another device: torch's defaults, as before."""
    if device is not None and torch.device(device).type in ("cuda", "cpu"):
        return {"fused": True}
    return {}


def build_optimizer(name, param_groups, lr, momentum, weight_decay, device=None):
    """SGD, LARS or AdamW over the method's parameter groups. For LARS and AdamW, biases and
    normalisation parameters get no weight decay (SimCLR / BYOL's LARS, DINO's AdamW groups).
    device: where the parameters live (a torch.device, or None for torch's default kernels); it
    picks fused SGD / AdamW kernels (implementation()). LARS is multi-tensor on any device."""
    if name == "sgd":
        return SGD(param_groups, lr=lr, momentum=momentum, weight_decay=weight_decay, **implementation(device))
    if name == "lars":
        return LARS(split_decay(param_groups, "lars_exclude"), lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "adamw":
        # torch's AdamW decays by lr x weight_decay per step (decoupled from the gradient, but
        # scaled by the learning rate); recipes that state a decay independent of lr (big_vision)
        # divide it by the peak lr to get this value.
        groups = [dict(g, weight_decay=0.0) if g.get("no_decay") else g for g in split_decay(param_groups, "no_decay")]
        return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.999), weight_decay=weight_decay, **implementation(device))
    raise ConfigError(f"optim.name '{name}' is not one of sgd, lars, adamw")


def set_weight_decay(optimizer, value):
    """Weight decay of the step for every group that decays (a weight-decay schedule)."""
    for g in optimizer.param_groups:
        if not (g.get("no_decay") or g.get("lars_exclude")):
            g["weight_decay"] = value
