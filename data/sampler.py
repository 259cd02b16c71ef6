"""Epoch-seeded, rank-sharded, resumable sampler.

Each epoch is one permutation of the dataset drawn from (seed, epoch). Rank r of W takes
positions r, r+W, r+2W, ... so that local batch k of every rank together hold exactly the
positions [kB, (k+1)B) of the permutation, B = W x local batch: the same global batch as a
1-rank run. The incomplete last global batch is dropped. It yields (index, epoch) pairs, which
the dataset uses to seed each image's augmentations (data/multiview.py), and can skip the
batches that a resumed run has already trained on. Given the per-step resolution schedule
(`set_sizes`), it yields (index, epoch, size) instead: the resolution of the step each item is
for, so the loader crops at that size (data/multiview.py).
"""
import torch
from torch.utils.data import Sampler

from common.config import ConfigError


class EpochSampler(Sampler):
    def __init__(self, n, local_batch, world_size=1, rank=0, seed=0, shuffle=True):
        self.n, self.local_batch, self.world, self.rank = n, local_batch, world_size, rank
        self.seed, self.shuffle = seed, shuffle
        self.steps_per_epoch = n // (local_batch * world_size)
        if self.steps_per_epoch == 0:
            raise ConfigError(f"dataset of {n} images is smaller than one global batch "
                             f"({local_batch} x {world_size} ranks); lower train.batch_size")
        self.epoch, self.skip, self.sizes = 0, 0, None

    def set_sizes(self, sizes):
        """Per global step resolution (e.g. Super Progressive Learning's schedule); None: off.
        Steps past its end take its last value."""
        self.sizes = None if sizes is None else [int(s) for s in sizes]

    def set_epoch(self, epoch, skip_steps=0):
        """Start `epoch`, leaving out its first `skip_steps` batches (resume inside an epoch)."""
        self.epoch, self.skip = epoch, skip_steps

    def __len__(self):
        return (self.steps_per_epoch - self.skip) * self.local_batch

    def __iter__(self):
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 100003 + self.epoch)
            perm = torch.randperm(self.n, generator=g)
        else:
            perm = torch.arange(self.n)
        used = self.steps_per_epoch * self.local_batch * self.world
        mine = perm[:used][self.rank::self.world][self.skip * self.local_batch:]
        if self.sizes is None:
            return iter([(int(i), self.epoch) for i in mine])
        first = self.epoch * self.steps_per_epoch + self.skip
        last = len(self.sizes) - 1
        return iter([(int(i), self.epoch, self.sizes[min(first + k // self.local_batch, last)])
                     for k, i in enumerate(mine.tolist())])
