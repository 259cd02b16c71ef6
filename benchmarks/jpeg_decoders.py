#!/usr/bin/env python
"""Which JPEG decoder should the loader use? The two decodes data/multiview.py makes, timed side by
side on ImageNet-size JPEGs, with each candidate's pixels compared to the current one.

    python benchmarks/jpeg_decoders.py                  # 240 images, 3 rounds
    python benchmarks/jpeg_decoders.py --images 480 --rounds 5

torchvision 0.29 deprecates torchvision.io.decode_jpeg in favour of TorchCodec. Rows:
* full scale (crops at 224 px from a 500x375 image): torchvision.io.decode_jpeg (current),
  torchcodec.decoders.decode_jpeg, simplejpeg.decode_jpeg (HWC numpy viewed as CHW), Pillow
  (Image.open + np.asarray, what torchvision's standard ImageFolder pipeline pays).
* DCT-scaled 1/2 and 1/4 (crops that are >= 2x / 4x their output size, e.g. SPL's 96-128 px
  phases): Pillow's draft mode (current) against simplejpeg's scaled decode (min_factor).
  TorchCodec has no scaled decode.
Images as in benchmarks/loader_throughput.py (quality 90, 60 % at 500x375, the rest other
ImageNet-like sizes), bytes in memory; one thread; process CPU time per image (robust to other
load), each decoder's best round; "max |diff|" against the current decoder's pixels.
"""
import argparse
import io
import os
import sys
import time

import numpy as np
import torch
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from loader_throughput import SIZES, natural_image  # noqa: E402


def make_jpegs(n, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        buf = io.BytesIO()
        natural_image(rng, *SIZES[i % len(SIZES)]).save(buf, format="JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def decoders():
    from torchvision.io import ImageReadMode, decode_jpeg as tv_decode
    full = {"torchvision.io (current)": lambda b, t: tv_decode(t, mode=ImageReadMode.RGB),
            "Pillow": lambda b, t: torch.from_numpy(np.array(Image.open(io.BytesIO(b)).convert("RGB"))).permute(2, 0, 1)}
    try:
        from torchcodec.decoders import decode_jpeg as tc_decode
        full["torchcodec"] = lambda b, t: tc_decode(t, mode="RGB")
    except ImportError:
        print("torchcodec not installed: its row is skipped")
    try:
        import simplejpeg
        full["simplejpeg"] = lambda b, t: torch.from_numpy(simplejpeg.decode_jpeg(b, "RGB")).permute(2, 0, 1)
    except ImportError:
        simplejpeg = None
        print("simplejpeg not installed: its rows are skipped")

    def pil_draft(s):
        def f(b, t):
            img = Image.open(io.BytesIO(b))
            img.draft("RGB", (img.size[0] // s, img.size[1] // s))
            return torch.from_numpy(np.array(img.convert("RGB"))).permute(2, 0, 1)
        return f

    def sj_scaled(s):
        def f(b, t):   # the 1/s scale libjpeg gives Pillow's draft: at least ceil(side / s), a factor >= s
            h, w = simplejpeg.decode_jpeg_header(b)[:2]
            return torch.from_numpy(simplejpeg.decode_jpeg(b, "RGB", min_height=-(-h // s), min_width=-(-w // s),
                                                           min_factor=s)).permute(2, 0, 1)
        return f
    scaled = {}
    for s in (2, 4):
        scaled[s] = {f"Pillow draft 1/{s} (current)": pil_draft(s)}
        if simplejpeg is not None:
            scaled[s][f"simplejpeg 1/{s}"] = sj_scaled(s)
    return full, scaled


def time_decoder(fn, data, rounds):
    best = float("inf")
    for _ in range(rounds):
        t0 = time.process_time()
        for b, t in data:
            fn(b, t)
        best = min(best, time.process_time() - t0)
    return best / len(data) * 1e3


def main(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=240)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    raw = make_jpegs(args.images)
    data = [(b, torch.frombuffer(bytearray(b), dtype=torch.uint8)) for b in raw]
    full, scaled = decoders()
    print(f"{args.images} JPEGs, 1 thread, ms of CPU per image (best of {args.rounds} rounds)\n")
    print("| decode | decoder | ms / image | current / this | max abs diff vs current |")
    print("|---|---|---|---|---|")
    for title, group in [("full scale", full)] + [(f"DCT 1/{s}", g) for s, g in scaled.items()]:
        names = list(group)
        ref = [group[names[0]](b, t) for b, t in data[:40]]
        times = {n: time_decoder(group[n], data, args.rounds) for n in names}
        for n in names:
            diff = max((group[n](b, t).int() - r.int()).abs().max().item() if group[n](b, t).shape == r.shape
                       else float("nan") for (b, t), r in zip(data[:40], ref))
            print(f"| {title} | {n} | {times[n]:.2f} | {times[names[0]] / times[n]:.2f} | {diff} |")


if __name__ == "__main__":
    main(sys.argv[1:])
