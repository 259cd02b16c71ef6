"""Super Progressive Learning (WACV'23 sec. 3.2, Fig. 3): per-step arrays of input resolution and
augmentation magnitude, used by the loop like the learning-rate array.

Resolution: full resolution r_max during the learning-rate warm-up (starting small while the
learning rate is small destabilises F1-CLR's warm-up), then it drops to r_min and rises back to
r_max in stages that are multiples of `step` (most networks down-sample by 32), following the
inverse of the F1-CLR annealing: low resolution while the learning rate (and gradient noise) is
high, high resolution as it anneals. Magnitude rises linearly from m_min to m_max over training
(Fig. 3 left; 4 to 6 in Table 10).
"""
import numpy as np

from common.config import ConfigError


def _levels(r_min, r_max, step):
    if r_min > r_max or (r_max - r_min) % step or r_min % step or r_max % step:
        raise ConfigError(f"resolutions must be multiples of {step} with r_min <= r_max; got r_min={r_min}, "
                          f"r_max={r_max} (accel.progressive.r_min, data.crop_size)")
    return np.arange(r_min, r_max + 1, step)


def _staged(progress, levels):
    """Map progress in [0, 1] to one of `levels`, each taking an equal share of progress."""
    idx = np.minimum((progress * len(levels)).astype(int), len(levels) - 1)
    return levels[idx]


def magnitude_schedule(total_steps, m_min, m_max):
    return m_min + (m_max - m_min) * np.arange(total_steps) / max(total_steps - 1, 1)


def super_progressive(total_steps, warmup_steps, r_min, r_max, m_min, m_max, step=32):
    """(resolution, magnitude) per-step arrays. After the warm-up, progress through the stages is
    1 - lr_t / lr_max of the F1-CLR annealing, i.e. (1 - cos(pi s)) / 2 with s the fraction of
    the annealing phase done; the last stage is r_max."""
    levels = _levels(r_min, r_max, step)
    warmup_steps = int(min(warmup_steps, total_steps))
    s = np.arange(total_steps - warmup_steps) / max(total_steps - warmup_steps, 1)
    res = np.concatenate([np.full(warmup_steps, r_max), _staged(0.5 * (1 - np.cos(np.pi * s)), levels)])
    return res.astype(int), magnitude_schedule(total_steps, m_min, m_max)


def progressive(total_steps, r_min, r_max, m_min, m_max, step=32):
    """Plain Progressive Learning (Tan & Le, EfficientNetV2; WACV'23 Fig. 3 right): no
    full-resolution warm-up, resolution rising from r_min in equal-length stages."""
    levels = _levels(r_min, r_max, step)
    res = _staged(np.arange(total_steps) / max(total_steps, 1), levels)
    return res.astype(int), magnitude_schedule(total_steps, m_min, m_max)


def build_progressive(prog_cfg, total_steps, warmup_steps, r_max, magnitude):
    """(resolution, magnitude) arrays for accel.progressive.mode; `none` gives constant arrays."""
    if prog_cfg.mode == "none":
        return np.full(total_steps, r_max, dtype=int), np.full(total_steps, float(magnitude))
    if prog_cfg.mode == "super":
        return super_progressive(total_steps, warmup_steps, prog_cfg.r_min, r_max, prog_cfg.m_min,
                                 prog_cfg.m_max, prog_cfg.step)
    if prog_cfg.mode == "plain":
        return progressive(total_steps, prog_cfg.r_min, r_max, prog_cfg.m_min, prog_cfg.m_max, prog_cfg.step)
    raise ConfigError(f"accel.progressive.mode '{prog_cfg.mode}' is not one of none, super, plain")
