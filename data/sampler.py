"""Epoch-seeded, rank-sharded, resumable sampler.

Each epoch is one permutation of the dataset drawn from (seed, epoch). Rank r of W takes
positions r, r+W, r+2W, ... so that local batch k of every rank together hold exactly the
positions [kB, (k+1)B) of the permutation, B = W x local batch: the same global batch as a
1-rank run. The incomplete last global batch is dropped. It yields (index, epoch) pairs, which
the dataset uses to seed each image's augmentations (data/multiview.py), and can skip the
batches that a resumed run has already trained on.
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
        self.epoch, self.skip = 0, 0

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
        return iter([(int(i), self.epoch) for i in mine])
