"""Image folders in ImageFolder layout (ImageNet, Imagenette, CIFAR-10 as JPEGs) and CIFAR-10.

    root/train/<class>/*.jpg
    root/val/<class>/*.jpg      (or root/test/...)

Bad input fails early with one line naming the folder or file.
"""
import io
import os

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from common.config import InputError

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


class DataError(InputError):
    """A missing folder, empty class or unreadable image. The message names it."""


def _rgb_tensor(img):
    """uint8 [3, H, W] (what torchvision's pil_to_tensor gives, without importing torchvision)."""
    return torch.from_numpy(np.array(img.convert("RGB"))).permute(2, 0, 1).contiguous()


class ImageFolderImages:
    """`load(i)` -> (uint8 tensor [3, H, W], label). Classes are the sorted sub-folders."""

    def __init__(self, folder, subset_per_class=0, classes=None):
        if not os.path.isdir(folder):
            raise DataError(f"dataset folder not found: {folder}")
        found = sorted(e.name for e in os.scandir(folder) if e.is_dir())
        if not found:
            raise DataError(f"dataset folder {folder} has no class sub-folders (expected {folder}/<class>/*.jpg)")
        if classes is not None and found != classes:
            missing = sorted(set(classes) ^ set(found))
            raise DataError(f"dataset folder {folder} has other classes than the training split: {missing[:5]}")
        self.classes = found
        self.samples = []
        for label, c in enumerate(found):
            files = sorted(f for f in os.listdir(os.path.join(folder, c)) if f.lower().endswith(IMG_EXTENSIONS))
            if not files:
                raise DataError(f"class folder {os.path.join(folder, c)} holds no images ({', '.join(IMG_EXTENSIONS)})")
            if subset_per_class > 0:
                files = files[:subset_per_class]
            self.samples += [(os.path.join(folder, c, f), label) for f in files]
        self.targets = [t for _, t in self.samples]
        self.num_classes = len(found)
        self.description = f"{folder} ({len(self.samples)} images, {self.num_classes} classes)"

    def __len__(self):
        return len(self.samples)

    def load(self, i):
        path, label = self.samples[i]
        try:
            with Image.open(path) as img:
                return _rgb_tensor(img), label
        except Exception as e:  # PIL raises several types; all mean the same to the user
            raise DataError(f"cannot read image {path}: {e}") from None

    def read(self, i):
        """(encoded, (height, width), label), only the header parsed: encoded is the file's bytes
        as a 1-D uint8 tensor for an RGB or grayscale JPEG (decoded later, at a draft scale or
        on the training device: data/multiview.py, data/decode.py), else (PNG, CMYK JPEG, ...)
        the decoded uint8 [3, H, W] image."""
        path, label = self.samples[i]
        try:
            with open(path, "rb") as f:
                raw = f.read()
            with Image.open(io.BytesIO(raw)) as img:
                width, height = img.size
                if img.format == "JPEG" and img.mode in ("RGB", "L"):
                    return torch.from_numpy(np.frombuffer(raw, np.uint8).copy()), (height, width), label
                return _rgb_tensor(img), (height, width), label
        except UnidentifiedImageError:   # PIL's message names the in-memory buffer, not the file
            raise DataError(f"cannot read image {path}: not an image file ({len(raw)} bytes)") from None
        except Exception as e:
            raise DataError(f"cannot read image {path}: {e}") from None


class CIFAR10Images:
    """torchvision's CIFAR-10 (python pickle version); downloads only when asked to."""

    def __init__(self, root, train, download=False, subset_per_class=0):
        from torchvision.datasets import CIFAR10
        try:
            self.ds = CIFAR10(root, train=train, download=download)
        except RuntimeError as e:
            raise DataError(f"CIFAR-10 not found under {root} ({e}); set data.download=true "
                            f"or use data.name=imagefolder on a folder of images") from None
        idx = range(len(self.ds))
        if subset_per_class > 0:
            count, keep = {}, []
            for i, t in enumerate(self.ds.targets):
                if count.get(t, 0) < subset_per_class:
                    keep.append(i)
                    count[t] = count.get(t, 0) + 1
            idx = keep
        self.idx = list(idx)
        self.targets = [self.ds.targets[i] for i in self.idx]
        self.num_classes = 10
        self.description = f"CIFAR-10 {'train' if train else 'test'} ({len(self.idx)} images)"

    def __len__(self):
        return len(self.idx)

    def load(self, i):
        img, label = self.ds[self.idx[i]]
        return _rgb_tensor(img), label


def find_val_split(root, val_split=None):
    if val_split:
        return val_split
    for name in ("val", "test"):
        if os.path.isdir(os.path.join(root, name)):
            return name
    raise DataError(f"no val/ or test/ folder under {root}; set data.val_split")

