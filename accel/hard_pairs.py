"""Block-wise hard pair selection (intermediate-loss paper, sec. 2.3, Eq. 4; the project's
"hard-pair mining" module).

After block i, M random crops of side `crop` x (H, W) are taken from each view's feature map;
every one of the M x M crop pairs (p, q) goes through block i's head (global pooling, the
method's projector) and the method's own per-sample loss (`pair_loss`, so the negatives are
what the method uses: the batch, or block i's queue); per sample the pair with the highest
loss (Eq. 4) continues to the later blocks, which then process smaller maps. The selection
pass runs without gradient and leaves BN running statistics alone (as Hard Augment's); the
chosen crops are slices of the maps, so the gradient flows back through them.

Crop positions: M positions per view and per image (the paper crops each image), drawn uniformly
over the valid top-left corners from the given generator in one batched draw, and cut out with
one advanced-indexing gather (no loop over images); the choice of (p, q) is per sample. For
momentum methods the target network's map is cropped at the same positions (a key describes the
same region).

Controls (Table 5): `easy` takes the argmin; `random` one pair at random; `hard_example`
keeps whole maps and drops the easiest samples instead: it keeps ceil(crop^2 B) samples, the
same fraction of the later blocks' activations (and so, for convolutions, of their FLOPs) that
crops of side `crop` keep.
"""
import math

import torch

from accel import hard_augment
from common import dist
from common.precision import upcast
from models.batchnorm import frozen_bn_statistics

PICKS = ("hard", "easy", "random", "hard_example")


def crop_size(h, w, crop):
    return max(1, int(round(crop * h))), max(1, int(round(crop * w)))


def crop_positions(b, h, w, crop, m, generator):
    """Top-left corners of M (ch, cw) crops of an h x w map for each of b images, uniform over the
    valid range: (ys [M, B], xs [M, B]) int64 tensors on the CPU, and (ch, cw). The generator is
    the same on every rank: corners are drawn for the global batch and each rank takes its own
    images' columns, so an image gets the same crops whatever the number of ranks."""
    ch, cw = crop_size(h, w, crop)
    world, rank = dist.world_size(), dist.rank()
    ys = torch.randint(h - ch + 1, (m, b * world), generator=generator)[:, rank * b:(rank + 1) * b]
    xs = torch.randint(w - cw + 1, (m, b * world), generator=generator)[:, rank * b:(rank + 1) * b]
    return (ys, xs), (ch, cw)


def crops(x, positions, size):
    """[M, B, C, ch, cw] crops of x [B, C, H, W]: crop k of image i is
    x[i, :, ys[k, i]:ys[k, i] + ch, xs[k, i]:xs[k, i] + cw]. One gather (differentiable)."""
    ys, xs = (t.to(x.device, non_blocking=True) for t in positions)   # drawn on the host
    ch, cw = size
    rows = (ys[..., None] + torch.arange(ch, device=x.device))[..., :, None]     # [M, B, ch, 1]
    cols = (xs[..., None] + torch.arange(cw, device=x.device))[..., None, :]     # [M, B, 1, cw]
    img = torch.arange(x.shape[0], device=x.device)[None, :, None, None]         # [1, B, 1, 1]
    return x.permute(0, 2, 3, 1)[img, rows, cols].permute(0, 1, 4, 2, 3)         # [M, B, ch, cw, C] -> [M, B, C, ch, cw]


def choose(losses, pick, generator=None):
    """Per-sample index into the M*M pairs: argmax (hard), argmin (easy) or random, as Hard
    Augment chooses among view pairs."""
    if pick not in ("hard", "easy", "random"):
        raise ValueError(f"interloss.pair_pick '{pick}' is not one of {', '.join(PICKS)}")
    return hard_augment.choose(losses, pick, generator)


@torch.no_grad()
def crop_pair_losses(head, wrap, c1, c2):
    """[B, M*M] per-sample losses of crop pairs (p, q) (index p*M + q) through a block's head.
    c1, c2: per view, (online crops [M, B, ...], target crops or None); `wrap` builds the head's
    input from an (online, target) pair of maps."""
    (o1, t1), (o2, t2) = c1, c2
    m = o1.shape[0]
    with frozen_bn_statistics(head):
        e1 = head.embed([wrap(o1[p], None if t1 is None else t1[p]) for p in range(m)])
        e2 = head.embed([wrap(o2[q], None if t2 is None else t2[q]) for q in range(m)])
        return torch.stack([upcast(head.pair_loss(e1[p], e2[q])) for p in range(m) for q in range(m)], 1)


def select_crops(head, wrap, maps, targets, crop, m, pick, generator):
    """Eq. 4 for a pair of views: returns (online maps, target maps) of the chosen crops, the
    chosen index per sample (p * M + q), the [B, M*M] losses and each view's crop positions
    (ys, xs), each [M, B]. maps, targets: per view [B, C, H, W] (targets None for methods without
    a momentum network)."""
    b, h, w = maps[0].shape[0], *maps[0].shape[-2:]
    pos = [crop_positions(b, h, w, crop, m, generator) for _ in range(2)]
    oc = [crops(x, p, size) for x, (p, size) in zip(maps, pos)]
    tc = [None, None] if targets is None else [crops(t, p, size) for t, (p, size) in zip(targets, pos)]
    losses = crop_pair_losses(head, wrap, (oc[0], tc[0]), (oc[1], tc[1]))
    choice = choose(losses, pick, generator)
    b = torch.arange(choice.shape[0], device=choice.device)
    p, q = choice // m, choice % m
    new_maps = [oc[0][p, b], oc[1][q, b]]
    new_targets = None if targets is None else [tc[0][p, b], tc[1][q, b]]
    return new_maps, new_targets, choice, losses, [p for p, _ in pos]


def select_hard_examples(head, wrap, maps, targets, crop):
    """Table 5's 'hard example' control: keep the ceil(crop^2 B) samples with the highest
    whole-map loss. Returns (maps, targets, kept indices)."""
    with torch.no_grad(), frozen_bn_statistics(head):
        e = head.embed([wrap(x, None if targets is None else targets[k]) for k, x in enumerate(maps)])
        loss = upcast(head.pair_loss(e[0], e[1]))
    keep = loss.topk(math.ceil(crop * crop * loss.shape[0])).indices.sort().values
    return [x[keep] for x in maps], None if targets is None else [t[keep] for t in targets], keep
