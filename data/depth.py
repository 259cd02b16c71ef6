"""Depth datasets for train_depth_ubn.py (thesis ch. 2): the procedural scenes
(data/synthetic_depth.py) or KITTI raw (data/kitti.py), and the labeled / unlabeled split of
Fig. 2.6: every training image stays available as unlabeled data, and ground truth is kept only
on a regular subset of frames, as a depth sensor with a lower frame rate would give.
"""
import math

from torch.utils.data import Dataset

from data.folder import DataError
from data.kitti import KittiDepth
from data.synthetic_depth import SyntheticDepth


def regular_labeled(n, fraction):
    """Which of n consecutive frames keep their ground truth: frame i is labeled iff
    floor((i + 1) f) > floor(i f), i.e. exactly every (1/f)-th frame for f = 1/k (frames
    k-1, 2k-1, ...), and an evenly spread floor(n f) frames for any other f in (0, 1]."""
    if not 0 < fraction <= 1:
        raise ValueError(f"labeled_fraction must be in (0, 1], got {fraction}")
    eps = 1e-9   # so that f = 1/3 counts 3 frames per label despite rounding
    return [math.floor((i + 1) * fraction + eps) > math.floor(i * fraction + eps) for i in range(n)]


def labeled_indices(images, fraction):
    """Indices of the frames that keep ground truth: the regular pattern along each sequence
    (a KITTI drive and camera, or the whole synthetic set)."""
    positions = images.sequence_positions()
    lengths = {}
    for seq, pos in positions:
        lengths[seq] = max(lengths.get(seq, 0), pos + 1)
    masks = {seq: regular_labeled(n, fraction) for seq, n in lengths.items()}
    return [i for i, (seq, pos) in enumerate(positions) if masks[seq][pos]]


class DepthDataset(Dataset):
    """Items of `images` at `indices` (all by default) as dicts; accepts the (index, epoch) keys of
    data/sampler.EpochSampler as well as plain indices. with_depth=False: images only (the
    unlabeled stream; KITTI then skips the Velodyne projection)."""

    def __init__(self, images, indices=None, with_depth=True):
        self.images, self.with_depth = images, with_depth
        self.indices = list(range(len(images))) if indices is None else list(indices)

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, key):
        i = key[0] if isinstance(key, tuple) else key
        image, depth = self.images.load(self.indices[i], self.with_depth)
        return {"image": image, "depth": depth} if self.with_depth else {"image": image}


def build_depth_images(data_cfg, seed=0):
    """(train images, test images) for data.name = synthetic | kitti."""
    if data_cfg.name == "synthetic":
        kw = dict(seed=seed, height=data_cfg.height, width=data_cfg.width)
        return SyntheticDepth(data_cfg.synthetic_train_size, 0, **kw), SyntheticDepth(data_cfg.synthetic_test_size, 1, **kw)
    if data_cfg.name == "kitti":
        if data_cfg.root is None:
            raise DataError("data.name=kitti needs data.root (the KITTI raw folder)")
        return (KittiDepth(data_cfg.root, data_cfg.train_split, data_cfg.height, data_cfg.width),
                KittiDepth(data_cfg.root, data_cfg.test_split, data_cfg.height, data_cfg.width))
    raise DataError(f"data.name '{data_cfg.name}' is not one of synthetic, kitti")
