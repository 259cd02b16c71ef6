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


# ---- ViT sequence compression (NeurIPS'24 sec. 4.3-4.4, Table 1)

def sequence_length(image_size, patch_size, drop_ratio=0.0):
    """Patch tokens after compression, sec. 4.3: L = (1 - d) floor(HW / q^2). image_size: an int
    (square) or (H, W). Prefix (class) tokens are not included; the count can be fractional."""
    h, w = (image_size, image_size) if isinstance(image_size, (int, float)) else image_size
    return (1.0 - drop_ratio) * float((int(h) * int(w)) // (int(patch_size) ** 2))


def vit_sample_cost(method, L_q, L_k, K=0, L_q_small=0.0, L_base=197):
    """Hardware-independent cost of one sample, Table 1, in units of a forward pass of a
    full 197-token sequence. A forward costs L, a backward 2L (sec. 4.4), so a query that
    is back-propagated costs 3 L_q and a momentum key L_k. The L's include the class token.
        SimCLR   3 (L_q + L_k) / L_base       (both views through the trained encoder)
        MoCo v3  (3 L_q + L_k) / L_base       (key from the momentum encoder, forward only)
        DINO     (3 L_q + 3 K L_q_small + L_k) / L_base   (K small crops as extra queries)"""
    if method == "simclr":
        return 3.0 * (L_q + L_k) / L_base
    if method == "mocov3":
        return (3.0 * L_q + L_k) / L_base
    if method == "dino":
        return (3.0 * L_q + 3.0 * K * L_q_small + L_k) / L_base
    raise ValueError(f"vit_sample_cost: method '{method}' is not one of simclr, mocov3, dino")


def vit_image_cost(n_queries, n_keys, L_q, L_k, n_local=0, L_small=0.0, L_base=197):
    """Cost units of one image in one training step of this repository's loop, counted as Table 1
    counts them (forward L, backward 2L) over the views the loop actually computes: `n_queries`
    global views back-propagated through the online encoder (3 L_q each), `n_keys` global views
    encoded by a momentum target (L_k each), and `n_local` local crops as online queries
    (3 L_small each). The method says what it computes (selfsup/base.py `encoded_views`):
        SimCLR, 2 views: 2 queries, no key       -> 3 (L_q + L_q) / L_base, Table 1's SimCLR
        MoCo v3, non-symmetric (the paper's): 1 query, 1 key -> (3 L_q + L_k) / L_base, Table 1
        MoCo v3, symmetric (the official loss): 2 queries, 2 keys -> twice Table 1 (the paper's
            Fig. 5 counts the official MoCo v3 the same way: 300 x 2 epochs)
        DINO, 2 global views: 2 students, 2 teachers (Table 1's formula has one of each)."""
    return (3.0 * n_queries * L_q + n_keys * L_k + 3.0 * n_local * L_small) / L_base
