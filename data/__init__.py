"""Datasets and loaders. `build_images(cfg)` gives the train and val image sources; the loaders
wrap them for multi-view training (data/multiview.py) or deterministic evaluation."""
import os

from torch.utils.data import DataLoader, Subset

from common import dist
from data.folder import CIFAR10Images, DataError, ImageFolderImages, find_val_split
from data.multiview import EvalDataset, MultiViewDataset
from data.sampler import EpochSampler
from data.synthetic import SyntheticImages

__all__ = ["DataError", "build_images", "build_train_loader", "build_eval_loader"]


def build_images(data_cfg, seed=0):
    """(train images, val images, number of classes) for data.name."""
    name = data_cfg.name
    if name == "synthetic":
        kw = dict(seed=seed, image_size=data_cfg.synthetic_image_size, num_classes=data_cfg.synthetic_classes)
        train = SyntheticImages(data_cfg.synthetic_train_size, split=0, **kw)
        val = SyntheticImages(data_cfg.synthetic_val_size, split=1, **kw)
        return train, val, data_cfg.synthetic_classes
    if data_cfg.root is None:
        raise DataError(f"data.name={name} needs data.root (the dataset folder)")
    if name == "imagefolder":
        train = ImageFolderImages(os.path.join(data_cfg.root, data_cfg.train_split), data_cfg.subset_per_class)
        val_dir = os.path.join(data_cfg.root, find_val_split(data_cfg.root, data_cfg.val_split))
        val = ImageFolderImages(val_dir, data_cfg.val_subset_per_class, classes=train.classes)
        return train, val, train.num_classes
    if name == "cifar10":
        train = CIFAR10Images(data_cfg.root, True, data_cfg.download, data_cfg.subset_per_class)
        val = CIFAR10Images(data_cfg.root, False, data_cfg.download, data_cfg.val_subset_per_class)
        return train, val, 10
    raise DataError(f"data.name '{name}' is not one of synthetic, imagefolder, cifar10")


def loader_kwargs(data_cfg, device):
    kw = dict(num_workers=data_cfg.workers, pin_memory=device.type == "cuda")
    if data_cfg.workers > 0:
        kw.update(persistent_workers=True, prefetch_factor=data_cfg.prefetch_factor)
    return kw


def build_train_loader(images, cfg, local_batch, device, num_views=None):
    """Multi-view loader; returns (loader, sampler). Call sampler.set_epoch before each epoch."""
    ds = MultiViewDataset(images, num_views or cfg.data.num_views, cfg.data.crop_size, cfg.data.crop_scale,
                          cfg.augment.flip_prob, seed=cfg.train.seed, local_views=cfg.data.local_views,
                          local_crop_size=cfg.data.local_crop_size, local_crop_scale=cfg.data.local_crop_scale)
    sampler = EpochSampler(len(ds), local_batch, dist.world_size(), dist.rank(), seed=cfg.train.seed)
    loader = DataLoader(ds, batch_size=local_batch, sampler=sampler, drop_last=True,
                        **loader_kwargs(cfg.data, device))
    return loader, sampler


def build_eval_loader(images, cfg, batch_size, device, shard=True):
    """Deterministic loader. With shard=True rank r reads images r, r+W, ... (no padding, no
    duplicates); `evaluation.features.extract` puts the pieces back in order."""
    ds = EvalDataset(images, cfg.data.eval_resize, cfg.data.eval_crop)
    if shard and dist.world_size() > 1:
        ds = Subset(ds, range(dist.rank(), len(ds), dist.world_size()))
    kw = loader_kwargs(cfg.data, device)
    kw.pop("persistent_workers", None)  # evaluated rarely; don't keep idle workers around
    return DataLoader(ds, batch_size=batch_size, shuffle=False, drop_last=False, **kw)

