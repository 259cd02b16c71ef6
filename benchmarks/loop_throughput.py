#!/usr/bin/env python
"""Does train_ssl.py hide data loading? Images/s of the full loop (loader workers, device-side
augmentation, logging, FLOP ledger) against a bare SimSiam step on random tensors of the same
shape, measured side by side in one run, with the same number of threads.

    python benchmarks/loop_throughput.py                      # CIFAR-10 folder if present, else synthetic
    python benchmarks/loop_throughput.py --data synthetic --width 16 --steps 40

A ratio near 1 means the loop runs at the speed of the model step.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import selfsup  # noqa: E402
from models import build_backbone  # noqa: E402
from train_ssl import parse_config  # noqa: E402

CIFAR10 = os.path.join(REPO, "..", "shared", "datasets", "cifar10")


def overrides(args):
    o = [f"model.width={args.width}", f"train.batch_size={args.batch}", f"train.threads={args.threads}",
         "method.simsiam.proj_dim=2048", "method.simsiam.pred_hidden=512", "method.simsiam.proj_layers=2",
         f"data.workers={args.workers}", "optim.lr=0.03"]
    if args.data == "cifar10":
        o += ["--config", "yaml/cifar10_simsiam.yaml", f"data.root={CIFAR10}", "data.val_subset_per_class=10"]
    else:
        o += ["data.synthetic_val_size=100"]
    return o


def bare_step(args):
    """SimSiam forward + backward + SGD step on random tensors, no data pipeline."""
    torch.set_num_threads(args.threads)
    cfg_args = [a for a in overrides(args) if not a.startswith(("--config", "yaml/", "data."))]
    cfg = parse_config(cfg_args)
    torch.manual_seed(0)
    model = selfsup.build_method(cfg.method, build_backbone(cfg.model))
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    views = [torch.randn(args.batch, 3, 32, 32) for _ in range(2)]

    def step():
        loss = model(views)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    for _ in range(2):
        step()
    t = time.perf_counter()
    for _ in range(args.steps):
        step()
    return args.batch * args.steps / (time.perf_counter() - t)


def full_loop(args):
    """train_ssl.py itself; images/s from metrics.jsonl, skipping the first logging window
    (worker start-up and the step the FLOP ledger measures)."""
    log_every = max(1, args.steps // 5)
    n_images = (args.steps + log_every) * args.batch
    with tempfile.TemporaryDirectory() as out:
        o = overrides(args)
        if args.data == "cifar10":
            o.append(f"data.subset_per_class={n_images // 10 + 1}")
        else:
            o.append(f"data.synthetic_train_size={n_images}")
        cmd = [sys.executable, "train_ssl.py"] + o + [f"output_dir={out}", "train.epochs=1",
                                                      f"train.log_every={log_every}", "train.ckpt_every_steps=0"]
        subprocess.run(cmd, cwd=REPO, check=True, capture_output=True)
        with open(os.path.join(out, "metrics.jsonl")) as f:
            rows = [json.loads(line) for line in f]
    ips = [r["images_per_s"] for r in rows if "images_per_s" in r][1:]
    return sum(ips) / len(ips)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", choices=["cifar10", "synthetic"],
                   default="cifar10" if os.path.isdir(os.path.join(CIFAR10, "train")) else "synthetic")
    p.add_argument("--width", type=int, default=64, help="ResNet-18 base width (64 = standard)")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--workers", type=int, default=2)
    args = p.parse_args()
    bare = bare_step(args)
    loop = full_loop(args)
    print(f"SimSiam, CIFAR-stem ResNet-18 width {args.width}, batch {args.batch}, 2 views x 32 px, "
          f"{args.threads} threads, {args.workers} loader workers, data: {args.data}, device: cpu")
    print(f"{'setting':<42}{'images/s':>10}{'ratio':>8}")
    print(f"{'bare step on random tensors':<42}{bare:>10.1f}{1.0:>8.2f}")
    print(f"{'train_ssl.py loop (loader + augmentation)':<42}{loop:>10.1f}{loop / bare:>8.2f}")


if __name__ == "__main__":
    main()
