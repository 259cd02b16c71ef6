"""Hard Augment (WACV'23 sec. 3.3, Eq. 10-11, Algorithm 1): of n views per image, train on the
pair with the highest loss.

A no-grad selection pass embeds every view down-sampled to r_sel, computes the method's
per-sample loss for each of the n(n-1)/2 pairs (`method.pair_loss`, so any method in selfsup/
works, not only SimSiam), and per sample picks the argmax pair (Eq. 10); those two views are then
trained on at the current resolution, so only they enter the backward pass. `random` picks a
random pair instead (the control), and `extra_targets` adds the unselected low-resolution views
as targets of the selected ones (Table 9's comparison with multi-crop).

The selection pass runs the network in training mode, as the paper's pseudo-code does (batch
statistics in BatchNorm), but leaves the BN running statistics untouched: they describe the
training views, not the down-sampled ones.
"""
import functools
import itertools

import torch
import torch.nn.functional as F

from common.precision import upcast
from models.batchnorm import frozen_bn_statistics


def views_loaded(cfg):
    """Views per image the loader makes: Hard Augment's n candidates, else data.num_views."""
    ha = cfg.accel.hard_augment
    return ha.views if ha.enabled else cfg.data.num_views


def views_trained(cfg):
    """Global views per image the training step encodes: Hard Augment's chosen pair, else all loaded."""
    return 2 if cfg.accel.hard_augment.enabled else cfg.data.num_views


def all_pairs(n):
    return list(itertools.combinations(range(n), 2))


@functools.lru_cache(maxsize=16)
def pair_table(pairs, device):
    """The pairs as a [P, 2] index tensor on the device, copied once (no host copy per step)."""
    return torch.tensor(pairs).to(device, non_blocking=True)


@torch.no_grad()
def pair_losses(method, views, r_sel):
    """Per-sample losses of all view pairs at resolution r_sel: ([B, P] tensor, pairs, outputs)."""
    small = [F.interpolate(v, size=(r_sel, r_sel), mode="bilinear", antialias=True, align_corners=False)
             if v.shape[-1] != r_sel else v for v in views]
    with frozen_bn_statistics(method):
        outs = method.embed(small)
    pairs = all_pairs(len(views))
    losses = torch.stack([upcast(method.pair_loss(outs[i], outs[j])) for i, j in pairs], 1)
    return losses, pairs, outs


def choose(losses, pick="hard", generator=None):
    """Index of the chosen pair per sample: argmax of the loss (hard), argmin (easy) or random."""
    if pick == "hard":
        return losses.argmax(1)
    if pick == "easy":
        return losses.argmin(1)
    if pick == "random":
        draw = torch.randint(losses.shape[1], (losses.shape[0],), generator=generator)   # on the host
        return draw.to(losses.device, non_blocking=True)
    raise ValueError(f"accel.hard_augment.pick '{pick}' is not one of hard, easy, random")


def gather_pair(views, pairs, choice):
    """The two chosen views of every sample: [view_a, view_b], each [B, ...]."""
    idx = pair_table(tuple(pairs), choice.device)[choice]  # [B, 2]
    stacked = torch.stack(views)                              # [V, B, ...]
    b = torch.arange(choice.shape[0], device=choice.device)
    return [stacked[idx[:, 0], b], stacked[idx[:, 1], b]]


def gather_others(outs, pairs, choice):
    """Per-view outputs of the n - 2 views each sample did not choose (extra targets)."""
    n, bsz = len(outs), choice.shape[0]
    chosen = pair_table(tuple(pairs), choice.device)[choice]
    keep = torch.ones(bsz, n, dtype=torch.bool, device=choice.device)
    keep[torch.arange(bsz, device=choice.device)[:, None], chosen] = False
    # ascending view indices per sample (a stable sort puts the kept ones first, in order; unlike
    # nonzero() its output shape does not depend on the values, so --plan can count it on meta tensors)
    others = torch.sort(keep.to(torch.int8), dim=1, descending=True, stable=True).indices[:, :n - 2]
    b = torch.arange(bsz, device=choice.device)
    return [_gather_view(outs, others[:, k], b) for k in range(n - 2)]


def _gather_view(outs, view_idx, b):
    """Sample b's output of view view_idx[b]; outputs are tensors or tuples of tensors."""
    if isinstance(outs[0], (tuple, list)):
        return type(outs[0])(torch.stack([o[i] for o in outs])[view_idx, b] for i in range(len(outs[0])))
    return torch.stack(outs)[view_idx, b]


def select(method, views, r_sel, pick="hard", extra_targets=False, generator=None):
    """Views to train on (the chosen pair) and extra targets (or None), plus the mean loss of the
    chosen pairs at r_sel for logging. `method` is the unwrapped module (not DDP)."""
    losses, pairs, outs = pair_losses(method, views, r_sel)
    choice = choose(losses, pick, generator)
    targets = gather_others(outs, pairs, choice) if extra_targets and len(views) > 2 else None
    picked = losses.gather(1, choice[:, None]).mean()
    return gather_pair(views, pairs, choice), targets, picked
