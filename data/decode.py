"""data.decode=device: the training device decodes the JPEGs and crops the views.

Loader workers then only read each file and draw its views' crop boxes, flips and photometric
uniforms from the size in the JPEG header (data/multiview.py, same draws as the worker path);
`device_batch` decodes the batch with TorchCodec's decode_jpeg on the device (nvJPEG on CUDA,
libjpeg-turbo on the CPU) and crops and resizes each view there with an antialiased bilinear
resize. The same code runs on the CPU (device = cpu), where it matches the worker path's views
to within 0.5 grey levels on average (tests/test_loader.py states the bound: the resamplers
differ in rounding, not in geometry).

`device_batch` is also the one place a worker-decoded batch moves to the device (pinned memory,
non_blocking copies on CUDA), so a training loop reads the same dict either way.
"""
import torch
import torch.nn.functional as F
from torch.utils.data import default_collate

from common import host_sync
from common.config import ConfigError


def collate(items):
    """default_collate of the loader's dicts, except: `encoded` (variable-length JPEG bytes,
    data.decode=device) stays a list of tensors, and images stored channels-last (views
    [V, 3, S, S] and eval images [3, S, S] with channel stride 1: data/multiview.py) are stacked
    in that layout and handed on as a permuted [B, ..., 3, S, S] view, not reordered to CHW byte
    by byte. pin_memory and .to(device) keep the strides; data/augment.py takes any layout. A
    dict is a batch MultiViewDataset.__getitems__ already assembled: passed through."""
    if isinstance(items, dict):
        return items
    encoded = [it.pop("encoded") for it in items] if "encoded" in items[0] else None
    hwc = [k for k, v in items[0].items() if isinstance(v, torch.Tensor) and v.dim() >= 3 and v.stride(-3) == 1]
    for it in items:
        for k in hwc:
            it[k] = it[k].movedim(-3, -1)
    out = default_collate(items)
    for k in hwc:
        out[k] = out[k].movedim(-1, -3)
    if encoded is not None:
        out["encoded"] = encoded
    return out


def crop_views(img, boxes, flips, size):
    """uint8 [V, 3, size, size] from a decoded uint8 [3, H, W] image (on any device); boxes
    [V, 4] (top, left, h, w) and flips [V] on the CPU."""
    x = img.float()
    views = []
    with host_sync.allowed():   # boxes and flips are the loader's host data, never on the device
        boxes, flips = boxes.tolist(), flips.tolist()
    for (top, left, h, w), flip in zip(boxes, flips):
        v = F.interpolate(x[None, :, top:top + h, left:left + w], size=(size, size), mode="bilinear",
                          antialias=True, align_corners=False)
        views.append(v.flip(-1) if flip else v)
    return torch.cat(views).round_().clamp_(0, 255).to(torch.uint8)


def torchcodec_decoder():
    """TorchCodec's batched JPEG decoder (nvJPEG on CUDA; torchvision.io's decoders, which it
    replaces, are deprecated in torchvision 0.29). Needed by data.decode=device only."""
    try:
        from torchcodec.decoders import decode_jpeg
    except ImportError:
        raise ConfigError("data.decode=device needs TorchCodec: pip install torchcodec") from None
    return decode_jpeg


def decode_images(encoded, device):
    """Decode a list of 1-D uint8 JPEG byte tensors (or already decoded [3, H, W] images, which
    the worker sends for PNG or CMYK files) to [3, H, W] uint8 RGB images on `device`."""
    device = torch.device(device)
    jpeg = [i for i, e in enumerate(encoded) if e.dim() == 1]
    out = [None if e.dim() == 1 else e.to(device, non_blocking=True) for e in encoded]
    if jpeg:
        decode_jpeg = torchcodec_decoder()
        data = [encoded[i] for i in jpeg]
        try:
            decoded = decode_jpeg(data, mode="RGB", device=device if device.type == "cuda" else "cpu")
        except RuntimeError:
            if device.type != "cuda":
                raise
            # a JPEG that nvJPEG rejects (some progressive / unusual sampling files): this batch
            # decodes on the CPU (libjpeg-turbo, the worker path's decoder) and moves over
            decoded = [decode_jpeg(e, mode="RGB").to(device, non_blocking=True) for e in data]
        for i, d in zip(jpeg, decoded):
            out[i] = d
    return out


def device_batch(batch, device):
    """A loader batch on `device` with views uint8 [B, V, 3, S, S] and rand [B, V, N_RAND] (and
    local_views / local_rand for multi-crop), whichever side decoded it."""
    nb = True   # pinned on CUDA: the copy overlaps; on the CPU a no-op. Never a blocking copy in a step
    if "encoded" not in batch:
        return {k: v.to(device, non_blocking=nb) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    images = decode_images(batch["encoded"], device)
    out = {"index": batch["index"], "label": batch["label"]}
    for p in ("", "local_"):
        if p + "boxes" not in batch:
            continue
        with host_sync.allowed():   # host data from the loader
            size = int(batch[p + "size"][0])
        out[p + "views"] = torch.stack([crop_views(img, b, f, size) for img, b, f in
                                        zip(images, batch[p + "boxes"], batch[p + "flips"])])
        out[p + "rand"] = batch[p + "rand"].to(device, non_blocking=nb)
    return out
