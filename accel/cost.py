"""Analytical cost models (WACV'23), to compare with the FLOPs the ledger measures.

Cost of a step is taken proportional to resolution squared (Eq. 9's assumption); C is the cost
of a training step (forward + backward) over the cost of a forward pass (C = 6 in the paper:
roughly 3x for backward, two views).
"""
import numpy as np


def resolution_speedup_eq9(resolutions, r_max):
    """Eq. 9 exactly as printed: M = (1/L) sum_t (r_max / r_t)^2, the mean per-step speed-up."""
    r = np.asarray(resolutions, dtype=np.float64)
    return float(np.mean((r_max / r) ** 2))


def resolution_speedup(resolutions, r_max):
    """Ratio of total compute, L r_max^2 / sum_t r_t^2: what a FLOP count measures. Eq. 9 as
    printed averages per-step ratios instead, which over-states the speed-up of a schedule that
    mixes resolutions (the two agree for a constant resolution)."""
    r = np.asarray(resolutions, dtype=np.float64)
    return float(len(r) * r_max ** 2 / np.sum(r ** 2))


def hard_augment_overhead(r, r_sel, n_views, C=6):
    """Extra cost of Hard Augment's selection pass relative to one training step, Eq. 11:
    1 / M_ha - 1 = n r_sel^2 / (C r^2). Table 8 (r = 224, r_sel = 64, C = 6): 5.4 / 6.8 / 8.2 /
    10.9 % for 4 / 5 / 6 / 8 views. (The text's '5 %' for 4 views is 1 - M_ha.)"""
    return n_views * r_sel ** 2 / (C * r ** 2)


def hard_augment_efficiency(r, r_sel, n_views, C=6):
    """M_ha of Eq. 11: r^2 C / (r^2 C + n r_sel^2)."""
    return r ** 2 * C / (r ** 2 * C + n_views * r_sel ** 2)


def selection_overhead(r, r_hat, large_batch_factor=2.0, C=3.5):
    """Fast Online Minibatch Selection (thesis ch. 4): cost of the selection pass, a forward of
    b-bar = factor x b images at r_hat, relative to a training step of b images at r:
    factor r_hat^2 / (C r^2), C = cost of a training step over a forward pass. C = 3.5 reproduces
    Table 4.6 (ResNet-50, r = 224, b-bar = 2b): 4.7 / 10.5 / 18.7 / 57.2 % at r_hat 64 / 96 / 128 / 224
    (C = 3.5 is inferred from those four figures; it gives 4.7 / 10.5 / 18.7 / 57.1 %)."""
    return large_batch_factor * r_hat ** 2 / (C * r ** 2)
