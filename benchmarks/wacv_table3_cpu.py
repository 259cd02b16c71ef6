#!/usr/bin/env python
"""WACV'23 Table 3 (the contribution of each component) at CPU scale, then its report.

Runs the six yaml/wacv/table3_*.yaml files as they are, with one set of CPU-scale overrides: the
embedded synthetic dataset (2048 images, 32 px; `--data cifar10 --per-class N` for CIFAR-10
JPEGs through the ImageFolder path instead), the quickstart's width-16 CIFAR-stem ResNet-18 and
SimSiam heads (its faster predictor: at 1000 images and width 8 nothing was learned in 150
steps), batch 64, every length (epochs, F1-CLR warm-up) divided by `--scale`, and the 224 px
resolutions mapped to 32 px as benchmarks/wacv_efficiency.py does (Super Progressive r_min
96 -> 16 in steps of 8, Hard Augment r_sel 64 -> 16). Each run keeps its file's paper: section,
so report.py puts the paper's figures beside ours.

    python benchmarks/wacv_table3_cpu.py     # ~32 min: docs/reproducing.md's table measured 2.5-11.8 min per run
                                             # (2-core CPU, one thread per run, other jobs sharing it)
    python report.py runs/cpu/wacv_table3 --out benchmarks/reports/wacv_table3_cpu
    python benchmarks/wacv_table3_cpu.py --seeds 3 --epochs 5 --control   # seeds, equal lengths, random-pick control (as run)
"""
import argparse
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from common.config import load_config  # noqa: E402
from selfsup.config import ssl_defaults  # noqa: E402

ROWS = ["table3_ca", "table3_f1clr", "table3_ca_ha", "table3_f1clr_sp", "table3_f1clr_ha", "table3_f1clr_sp_ha"]
CIFAR10 = os.path.join(REPO, "..", "shared", "datasets", "cifar10")


def overrides(cfg, args, out, seed=0):
    epochs = args.epochs or max(1, round(cfg.train.epochs / args.scale))
    if args.data == "cifar10":
        data = ["data.name=imagefolder", f"data.root={CIFAR10}", f"data.subset_per_class={args.per_class}",
                f"data.val_subset_per_class={max(1, args.per_class // 5)}"]
    else:
        data = ["data.name=synthetic", "data.synthetic_train_size=2048", "data.synthetic_val_size=1000"]
    return data + ["data.crop_size=32", "data.eval_resize=32", "data.eval_crop=32", "data.workers=1",
            "method.simsiam.proj_dim=512", "method.simsiam.proj_layers=2", "method.simsiam.pred_hidden=128",
            "method.simsiam.pred_lr_mult=10.0", "model.arch=resnet18", "model.cifar_stem=true",
            f"model.width={args.width}", "train.batch_size=64", f"train.epochs={epochs}",
            f"optim.warmup_epochs={cfg.optim.warmup_epochs * epochs / cfg.train.epochs:.4f}",
            "augment.blur_prob=[0.0]", "accel.progressive.r_min=16", "accel.progressive.step=8",
            "accel.hard_augment.r_sel=16", "knn.k=20", "knn.every_epochs=1", "train.ckpt_every_steps=0",
            "train.log_every=5", f"train.threads={args.threads}", f"train.seed={seed}", f"output_dir={out}"]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", choices=["synthetic", "cifar10"], default="synthetic")
    p.add_argument("--per-class", type=int, default=200, help="--data cifar10: images per class")
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--scale", type=float, default=80.0, help="divide every length by this")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=os.path.join(REPO, "runs", "cpu", "wacv_table3"))
    p.add_argument("--seeds", type=int, default=1, help="run every row with N seeds (report.py: mean +- std)")
    p.add_argument("--first-seed", type=int, default=0, help="seeds first-seed .. first-seed+N-1 (split over processes)")
    p.add_argument("--epochs", type=int, default=0, help="the same number of epochs for every row (default: "
                   "each file's length / --scale, as the paper's rows differ in length)")
    p.add_argument("--control", action="store_true", help="also the Hard Augment rows with a random pick among "
                   "the same views (accel.hard_augment.pick=random): hardness, or just more views?")
    args = p.parse_args()
    jobs = [(row, []) for row in ROWS]
    if args.control:
        jobs += [(row, ["accel.hard_augment.pick=random"]) for row in ROWS if row.endswith("_ha")]
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        for row, extra in jobs:
            path = os.path.join(REPO, "yaml", "wacv", f"{row}.yaml")
            name = row + ("_random_pick" if extra else "")
            several = args.seeds > 1 or args.first_seed > 0
            out = os.path.join(args.out, name, f"seed{seed}") if several else os.path.join(args.out, name)
            cmd = [sys.executable, "train_ssl.py", "--config", path] + overrides(
                load_config(ssl_defaults(), path), args, out, seed) + extra
            print(" ".join(cmd[1:]), flush=True)
            subprocess.run(cmd, cwd=REPO, check=True)


if __name__ == "__main__":
    main()
