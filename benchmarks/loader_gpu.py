#!/usr/bin/env python
"""Does the loader keep a GPU fed? On a GPU node: images/s of a ResNet-50 SimSiam step (bf16,
channels-last) fed by random tensors already on the device (the bare step), by the worker
loader (data.decode=worker) and by device decoding (data.decode=device: nvJPEG + crops on the
GPU), at 224 px and at Super Progressive Learning's 96 px; and images/s of the decode alone
(device_batch on the GPU, against the workers' images/s of wall time). Side by side in one run.

    python benchmarks/loader_gpu.py                                  # GPU node: 1024 JPEGs, batch 128, 6 workers
    python benchmarks/loader_gpu.py --device cpu --images 64 --arch resnet18 --width 8 \\
        --batch 8 --steps 3 --feed-batches 4 --workers 1 --sizes 64,32   # smoke run of the same code on a CPU

The JPEGs are benchmarks/loader_throughput.py's ImageNet-like ones (60 % 500x375, quality 90),
written to a temporary folder. Columns: images/s of each feed and its ratio to the bare step
(1.0: the loader costs the step nothing). A feed runs `--steps` timed steps after 2 warm-up
steps, its workers started before the clock; the decode-only pass then draws --feed-batches more
(the loaders cycle through the folder's epochs).
"""
import argparse
import os
import shutil
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from common import precision, run  # noqa: E402
from data import build_images, build_train_loader, device_batch  # noqa: E402
from data.augment import DeviceAugment  # noqa: E402
from loader_throughput import write_dataset  # noqa: E402
from selfsup.build import build_model  # noqa: E402
from train_ssl import parse_config  # noqa: E402


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def config(args, root, size, decode):
    return parse_config([
        "data.name=imagefolder", f"data.root={root}", f"data.decode={decode}", f"data.crop_size={size}",
        f"data.workers={args.workers}", "data.prefetch_factor=2", f"data.eval_resize={size}", f"data.eval_crop={size}",
        f"model.arch={args.arch}", "model.cifar_stem=false", f"model.width={args.width}",
        f"train.batch_size={args.batch}", f"train.amp={'bf16' if args.device != 'cpu' else 'none'}",
        "train.channels_last=true", "method.name=simsiam"])


def timed(step, feed, steps, device):
    """images/s of `steps` steps after 2 warm-up steps; feed() gives the next (views, rand) batch."""
    for _ in range(2):
        step(*feed())
    sync(device)
    t = time.perf_counter()
    n = 0
    for _ in range(steps):
        views, _ = step(*feed())
        n += views
    sync(device)
    return n / (time.perf_counter() - t)


def run_size(args, root, size, device):
    cfg = config(args, root, size, "worker")
    torch.manual_seed(0)
    model = build_model(cfg)[0].to(device).to(memory_format=torch.channels_last)
    model.prepare(10 ** 6, 10 ** 4)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    augment = DeviceAugment(cfg.augment)
    amp = precision.AMP_DTYPES[cfg.train.amp]

    def step(views_u8, rand):
        views = augment(views_u8, rand, 5.0, size, True)
        with precision.autocast(device, amp):
            loss = model(views)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return views_u8.shape[0], loss

    out = {}
    fixed = (torch.randint(0, 256, (args.batch, 2, 3, size, size), dtype=torch.uint8, device=device),
             torch.rand(args.batch, 2, 8, device=device))
    out["bare"] = timed(step, lambda: fixed, args.steps, device)
    images = build_images(cfg.data)[0]
    for decode in ("worker", "device"):
        c = config(args, root, size, decode)
        loader, sampler = build_train_loader(images, c, args.batch, device)
        it = run.stream(loader, sampler, 0)   # epochs after epochs: a small folder serves any length
        next(it)   # workers started

        def feed():
            b = device_batch(next(it), device)
            return b["views"], b["rand"]
        out[decode] = timed(step, feed, args.steps, device)
        # the decode alone: device_batch (device) or the workers' delivery (worker), no step; the
        # first workers x 2 batches were prefetched during the steps, the rest is the steady rate
        t, n = time.perf_counter(), 0
        for _ in range(args.feed_batches):
            b = device_batch(next(it), device)
            n += b["views"].shape[0]
        sync(device)
        out[decode + " feed only"] = n / (time.perf_counter() - t)
        del it, loader
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda")
    p.add_argument("--images", type=int, default=1024)
    p.add_argument("--arch", default="resnet50")
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--workers", type=int, default=6)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--feed-batches", type=int, default=60, help="batches of the decode-only pass")
    p.add_argument("--sizes", default="224,96")
    args = p.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    if args.images < args.batch:
        sys.exit(f"error: --images {args.images} is smaller than one --batch {args.batch}")
    tmp = tempfile.mkdtemp(prefix="loader_gpu_")
    try:
        for split in ("train", "val"):
            write_dataset(os.path.join(tmp, split), args.images if split == "train" else 20)
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
        print(f"{args.arch} (width {args.width}) SimSiam, batch {args.batch}, {args.workers} workers, {name}, "
              f"{os.cpu_count()} CPU cores; images/s (ratio to the bare step)")
        for size in (int(s) for s in args.sizes.split(",")):
            r = run_size(args, tmp, size, device)
            cols = "  ".join(f"{k} {v:8.1f} ({v / r['bare']:.2f})" for k, v in r.items())
            print(f"{size:4d} px  {cols}", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
