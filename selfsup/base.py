"""The method interface every SSL method in selfsup/ implements.

A method is an nn.Module holding the backbone and its heads. The training loop calls
`forward(views, local_views=..., compression=...)`; Hard Augment (accel/hard_augment.py) and
other per-pair techniques use the two pieces `forward` is built from:

    outs = method.embed(views)          # one output per view (tensors, or tuples of tensors)
    per_sample = method.pair_loss(outs[i], outs[j])   # [B]: loss of the pair (i, j) per sample

`forward(views, pairs=None)` averages pair_loss over `pairs` (default: all pairs of views) and
over the batch. A method whose loss is not a mean over pairs (DINO's multi-crop, SwAV's swapped
prediction) overrides `forward` and documents what its `pair_loss` means.

Per-step hooks, called by train_ssl.py in this order each iteration:
    method.begin_step(step)       # before the forward: schedules indexed by step (temperatures)
    loss.backward()
    method.after_backward(step)   # before the optimizer: cancel gradients of frozen parts
    optimizer.step()
    method.on_step(step)          # after the optimizer: momentum-encoder (EMA) updates
`prepare(total_steps, steps_per_epoch)` precomputes the per-step arrays once, before the loop.

ViT sequence compression (NeurIPS'24 sec. 4, accel/token_dropout.py): `forward` and `embed` take
`compression`, a `token_dropout.QueryKey` or None (no compression). The online backbone runs with
its `query` setting, the momentum target (if any) with its `key` setting; a method without a
target runs every view with `query`. Local crops are never compressed (sec. 6.4). Every backbone
call goes through `backbone_forward`, so a ResNet is always called plainly. Each method class
sets `has_target` (whether it has a momentum target), which accel/compression.py reads.
"""
import itertools

import torch
import torch.nn as nn


def query_key(compression):
    """(query setting, key setting) of a token_dropout.QueryKey; (None, None) for None."""
    return (None, None) if compression is None else (compression.query, compression.key)


def backbone_forward(backbone, x, compression=None):
    """backbone(x) under `compression` (a token_dropout.SeqCompression, or None: plain). Only a
    ViT (models/vit.py, `is_vit`) takes the compression arguments; any backbone is called plainly
    when the setting changes nothing, so a ResNet never sees them."""
    if compression is None or not compression.active(getattr(backbone, "patch_size", None)):
        return backbone(x)
    if not getattr(backbone, "is_vit", False):
        raise ValueError(f"sequence compression needs a ViT backbone, not {type(backbone).__name__}")
    return backbone(x, **compression.vit_kwargs())


def mlp(dims, last_bn=True, last_bn_affine=False, bn=True, act=nn.ReLU):
    """Linear-[BN]-act stack; the last layer gets BN (without affine parameters by default, as in
    SimSiam's projector) when last_bn, and no activation. A Linear followed by BN has no bias."""
    layers = []
    for i in range(len(dims) - 1):
        last = i == len(dims) - 2
        layers.append(nn.Linear(dims[i], dims[i + 1], bias=not (bn and (not last or last_bn))))
        if not last:
            layers += ([nn.BatchNorm1d(dims[i + 1])] if bn else []) + [act()]
        elif last_bn and bn:
            layers.append(nn.BatchNorm1d(dims[i + 1], affine=last_bn_affine))
    return nn.Sequential(*layers)


def ordered_pairs(n_global, n_views, pairs=None):
    """(teacher view, student view) index pairs of a multi-crop loss (DINO, SwAV): with pairs
    None, every global view i against every other view; else both directions of each given pair
    of global views, plus every local view (indices n_global..n_views-1) against every global one."""
    if pairs is None:
        return [(i, v) for i in range(n_global) for v in range(n_views) if v != i]
    out = [o for i, j in pairs for o in ((i, j), (j, i))]
    return out + [(i, v) for i in range(n_global) for v in range(n_global, n_views)]


class SSLMethod(nn.Module):
    has_target: bool   # a momentum target network (set by every method class; accel/compression.py)
    seed = 0           # train.seed, for a method's own named random streams (set by selfsup/build.py)

    def __init__(self, backbone):
        super().__init__()
        self.backbone = backbone
        self.step = 0

    def embed(self, views, compression=None):
        """One output per view; `compression`: a token_dropout.QueryKey or None."""
        raise NotImplementedError

    def pair_loss(self, a, b):
        raise NotImplementedError

    def forward(self, views, pairs=None, targets=None, local_views=None, compression=None):
        """Mean loss over `pairs` of views (default: all pairs), over every (view, target) pair
        when targets are given (per-view outputs computed elsewhere without gradient: Hard
        Augment's extra targets), and over every (view, local view) pair for multi-crop.
        `compression` (a token_dropout.QueryKey) applies to `views` only."""
        outs = self.embed(views, compression)
        if pairs is None:
            pairs = list(itertools.combinations(range(len(views)), 2))
        terms = [self.pair_loss(outs[i], outs[j]).mean() for i, j in pairs]
        if local_views:
            local_outs = self.embed(local_views)  # small crops: never compressed (NeurIPS'24 sec. 6.4)
            terms += [self.pair_loss(out, lo).mean() for out in outs for lo in local_outs]
        return self.mean_loss(terms, outs, pairs, targets)

    def mean_loss(self, terms, outs, pairs, targets):
        """The tail every forward shares: Hard Augment's extra targets against every view, the
        state update (queues, centres) after a training forward only -- not after a validation
        loss or Hard Augment's selection pass, which run without gradient -- and the mean."""
        terms = terms + [self.pair_loss(out, t).mean() for out in outs for t in (targets or [])]
        if torch.is_grad_enabled():
            self.update_state(outs, pairs)
        return {"loss": torch.stack(terms).mean()}

    def update_state(self, outs, pairs):
        """After a training forward (not after Hard Augment's selection pass): queues, centres."""

    def param_groups(self):
        """Optimizer parameter groups. A group with fix_lr=True keeps the base learning rate
        instead of following the schedule; lr_mult scales the group's learning rate."""
        return [{"params": [p for p in self.parameters() if p.requires_grad]}]

    def eval_backbone(self):
        """The backbone that kNN, checkpoints' "backbone" entry and linear evaluation use."""
        return self.backbone

    def prepare(self, total_steps, steps_per_epoch):
        """Precompute per-step arrays (EMA momentum, temperatures) for a run of total_steps."""

    # Per-step arrays (attribute names) whose shape is set in epochs of training: in train.budget
    # runs they follow the fraction of budget spent, as the lr does (compressed steps are cheaper,
    # so "the first 30 epochs" is a share of the budget, not of the steps).
    budget_schedules = ()

    def follow_budget(self, follow):
        """Re-index `budget_schedules` by `follow` (common/run_length.py RunLength.follow)."""
        for name in self.budget_schedules:
            if getattr(self, name, None) is not None:
                setattr(self, name, follow(getattr(self, name)))

    def schedule_values(self):
        """The method's scheduled values at the current step, for the training log."""
        return {"ema": float(self.ema[self.step])} if getattr(self, "ema", None) is not None else {}

    def encoded_views(self, n_views, n_local=0):
        """(query views, key views) per image that a training forward over n_views global views
        (and n_local local crops) computes: query = back-propagated through the online encoder,
        key = encoded by the momentum target. accel/compression.py counts NeurIPS'24 sample costs
        (Table 1) from it. Default: every global view is a query and, with a target, a key."""
        return n_views, (n_views if self.has_target else 0)

    def ledger_key(self):
        """Anything else a step's cost depends on (the FLOP ledger measures each key once)."""
        return ()

    def begin_step(self, step):
        self.step = step

    def after_backward(self, step):
        """Between backward and the optimizer step (gradients may be set to None here)."""

    def on_step(self, step):
        """Called after each optimizer step (momentum encoders update here)."""
