#!/usr/bin/env python
"""Is the loader fast enough at ImageNet size? Loader images/s per CPU core, ours against
torchvision's standard SimSiam / MoCo pipeline, side by side in one run.

    python benchmarks/loader_throughput.py                     # 480 images, 1 worker per side, 2 rounds
    python benchmarks/loader_throughput.py --images 1000 --workers 2 --rounds 3

It writes ImageFolder JPEGs (quality 90) into a temporary folder (deleted afterwards): 60 % at
500x375 like most of ImageNet, the rest at other ImageNet-like sizes (375x500, 333x500,
640x480, 800x600, 1024x768, 300x225), with natural-looking content (smoothed noise at several
scales, colour gradients, shapes, a little fine grain). Each row runs three pipelines with the
same DataLoader (same workers, batch, prefetch):

* standard: torchvision.datasets.ImageFolder (PIL decode of the whole image) with, per view,
  RandomResizedCrop(S, scale) + RandomHorizontalFlip + PILToTensor (uint8, no ToTensor /
  Normalize, which would only cost the standard side more), as SimSiam's / MoCo's
  TwoCropsTransform; a low-resolution row crops at that resolution directly (RandomResizedCrop(96)).
* before: this repo's loader before this benchmark's changes (a copy of its code: PIL decode of
  the whole image to a tensor, torchvision's antialiased tensor resized_crop at data.crop_size;
  a low-resolution phase cropped at 224 and resized on the device, which is not counted here).
* ours: data/multiview.py now: boxes drawn from the JPEG header, one decode per image (at the
  smallest JPEG DCT scale that keeps every crop >= its output size, then Pillow's box resize;
  at full scale: the crop path below; libjpeg-turbo through simplejpeg decodes both), each crop copied out dense channels-last
  and resized by torch's uint8 antialiased kernel straight to the step's resolution
  (sampler.set_sizes), into one batch buffer (MultiViewDataset.__getitems__), uint8.
* device (data.decode=device): what the workers still do when the training device decodes:
  read the file, parse the JPEG header, draw the boxes (the decode and crops then cost device
  time, not measured here; data/decode.py).
* repos: the standard pipeline exactly as the SimSiam / MoCo repositories write it, with
  ToTensor + Normalize (float32 out of the workers) instead of PILToTensor.
* kernels: no pipeline at all, only the two kernels every full-scale exact pipeline must run:
  libjpeg-turbo's decode (the loader's: simplejpeg) of the whole image and torch's uint8
  antialiased resize of each view (its fastest use: the crop copied out as a dense
  channels-last block), in a plain loop over bytes already in memory and boxes already drawn
  (this process's CPU time; the views are not kept). kernels / standard is the most any such CPU
  pipeline can gain over the standard one on this machine (draft decoding aside, which
  helps only where every crop is >= 2x its output size).

The last row is the evaluation view (kNN monitor, linear eval): resize the shorter side to 256,
centre crop 224. standard: ImageFolder + Resize(256) + CenterCrop(224) + PILToTensor; before:
Pillow's decode + torch's resize (this repo before); ours: data.multiview.EvalDataset now
(libjpeg-turbo, or a DCT-scaled decode where the shorter side is >= 512).

images/s per core = images/s / workers (wall time), or with --workers 0 images per CPU-second of
the one process doing everything (process CPU time: robust to other load). Rounds alternate the
pipelines, so other load on the machine falls on all of them alike; the table shows each
pipeline's best round and the ratios ours / standard, ours / repos, ours / before.
"""
import argparse
import os
import shutil
import sys
import tempfile
import time

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFilter
from torch.utils.data import DataLoader
from torchvision import datasets, transforms
from torchvision.transforms.v2 import functional as TF

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from common import rng  # noqa: E402
from data.decode import collate  # noqa: E402
from data.folder import ImageFolderImages  # noqa: E402
from data.multiview import N_RAND, EvalDataset, MultiViewDataset, decode_full, random_resized_crop_box  # noqa: E402
from data.sampler import EpochSampler  # noqa: E402

SIZES = [(500, 375)] * 6 + [(375, 500), (333, 500), (640, 480), (800, 600), (1024, 768), (300, 225)]
ROWS = [  # name, global views, global size, local views, local size
    ("2 views x 224", 2, 224, 0, 0),
    ("6 views x 224 (Hard Augment)", 6, 224, 0, 0),
    ("2x224 + 6x96 (multi-crop)", 2, 224, 6, 96),
    ("2 views x 128 (SPL phase)", 2, 128, 0, 0),
    ("2 views x 96 (SPL phase)", 2, 96, 0, 0),
    ("eval: resize 256, centre 224", 0, 224, 0, 256),   # local size field holds the resize
]
SCALE, LOCAL_SCALE = (0.2, 1.0), (0.05, 0.14)


def natural_image(rng, width, height):
    """Smoothed noise at several scales + gradients + shapes + grain, uint8 RGB."""
    img = np.zeros((height, width, 3), np.float32)
    for cells, amp in ((4, 90.0), (16, 45.0), (64, 20.0)):
        noise = rng.random((max(2, height * cells // width), cells, 3)).astype(np.float32) * 255
        up = Image.fromarray(noise.astype(np.uint8)).resize((width, height), Image.Resampling.BICUBIC)
        img += (np.asarray(up, np.float32) - 128) * amp / 128
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    base = rng.random(3) * 160 + 40
    grad = rng.normal(0, 60, (2, 3))
    img += base + xx[..., None] / width * grad[0] + yy[..., None] / height * grad[1]
    pil = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(pil)
    for _ in range(rng.integers(3, 9)):
        x0, y0 = rng.integers(0, width), rng.integers(0, height)
        x1, y1 = x0 + rng.integers(20, width // 2), y0 + rng.integers(20, height // 2)
        fill = tuple(int(c) for c in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x0, y0, x1, y1), fill=fill)
    pil = pil.filter(ImageFilter.GaussianBlur(1.2))
    grain = rng.normal(0, 6, (height, width, 3))
    return Image.fromarray(np.clip(np.asarray(pil, np.float32) + grain, 0, 255).astype(np.uint8))


def write_dataset(root, n, classes=10, seed=0):
    rng = np.random.default_rng(seed)
    for i in range(n):
        c = os.path.join(root, f"class{i % classes:02d}")
        os.makedirs(c, exist_ok=True)
        w, h = SIZES[i % len(SIZES)]
        natural_image(rng, w, h).save(os.path.join(c, f"{i:05d}.jpg"), quality=90)


class Views:
    def __init__(self, transforms_):
        self.transforms = transforms_

    def __call__(self, img):
        return [t(img) for t in self.transforms]


def standard_dataset(root, n, size, local_n, local_size, repos=False):
    to_tensor = [transforms.ToTensor(), transforms.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])] \
        if repos else [transforms.PILToTensor()]
    if n == 0:   # the evaluation view
        return datasets.ImageFolder(root, transform=transforms.Compose(
            [transforms.Resize(local_size), transforms.CenterCrop(size)] + to_tensor))
    view = lambda s, scale: transforms.Compose([  # noqa: E731
        transforms.RandomResizedCrop(s, scale=scale), transforms.RandomHorizontalFlip()] + to_tensor)
    ts = [view(size, SCALE)] * n + [view(local_size, LOCAL_SCALE)] * local_n
    return datasets.ImageFolder(root, transform=Views(ts))


class Decoded:
    """An image source without `read`: EvalDataset then decodes with Pillow (this repo before)."""
    def __init__(self, images):
        self.images = images

    def __len__(self):
        return len(self.images)

    def load(self, i):
        return self.images.load(i)


def kernels_per_s(images, n, size, local_n, local_size):
    """Images per CPU-second of only the whole-image decode (the loader's decoder, libjpeg-turbo
    through simplejpeg: data.multiview.decode_full) + one uint8 antialiased resize per view, over
    file bytes read and boxes drawn beforehand."""
    ds = MultiViewDataset(images, max(n, 1), 224, SCALE, local_views=local_n, local_crop_size=local_size or 96,
                          local_crop_scale=LOCAL_SCALE)
    work = []
    for i in range(len(images)):
        encoded, (h, w), _ = images.read(i)
        g = rng.generator(0, rng.Stream.DATA, 0, i)
        if n == 0:   # eval: the resize of the shorter side to local_size, then the centre crop
            ih, iw = (local_size, round(w * local_size / h)) if h <= w else (round(h * local_size / w), local_size)
            work.append((encoded, [((0, 0, h, w), (ih, iw))]))
            continue
        boxes = [(b, (size, size)) for b in ds.draw(h, w, n, SCALE, g)[0]]
        if local_n:
            boxes += [(b, (local_size, local_size)) for b in ds.draw(h, w, local_n, LOCAL_SCALE, g)[0]]
        work.append((encoded, boxes))
    t = time.process_time()
    for encoded, boxes in work:
        img = decode_full(encoded)   # HWC memory: crops copied out dense (the fast path)
        for (top, left, h, w), out in boxes:
            F.interpolate(img[None, :, top:top + h, left:left + w].contiguous(memory_format=torch.channels_last),
                          size=out, mode="bilinear", antialias=True, align_corners=False)
    return len(work) / (time.process_time() - t)


class Before(torch.utils.data.Dataset):
    """The loader as it was before (commit 2d5714a's data/multiview.py, global views): decode the
    whole image to a tensor, torchvision's resized_crop per view at data.crop_size, flip."""
    def __init__(self, images, n, crop, local_n, local_size):
        self.images, self.n, self.crop, self.local_n, self.local_size = images, n, crop, local_n, local_size

    def __len__(self):
        return len(self.images)

    def crops(self, img, n, size, scale, g):
        views, rand = [], []
        for _ in range(n):
            top, left, h, w = random_resized_crop_box(img.shape[1], img.shape[2], scale, (3 / 4, 4 / 3), g)
            v = TF.resized_crop(img, top, left, h, w, [size, size], antialias=True)
            if torch.rand(1, generator=g).item() < 0.5:
                v = v.flip(-1)
            views.append(v)
            rand.append(torch.rand(N_RAND, generator=g))
        return torch.stack(views), torch.stack(rand)

    def __getitem__(self, key):
        index, epoch = key[:2]
        img, label = self.images.load(index)
        g = rng.generator(0, rng.Stream.DATA, epoch, index)
        out = {"index": index, "label": label}
        out["views"], out["rand"] = self.crops(img, self.n, self.crop, SCALE, g)
        if self.local_n:
            out["local_views"], out["local_rand"] = self.crops(img, self.local_n, self.local_size, LOCAL_SCALE, g)
        return out


class Keys(torch.utils.data.Sampler):
    def __init__(self, keys):
        self.keys = keys

    def __iter__(self):
        return iter(self.keys)

    def __len__(self):
        return len(self.keys)


def ours_loader(images, n, size, local_n, local_size, batch, workers, before=False, decode="worker"):
    crop = 224  # data.crop_size: the largest training resolution
    if n == 0:   # the evaluation view
        ds = EvalDataset(Decoded(images) if before else images, local_size, size)
        return DataLoader(ds, batch_size=batch, shuffle=True, drop_last=True, num_workers=workers,
                          prefetch_factor=2 if workers else None, collate_fn=collate)
    ds = Before(images, n, crop, local_n, local_size) if before else \
        MultiViewDataset(images, n, crop, SCALE, local_views=local_n, local_crop_size=local_size or 96,
                         local_crop_scale=LOCAL_SCALE, decode=decode)
    sampler = EpochSampler(len(ds), batch, seed=1)
    if not before:
        sampler.set_sizes([size])
    return DataLoader(ds, batch_size=batch, sampler=sampler, drop_last=True, num_workers=workers,
                      prefetch_factor=2 if workers else None, collate_fn=collate)


def standard_loader(root, n, size, local_n, local_size, batch, workers, repos=False):
    ds = standard_dataset(root, n, size, local_n, local_size, repos)
    return DataLoader(ds, batch_size=batch, shuffle=True, drop_last=True, num_workers=workers,
                      prefetch_factor=2 if workers else None)


def images_per_s(loader, batch):
    """Images/s after the first batch (worker start-up excluded). With workers, wall time; with
    --workers 0 (all in this process, one thread), this process's CPU time, which other load on
    the machine does not inflate."""
    clock = time.process_time if loader.num_workers == 0 else time.perf_counter
    it = iter(loader)
    next(it)
    t, n = clock(), 0
    for _ in it:
        n += batch
    return n / (clock() - t)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=480)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--rows", default="", help="comma-separated row numbers (1-based); default all")
    args = p.parse_args()
    torch.set_num_threads(1)
    rows = [ROWS[int(r) - 1] for r in args.rows.split(",")] if args.rows else ROWS
    tmp = tempfile.mkdtemp(prefix="loader_bench_")
    try:
        t = time.perf_counter()
        write_dataset(os.path.join(tmp, "train"), args.images)
        print(f"{args.images} JPEGs (q90; {sorted(set(SIZES))}) written in {time.perf_counter() - t:.0f} s; "
              f"{args.workers} worker(s) per side, batch {args.batch}, {args.rounds} rounds, "
              f"{os.cpu_count()} CPU cores visible", flush=True)
        images = ImageFolderImages(os.path.join(tmp, "train"))
        w = max(args.workers, 1)
        print(f"{'row':30s} {'standard':>8s} {'repos':>7s} {'before':>7s} {'ours':>7s} {'ours/std':>8s}"
              f" {'ours/repos':>10s} {'ours/before':>11s} {'device':>7s} {'device/std':>10s} {'kernels':>7s}"
              f" {'kernels/std':>11s}   (images/s per core)")
        for name, n, size, local_n, local_size in rows:
            best = {"standard": 0.0, "repos": 0.0, "before": 0.0, "ours": 0.0, "device": 0.0, "kernels": 0.0}
            for _ in range(args.rounds):
                for side in best:
                    if side == "device" and n == 0:
                        continue
                    if side == "kernels":
                        best[side] = max(best[side], kernels_per_s(images, n, size, local_n, local_size))
                        continue
                    if side in ("standard", "repos"):
                        loader = standard_loader(os.path.join(tmp, "train"), n, size, local_n, local_size,
                                                 args.batch, args.workers, repos=side == "repos")
                    else:
                        loader = ours_loader(images, n, size, local_n, local_size, args.batch, args.workers,
                                             before=side == "before", decode="device" if side == "device" else "worker")
                    best[side] = max(best[side], images_per_s(loader, args.batch) / w)
            s, r, b, o, d, k = (best[c] for c in ("standard", "repos", "before", "ours", "device", "kernels"))
            dev = f"{d:7.1f} {d / s:9.1f}x" if d else f"{'-':>7s} {'-':>10s}"
            print(f"{name:30s} {s:8.1f} {r:7.1f} {b:7.1f} {o:7.1f} {o / s:7.2f}x {o / r:9.2f}x {o / b:10.2f}x {dev}"
                  f" {k:7.1f} {k / s:10.2f}x", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
