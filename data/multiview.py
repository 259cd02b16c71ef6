"""Loader-side half of the augmentation: decode, random resized crop, flip (in worker processes).

Every random choice for a view is a pure function of (seed, epoch, image index, view): the
crop box and flip are drawn here, and a vector of uniform numbers `rand` is drawn for the
photometric operations that `data/augment.py` later applies batched on the device. So a run
gives the same views whatever the number of ranks, loader workers or restarts, which is what
makes a resumed run equal an uninterrupted one and a 2-rank run equal a 1-rank run.

The crops come out at `crop_size` (the largest training resolution); the device resizes them
to the resolution of the current step, so a resolution schedule needs no loader restart.
"""
import math

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision.transforms.v2 import functional as TF

from common import rng

N_RAND = 8  # uniform numbers per view for the device-side photometric operations


def random_resized_crop_box(height, width, scale, ratio, g):
    """(top, left, h, w) of a crop with area fraction in `scale` and aspect ratio in `ratio`
    (log-uniform), as in Inception / RandomResizedCrop: 10 tries, then the central crop."""
    area = height * width
    log_r = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        u = torch.rand(4, generator=g).tolist()
        target = area * (scale[0] + u[0] * (scale[1] - scale[0]))
        aspect = math.exp(log_r[0] + u[1] * (log_r[1] - log_r[0]))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(u[2] * (height - h + 1))
            left = int(u[3] * (width - w + 1))
            return top, left, h, w
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        h, w = height, int(round(height * ratio[1]))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


class MultiViewDataset(Dataset):
    """Indexed by (image index, epoch) pairs from `data.sampler.EpochSampler`.
    Returns dict(views uint8 [V, 3, S, S], rand float [V, N_RAND], index, label), plus
    local_views uint8 [L, 3, s, s] and local_rand [L, N_RAND] when local_views > 0 (multi-crop:
    drawn after the global views, so adding local views leaves the global ones unchanged)."""

    def __init__(self, images, num_views, crop_size, crop_scale=(0.2, 1.0), flip_prob=0.5, seed=0,
                 ratio=(3 / 4, 4 / 3), local_views=0, local_crop_size=96, local_crop_scale=(0.05, 0.14)):
        self.images, self.num_views, self.crop_size = images, num_views, crop_size
        self.crop_scale, self.ratio, self.flip_prob, self.seed = tuple(crop_scale), ratio, flip_prob, seed
        self.local_views, self.local_crop_size, self.local_crop_scale = local_views, local_crop_size, tuple(local_crop_scale)

    def __len__(self):
        return len(self.images)

    def __getitem__(self, key):
        index, epoch = key
        img, label = self.images.load(index)
        g = rng.generator(self.seed, rng.Stream.DATA, epoch, index)
        out = {"index": index, "label": label}
        out["views"], out["rand"] = self.crops(img, self.num_views, self.crop_size, self.crop_scale, g)
        if self.local_views:
            out["local_views"], out["local_rand"] = self.crops(img, self.local_views, self.local_crop_size,
                                                               self.local_crop_scale, g)
        return out

    def crops(self, img, n, size, scale, g):
        views, rand = [], []
        for _ in range(n):
            top, left, h, w = random_resized_crop_box(img.shape[1], img.shape[2], scale, self.ratio, g)
            v = TF.resized_crop(img, top, left, h, w, [size, size], antialias=True)
            if torch.rand(1, generator=g).item() < self.flip_prob:
                v = v.flip(-1)
            views.append(v)
            rand.append(torch.rand(N_RAND, generator=g))
        return torch.stack(views), torch.stack(rand)


class EvalDataset(Dataset):
    """Deterministic view for kNN and linear evaluation: resize the shorter side, center crop."""

    def __init__(self, images, resize, crop):
        self.images, self.resize, self.crop = images, resize, crop

    def __len__(self):
        return len(self.images)

    def __getitem__(self, index):
        img, label = self.images.load(index)
        if min(img.shape[1:]) != self.resize:
            img = TF.resize(img, self.resize, antialias=True)
        img = TF.center_crop(img, [self.crop, self.crop])
        return {"image": img, "label": label, "index": index}
