"""Per-iteration schedules as precomputed numpy arrays (DINO's habit): the loop reads
`schedule[step]` for the learning rate, momentum, resolution or magnitude alike.
Equation numbers are those of the WACV'23 paper (../shared/papers/wacv2023-...txt)."""
import math

import numpy as np

from common.config import ConfigError

# optim.lr is the learning rate of a global batch of 256; optim.lr_scaling says how it grows with
# the batch B: linear, lr x B / 256 (Goyal et al. 2017; SimSiam, MoCo, BYOL); sqrt, lr x sqrt(B /
# 256) (Krizhevsky 2014; SimCLR's small-batch LARS rule 0.075 sqrt(B) is lr = 1.2 here); none: as given.
LR_SCALING = {"linear": lambda r: r, "sqrt": math.sqrt, "none": lambda r: 1.0}


def base_lr(optim_cfg, global_batch):
    """The peak learning rate of a run of `global_batch` images per step: optim.lr scaled by
    optim.lr_scaling. Every script that reads optim.lr_scaling resolves it here."""
    rule = LR_SCALING.get(optim_cfg.lr_scaling)
    if rule is None:
        raise ConfigError(f"optim.lr_scaling '{optim_cfg.lr_scaling}' is not one of {', '.join(LR_SCALING)}")
    return optim_cfg.lr * rule(global_batch / 256)


def cosine(total_steps, lr_max, final=0.0):
    """Cosine annealing, Eq. 5: eps_t = final + (lr_max - final) (cos(pi t / L) + 1) / 2."""
    t = np.arange(total_steps)
    return final + 0.5 * (lr_max - final) * (1 + np.cos(np.pi * t / total_steps))


def warmup_cosine(total_steps, warmup_steps, lr_max, final=0.0, warmup_start=0.0):
    """Eq. 6: linear warm-up eps_t = (t / t_w) eps_max for t < t_w, then cosine over L - t_w."""
    warmup_steps = int(min(warmup_steps, total_steps))
    warm = warmup_start + (lr_max - warmup_start) * np.arange(warmup_steps) / max(warmup_steps, 1)
    return np.concatenate([warm, cosine(total_steps - warmup_steps, lr_max, final)])


def _warm_cos(t, t_w):
    """1/2 (cos(pi t / t_w) + 1): 1 at t = 0, 0 at t = t_w."""
    return 0.5 * (np.cos(np.pi * t / t_w) + 1)


def f1clr(total_steps, warmup_steps, lr_max, momentum_low=0.85, momentum_high=0.95):
    """Fixed 1-cycle schedule, Eq. 8: (lr, momentum) arrays of length total_steps.
    Warm-up of a fixed t_w steps, lr rising on a cosine window from 0 to lr_max while momentum
    falls from momentum_high to momentum_low (anti-phased); then lr anneals to 0 on a cosine
    over the remaining L - t_w steps while momentum rises back to momentum_high. Only the
    annealing phase stretches with training length."""
    t_w = int(min(max(warmup_steps, 1), total_steps))
    t = np.arange(total_steps, dtype=np.float64)
    warm, anneal = t < t_w, t >= t_w
    lr, mom = np.empty(total_steps), np.empty(total_steps)
    lr[warm] = lr_max - lr_max * _warm_cos(t[warm], t_w)
    mom[warm] = momentum_low + (momentum_high - momentum_low) * _warm_cos(t[warm], t_w)
    c = _warm_cos(t[anneal] - t_w, max(total_steps - t_w, 1))
    lr[anneal] = lr_max * c
    mom[anneal] = momentum_high - (momentum_high - momentum_low) * c
    return lr, mom


def one_cycle(total_steps, lr_max, pct=0.3, momentum_low=0.85, momentum_high=0.95):
    """1-cycle schedule, Eq. 7: F1-CLR whose first phase is a fraction rho = pct of training."""
    return f1clr(total_steps, int(round(pct * total_steps)), lr_max, momentum_low, momentum_high)


def polynomial(total_steps, lr_max, power=2.0, warmup_steps=0, final=0.0):
    """Linear warm-up, then lr_t = final + (lr_max - final) (1 - s)^power over the rest (s in [0, 1))."""
    warmup_steps = int(min(warmup_steps, total_steps))
    warm = lr_max * np.arange(warmup_steps) / max(warmup_steps, 1)
    s = np.arange(total_steps - warmup_steps) / max(total_steps - warmup_steps, 1)
    return np.concatenate([warm, final + (lr_max - final) * (1 - s) ** power])


def constant(total_steps, value):
    return np.full(total_steps, float(value))


def warmup_steps_of(optim_cfg, total_steps, steps_per_epoch):
    """optim.warmup_fraction of total_steps when set (budget runs), else optim.warmup_epochs."""
    fraction = optim_cfg.get("warmup_fraction", 0.0)
    if fraction:
        if not 0.0 < fraction < 1.0:
            raise ConfigError(f"optim.warmup_fraction must be in [0, 1), got {fraction}")
        return int(round(fraction * total_steps))
    return int(round(optim_cfg.warmup_epochs * steps_per_epoch))


def build_lr_schedule(optim_cfg, total_steps, steps_per_epoch, lr_max):
    """(lr array, momentum array or None) for optim.schedule. None: momentum stays optim.momentum."""
    warmup = warmup_steps_of(optim_cfg, total_steps, steps_per_epoch)
    name = optim_cfg.schedule
    if name == "cosine":
        return warmup_cosine(total_steps, warmup, lr_max, optim_cfg.final_lr), None
    if name == "constant":
        return constant(total_steps, lr_max), None
    if name == "poly":
        return polynomial(total_steps, lr_max, optim_cfg.poly_power, warmup, optim_cfg.final_lr), None
    if name == "f1clr":
        return f1clr(total_steps, warmup, lr_max, optim_cfg.momentum_low, optim_cfg.momentum_high)
    if name == "onecycle":
        return one_cycle(total_steps, lr_max, optim_cfg.onecycle_pct, optim_cfg.momentum_low, optim_cfg.momentum_high)
    raise ConfigError(f"optim.schedule '{name}' is not one of cosine, constant, poly, f1clr, onecycle")
