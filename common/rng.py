"""Named random streams: every random choice a run makes outside torch's global RNG is drawn
from a generator seeded by (seed, stream id, keys...), so it is a pure function of where it is
used and a resumed or multi-rank run draws the same numbers.

Each user has its own stream id, so two users can never share numbers even when their keys
coincide (the data's (epoch, index) and Hard Augment's (step, rank) are both pairs of small
ints). Add a member to `Stream` for a new user; never reuse or renumber one (runs would change).
"""
import enum

import numpy as np
import torch


class Stream(enum.IntEnum):
    DATA = 1               # loader crops, flips, photometric uniforms: keys (epoch, image index)
    HARD_AUGMENT = 2       # Hard Augment's random control choice: keys (step, rank)
    MINIBATCH = 3          # Fast Online Minibatch Selection draws: keys (step, rank)
    COMPRESSION = 4        # ViT token dropout of a training step: keys (step, rank)
    BLOCKWISE = 5          # intermediate losses: drawn block, crop pairs: keys (step,), same on every rank
    CA_MSE = 6             # grad_error.py's compressed passes: keys (sample index,)
    MOCO_ROLES = 7         # MoCo v3 non-symmetric: which view of each image is the query: keys (step,)


def generator(seed, stream, *keys):
    """A CPU torch.Generator seeded from (seed, stream, *keys), well mixed by numpy's SeedSequence."""
    if not isinstance(stream, Stream):
        raise TypeError(f"stream must be a common.rng.Stream, got {stream!r}")
    entropy = [int(seed), int(stream)] + [int(k) for k in keys]
    state = np.random.SeedSequence(entropy).generate_state(2, np.uint64)
    return torch.Generator().manual_seed(int(state[0] >> np.uint64(1)))
