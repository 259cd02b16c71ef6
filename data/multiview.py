"""Loader-side half of the augmentation: decode, random resized crop, flip (in worker processes).

Every random choice for a view is a pure function of (seed, epoch, image index, view): the
crop box and flip are drawn here, and a vector of uniform numbers `rand` is drawn for the
photometric operations that `data/augment.py` later applies batched on the device. So a run
gives the same views whatever the number of ranks, loader workers or restarts, which is what
makes a resumed run equal an uninterrupted one and a 2-rank run equal a 1-rank run.

The crops come out at `crop_size` (the largest training resolution), or at the resolution of
the step they are for when the sampler knows the schedule (`EpochSampler.set_sizes`); the device
resizes them to the current step's resolution if they differ, so a resolution schedule needs no
loader restart. JPEGs are decoded once per image for all its views (libjpeg-turbo through
simplejpeg), at the smallest DCT scale that leaves every crop at least its output size, else at
full scale: the boxes are drawn from the full size in the header first, so their law in the
original image is unchanged.
"""
import math

import numpy as np
import simplejpeg
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset, get_worker_info

from common import rng
from common.config import ConfigError

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


def draft_scale(boxes, sizes):
    """Largest JPEG DCT reduction s in {1, 2, 4, 8} that leaves every crop box (drawn in the
    full image) at least its output size in the reduced image: min(h, w) / s >= size."""
    room = min(min(b[2], b[3]) / size for b, size in zip(boxes, sizes))
    return next(s for s in (8, 4, 2, 1) if room >= s or s == 1)


# JPEGs are decoded by libjpeg-turbo through simplejpeg, at full scale and DCT-scaled alike: the
# pixels of torchvision.io.decode_jpeg (deprecated in torchvision 0.29) and of Pillow's draft
# mode exactly, 1.05x the former and 1.26-1.48x the latter on this CPU (benchmarks/jpeg_decoders.py).
# strict=False: a recoverable error (a truncated scan) gives the decodable part, as libjpeg-turbo
# did through torchvision.


def decode_full(encoded):
    """uint8 [3, H, W] RGB of JPEG bytes (a 1-D uint8 tensor) at full scale, decoded into HWC
    memory and viewed as CHW: channels-last strides, the layout `tensor_views` crops fastest."""
    return torch.from_numpy(simplejpeg.decode_jpeg(encoded.numpy(), "RGB", strict=False)).permute(2, 0, 1)


def decode_scaled(encoded, s):
    """JPEG bytes decoded at DCT scale 1/s (libjpeg's ceil(side / s), the scale Pillow's draft
    mode asks for). Returns (uint8 HWC array, (sx, sy)): full-image pixels per decoded pixel."""
    data = encoded.numpy()
    height, width = simplejpeg.decode_jpeg_header(data)[:2]
    hwc = simplejpeg.decode_jpeg(data, "RGB", min_height=-(-height // s), min_width=-(-width // s),
                                 min_factor=s, strict=False)
    return hwc, (width / hwc.shape[1], height / hwc.shape[0])


def decode_for_resize(encoded, height, width, shorter):
    """uint8 [3, h, w] RGB of JPEG bytes for a resize of the shorter side to `shorter`: decoded
    at the smallest DCT scale 1/s that keeps the shorter side >= `shorter` (so the resize still
    only shrinks), else at full scale."""
    s = draft_scale([(0, 0, height, width)], [shorter])   # the whole image as the one "crop"
    if s == 1:
        return decode_full(encoded)
    return torch.from_numpy(decode_scaled(encoded, s)[0]).permute(2, 0, 1)


def jpeg_views(encoded, parts, outs=None):
    """Views of a JPEG given as its bytes (1-D uint8 tensor), decoded once for all `parts`
    [(boxes, flips, size)] -> [uint8 [V, 3, size, size]] (written into `outs` when given): at
    full scale by `decode_full` and `tensor_views`, at a DCT scale by `decode_scaled` and
    `pil_views`."""
    s = draft_scale([b for boxes, _, size in parts for b in boxes], [size for boxes, _, size in parts for _ in boxes])
    outs = outs or [None] * len(parts)
    if s == 1:
        img = decode_full(encoded)
        return [tensor_views(img, boxes, flips, size, o) for (boxes, flips, size), o in zip(parts, outs)]
    hwc, scale = decode_scaled(encoded, s)
    decoded = Image.fromarray(hwc)
    return [pil_views(decoded, scale, boxes, flips, size, o) for (boxes, flips, size), o in zip(parts, outs)]


def view_buffer(*shape, shared=False):
    """uint8 [..., 3, size, size] views stored channels-last (a permuted [..., size, size, 3]
    buffer); shared=True: in shared memory, as default_collate allocates inside a loader worker,
    so handing the batch to the main process copies nothing."""
    *lead, c, h, w = shape
    n = math.prod(shape)
    # (torch's default_collate allocates its worker batches with the same _new_shared)
    flat = torch.empty(0, dtype=torch.uint8).set_(torch.UntypedStorage._new_shared(n)) if shared \
        else torch.empty(n, dtype=torch.uint8)
    return flat.view(*lead, h, w, c).movedim(-1, -3)


def pil_views(img, scale, boxes, flips, size, out=None):
    """Views uint8 [V, 3, size, size] of a PIL image decoded at a DCT scale by `decode_scaled`: each
    box (top, left, h, w), in full-image pixels, maps to a fractional box of the reduced image,
    resampled from that exact region by PIL's antialiased bilinear resize (the filter of the
    full-scale path; ~1 grey level apart)."""
    sx, sy = scale
    out = view_buffer(len(boxes), 3, size, size) if out is None else out
    hwc = out.movedim(-3, -1).numpy()
    for i, ((top, left, h, w), flip) in enumerate(zip(boxes, flips)):
        v = np.asarray(img.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=None,
                                  box=(left / sx, top / sy, (left + w) / sx, (top + h) / sy)))
        hwc[i] = v[:, ::-1] if flip else v
    return out


def tensor_views(img, boxes, flips, size, out=None):
    """Views uint8 [V, 3, size, size] of a decoded uint8 [3, H, W] tensor: torch's antialiased
    bilinear resize of each box (F.interpolate's kernel, as torchvision's resized_crop), flipped.

    Everything stays channels-last (HWC), the layout libjpeg-turbo decodes into: the crop is
    copied out as a dense channels-last block, which torch's uint8 resize takes without
    reordering and answers in the same layout, and the views are stored as a permuted
    [V, size, size, 3] buffer. A strided crop or CHW output made the kernel reorder bytes one by
    one: 0.30 -> 0.19 ms per 224 px view, the same pixels (benchmarks/NOTES.md). `collate`
    (data/decode.py) keeps the layout; the device-side augmentation takes any."""
    out = view_buffer(len(boxes), 3, size, size) if out is None else out
    for i, ((top, left, h, w), flip) in enumerate(zip(boxes, flips)):
        crop = img[None, :, top:top + h, left:left + w].contiguous(memory_format=torch.channels_last)
        v = F.interpolate(crop, size=(size, size), mode="bilinear", antialias=True, align_corners=False)[0]
        out[i] = v.flip(-1) if flip else v
    return out


class MultiViewDataset(Dataset):
    """Indexed by (image index, epoch) or (image index, epoch, size) keys from
    `data.sampler.EpochSampler`; size (the resolution of the step the item is for, when the
    sampler knows the schedule) makes the global views come out at min(size, crop_size) instead
    of crop_size, so a low-resolution phase never resamples 224 px crops.

    decode="worker": returns dict(views uint8 [V, 3, S, S], rand float [V, N_RAND], index, label),
    plus local_views uint8 [L, 3, s, s] and local_rand [L, N_RAND] when local_views > 0
    (multi-crop: drawn after the global views, so adding local views leaves the global ones
    unchanged). decode="device": the worker reads the file only; the item holds `encoded` (the
    JPEG bytes), `boxes` [V, 4] (top, left, h, w), `flips` [V], `rand`, `size` (and local_*),
    for `data.decode.device_batch` to decode and crop on the training device.

    The crop boxes, flips and rand are drawn from the image's full size before any decoding,
    in the same order whatever the decode path, so the views' distribution does not depend on
    it. Image sources with `read` (ImageFolderImages) give the file's bytes and header size:
    JPEGs decode once per image (`jpeg_views`, draft scaling); others (synthetic, CIFAR-10)
    give decoded tensors (`load`)."""

    def __init__(self, images, num_views, crop_size, crop_scale=(0.2, 1.0), flip_prob=0.5, seed=0,
                 ratio=(3 / 4, 4 / 3), local_views=0, local_crop_size=96, local_crop_scale=(0.05, 0.14),
                 decode="worker"):
        if decode not in ("worker", "device"):
            raise ConfigError(f"data.decode must be worker or device, got {decode!r}")
        if decode == "device" and not hasattr(images, "read"):
            raise ConfigError(f"data.decode=device needs image files (data.name=imagefolder), "
                              f"not {type(images).__name__}")
        self.images, self.num_views, self.crop_size = images, num_views, crop_size
        self.crop_scale, self.ratio, self.flip_prob, self.seed = tuple(crop_scale), ratio, flip_prob, seed
        self.local_views, self.local_crop_size, self.local_crop_scale = local_views, local_crop_size, tuple(local_crop_scale)
        self.decode = decode

    def __len__(self):
        return len(self.images)

    def draw(self, height, width, n, scale, g):
        """n views' (boxes [(top, left, h, w)], flips [bool], rand [n, N_RAND]) for an image of
        that size: per view the box, then the flip, then the photometric uniforms."""
        boxes, flips, rand = [], [], []
        for _ in range(n):
            boxes.append(random_resized_crop_box(height, width, scale, self.ratio, g))
            flips.append(torch.rand(1, generator=g).item() < self.flip_prob)
            rand.append(torch.rand(N_RAND, generator=g))
        return boxes, flips, torch.stack(rand)

    def size(self, key):
        """The global views' side for this key: the step's resolution, at most crop_size."""
        return min(int(key[2]), self.crop_size) if len(key) > 2 and key[2] else self.crop_size

    def parts(self, size):
        """[(prefix, views, side, crop scale)]: the global views, then multi-crop's local ones."""
        parts = [("", self.num_views, size, self.crop_scale)]
        if self.local_views:
            parts.append(("local_", self.local_views, self.local_crop_size, self.local_crop_scale))
        return parts

    def __getitems__(self, keys):
        """A whole batch (the DataLoader calls this, when it exists, instead of one __getitem__
        per key), already collated: every view is resampled straight into one batch buffer
        [B, V, 3, S, S] (in shared memory inside a worker), so there are no per-image buffers
        and `collate` copies nothing. The keys of a batch are one step's, so one size."""
        if self.decode == "device":
            return [self[k] for k in keys]
        sizes = {self.size(k) for k in keys}
        if len(sizes) != 1:
            raise ValueError(f"one batch asks for several view sizes {sorted(sizes)}")
        shared = get_worker_info() is not None
        buffers = {p: view_buffer(len(keys), n, 3, sz, sz, shared=shared) for p, n, sz, _ in self.parts(sizes.pop())}
        items = [self.item(k, {p: buf[b] for p, buf in buffers.items()}) for b, k in enumerate(keys)]
        batch = {k: torch.tensor([it[k] for it in items]) for k in ("index", "label")}
        for p, buf in buffers.items():
            batch[p + "views"], batch[p + "rand"] = buf, torch.stack([it[p + "rand"] for it in items])
        return batch

    def __getitem__(self, key):
        return self.item(key)

    def item(self, key, outs=None):
        """One image's dict (see the class docstring); outs {prefix: uint8 [V, 3, S, S]}: write
        the views there."""
        index, epoch = key[0], key[1]
        size = self.size(key)
        g = rng.generator(self.seed, rng.Stream.DATA, epoch, index)
        if hasattr(self.images, "read"):   # image files: read the bytes, the size from the header
            img, (height, width), label = self.images.read(index)
        else:                              # synthetic, CIFAR-10: decoded tensors
            img, label = self.images.load(index)
            height, width = img.shape[1], img.shape[2]
        drawn = {p: (sz,) + self.draw(height, width, n, scale, g) for p, n, sz, scale in self.parts(size)}
        out = {"index": index, "label": label}
        if self.decode == "device":
            out["encoded"] = img
            for p, (sz, boxes, flips, rand) in drawn.items():
                out[p + "boxes"], out[p + "flips"] = torch.tensor(boxes, dtype=torch.int64), torch.tensor(flips)
                out[p + "rand"], out[p + "size"] = rand, sz
            return out
        outs = [None if outs is None else outs[p] for p in drawn]
        if img.dim() == 1:  # JPEG bytes: one decode for all views, global and local
            views = jpeg_views(img, [(boxes, flips, sz) for sz, boxes, flips, _ in drawn.values()], outs)
        else:
            views = [tensor_views(img, boxes, flips, sz, o) for (sz, boxes, flips, _), o in zip(drawn.values(), outs)]
        for (p, (sz, boxes, flips, rand)), v in zip(drawn.items(), views):
            out[p + "views"], out[p + "rand"] = v, rand
        return out


class EvalDataset(Dataset):
    """Deterministic view for kNN and linear evaluation: resize the shorter side, center crop.
    Image files decode through `decode_for_resize` (ImageNet's 50k validation and 1.28M training
    images, for the kNN monitor: the decode is most of the cost; benchmarks/loader_throughput.py)."""

    def __init__(self, images, resize, crop):
        self.images, self.resize, self.crop = images, resize, crop

    def __len__(self):
        return len(self.images)

    def __getitem__(self, index):
        if hasattr(self.images, "read"):   # image files: JPEGs decoded by libjpeg-turbo, at a DCT scale if large
            img, (height, width), label = self.images.read(index)
            if img.dim() == 1:
                img = decode_for_resize(img, height, width, self.resize)
        else:
            img, label = self.images.load(index)
        if min(img.shape[1:]) != self.resize or min(img.shape[1:]) < self.crop:
            from torchvision.transforms.v2 import functional as TF   # (as above: only when needed)
            img = TF.resize(img, self.resize, antialias=True)
            img = TF.center_crop(img, [self.crop, self.crop])
        else:   # the shorter side is already `resize`: centre crop by slicing (TF.center_crop's offsets)
            top, left = (int(round((n - self.crop) / 2.0)) for n in img.shape[1:])
            img = img[:, top:top + self.crop, left:left + self.crop]
        return {"image": img, "label": label, "index": index}
