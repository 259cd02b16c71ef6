"""Datasets and loaders. `build_images(cfg)` gives the train and val image sources; the loaders
wrap them for multi-view training (data/multiview.py) or deterministic evaluation."""
import os
import signal

from torch.utils.data import DataLoader, Subset

from common import dist
from common.run import STOP_SIGNALS
from data.decode import collate, device_batch
from data.folder import CIFAR10Images, DataError, ImageFolderImages, find_val_split
from data.multiview import EvalDataset, MultiViewDataset
from data.sampler import EpochSampler
from data.synthetic import SyntheticImages

__all__ = ["DataError", "build_images", "build_train_loader", "build_eval_loader", "device_batch"]


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


def ignore_stop_signals(worker_id=None):
    """Loader workers leave the stop signals (common/run.py's STOP_SIGNALS) to the main process.
    Slurm, `timeout`, Ctrl-C and submitit signal the whole process group; a worker killed by the
    signal would make the main process die with "DataLoader worker ... is killed" before it could
    save. The main process ends the workers itself when it exits (common/run.py)."""
    for s in STOP_SIGNALS:
        signal.signal(s, signal.SIG_IGN)


def loader_kwargs(data_cfg, device):
    kw = dict(num_workers=data_cfg.workers, pin_memory=device.type == "cuda", worker_init_fn=ignore_stop_signals)
    if data_cfg.workers > 0:
        kw.update(persistent_workers=True, prefetch_factor=data_cfg.prefetch_factor)
    return kw


def build_train_loader(images, cfg, local_batch, device, num_views=None):
    """Multi-view loader; returns (loader, sampler). Call sampler.set_epoch before each epoch,
    and sampler.set_sizes(resolution schedule) to have crops made at each step's resolution.
    num_views None: data.num_views. Multi-crop views (data.local_views, ...) exist in the SSL
    scripts' config tree only (selfsup/config.py); elsewhere the loader delivers global views.
    With data.decode=device the batches hold JPEG bytes and crop boxes: every consumer moves a
    batch to the device with `device_batch` (data/decode.py), which decodes and crops there."""
    d = cfg.data
    decode = d.get("decode", "worker")
    ds = MultiViewDataset(images, num_views or d.get("num_views", 1), d.crop_size, d.crop_scale,
                          cfg.augment.flip_prob, seed=cfg.train.seed, local_views=d.get("local_views", 0),
                          local_crop_size=d.get("local_crop_size", 96),
                          local_crop_scale=d.get("local_crop_scale", (0.05, 0.14)), decode=decode)
    sampler = EpochSampler(len(ds), local_batch, dist.world_size(), dist.rank(), seed=cfg.train.seed)
    loader = DataLoader(ds, batch_size=local_batch, sampler=sampler, drop_last=True,
                        collate_fn=collate, **loader_kwargs(cfg.data, device))
    return loader, sampler


def build_eval_loader(images, cfg, batch_size, device, shard=True):
    """Deterministic loader. With shard=True rank r reads images r, r+W, ... (no padding, no
    duplicates); `evaluation.knn.extract_features` puts the pieces back in order."""
    ds = EvalDataset(images, cfg.data.eval_resize, cfg.data.eval_crop)
    if shard and dist.world_size() > 1:
        ds = Subset(ds, range(dist.rank(), len(ds), dist.world_size()))
    kw = loader_kwargs(cfg.data, device)
    kw.pop("persistent_workers", None)  # evaluated rarely; don't keep idle workers around
    return DataLoader(ds, batch_size=batch_size, shuffle=False, drop_last=False, collate_fn=collate, **kw)


class LabeledSubset:
    """The first `per_class` images of each class of `images` (same `load` / `read` interface):
    the labeled set of a few-label run (ubn.labels_per_class, train_supervised.py)."""

    def __init__(self, images, per_class):
        count, self.idx = {}, []
        for i, t in enumerate(images.targets):
            if count.get(t, 0) < per_class:
                self.idx.append(i)
                count[t] = count.get(t, 0) + 1
        self.images, self.targets = images, [images.targets[i] for i in self.idx]
        self.description = f"{len(self.idx)} labeled of {images.description}"

    def __len__(self):
        return len(self.idx)

    def load(self, i):
        return self.images.load(self.idx[i])

    @property
    def read(self):   # the JPEG bytes (data/multiview.py), where `images` are files
        if not hasattr(self.images, "read"):
            raise AttributeError("read")
        return lambda i: self.images.read(self.idx[i])
