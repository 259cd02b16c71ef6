"""Per-iteration schedules as precomputed numpy arrays (DINO's habit): the loop reads
`schedule[step]` for the learning rate, momentum, resolution or magnitude alike.
Equation numbers are those of the WACV'23 paper (../shared/papers/wacv2023-...txt)."""
import numpy as np

from common.config import ConfigError


def cosine(total_steps, lr_max, final=0.0):
    """Cosine annealing, Eq. 5: eps_t = final + (lr_max - final) (cos(pi t / L) + 1) / 2."""
    t = np.arange(total_steps)
    return final + 0.5 * (lr_max - final) * (1 + np.cos(np.pi * t / total_steps))


def warmup_cosine(total_steps, warmup_steps, lr_max, final=0.0, warmup_start=0.0):
    """Eq. 6: linear warm-up eps_t = (t / t_w) eps_max for t < t_w, then cosine over L - t_w."""
    warmup_steps = int(min(warmup_steps, total_steps))
    warm = warmup_start + (lr_max - warmup_start) * np.arange(warmup_steps) / max(warmup_steps, 1)
    return np.concatenate([warm, cosine(total_steps - warmup_steps, lr_max, final)])


def constant(total_steps, value):
    return np.full(total_steps, float(value))


def build_lr_schedule(optim_cfg, total_steps, steps_per_epoch, lr_max):
    """The learning-rate array named by optim.schedule."""
    warmup = int(round(optim_cfg.warmup_epochs * steps_per_epoch))
    if optim_cfg.schedule == "cosine":
        return warmup_cosine(total_steps, warmup, lr_max, optim_cfg.final_lr)
    if optim_cfg.schedule == "constant":
        return constant(total_steps, lr_max)
    raise ConfigError(f"optim.schedule '{optim_cfg.schedule}' is not one of cosine, constant")
