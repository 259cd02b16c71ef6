#!/usr/bin/env python
"""Do partial back-propagation (PB) and block-wise hard pairs (HP) save what the paper says?

Intermediate-loss paper, Table 6: training time of MoCo v2 / SimCLR relative to the standard
method, +PB 3.7, +HP 3.4, +PB+HP 2.8 of 4.3 GPU-days (0.86, 0.79, 0.65). Runs train_ssl.py side
by side in one invocation at CPU scale on CIFAR-10 (the ImageFolder copy beside the repo; the
synthetic set if absent), SimCLR with a CIFAR-stem ResNet-18:
  1. baseline, +PB, +HP, +PB+HP for a few epochs each: training FLOPs per step (the ledger:
     truncated forward, shorter backward, cropped maps, the M x M head passes) and wall time per
     step, both as ratios to the baseline;
  2. kNN top-1 at an equal wall-clock budget (the paper's Fig. 3 claim): the baseline for
     --epochs, and PB+HP for as many more epochs as its measured wall-time ratio buys (or
     --accel-epochs, fixed: part 1's wall ratio is only meaningful on an otherwise idle machine);
     with --seeds N both runs take train.seed = first-seed .. first-seed+N-1, and kNN top-1,
     wall time and the per-seed kNN difference are printed per seed and as mean +- sample std (n).
     Part 1 runs once, with the first seed (its FLOPs do not depend on the seed);
  0. first, the paper's sec. 2.2 figure: backward MACs of a 224 px ResNet-50 image when the
     loss sits after block i (FlopCounterMode), and their mean under uniform draws
     (paper: 8.2 -> 3.6 GMACs on average).

    python benchmarks/interloss.py                      # ~12 min on 2 CPU cores
    python benchmarks/interloss.py --seeds 3 --no-part1 --accel-epochs 10   # part 2 only, 3 seeds: 17 min
    python benchmarks/interloss.py --method mocov2 --epochs 10
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

from cpu_scale import REPO, add_scale_args, mean_std, seed_list, train_ssl_args

PAPER = {"+PB": 3.7 / 4.3, "+HP": 3.4 / 4.3, "+PB+HP": 2.8 / 4.3}
HP = ["interloss.hard_pairs=true", "interloss.pair_blocks=[1,2]", "interloss.candidates=4", "interloss.crop=0.75"]
SETTINGS = {
    "baseline": [],
    "+PB": ["interloss.partial_backprop=true"],
    "+HP": ["interloss.aux_losses=true"] + HP,
    "+PB+HP": ["interloss.partial_backprop=true"] + HP,
}
HEADS = {"simclr": ["method.simclr.proj_hidden=512", "method.simclr.temperature=0.2"],
         "mocov2": ["method.mocov2.proj_hidden=512", "method.mocov2.queue_size=4096", "method.mocov2.temperature=0.2"]}


def common_args(args):
    return (train_ssl_args(args.per_class, args.width, args.threads)
            + ["train.log_every=1", f"method.name={args.method}"] + HEADS[args.method])


def run(args, extra, epochs, seed=0):
    with tempfile.TemporaryDirectory() as out:
        cmd = ([sys.executable, "train_ssl.py"] + common_args(args) + extra
               + [f"train.epochs={epochs}", f"train.seed={seed}", f"output_dir={out}"])
        p = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
        if p.returncode:
            raise RuntimeError(p.stderr[-2000:])
        with open(os.path.join(out, "metrics.jsonl")) as f:
            rows = [json.loads(line) for line in f]
    train = [r for r in rows if "loss" in r]
    skip = min(5, len(train) - 1)  # the first steps measure FLOPs (FlopCounterMode) and warm up
    return {"flops_step": train[-1]["train_pflops"] * 1e15 / train[-1]["step"],
            "wall_step": (train[-1]["time"] - train[skip - 1]["time"]) / (train[-1]["step"] - train[skip - 1]["step"]),
            "wall": train[-1]["time"] - rows[0]["time"], "knn0": rows[0]["knn_top1"], "knn": rows[-1]["knn_top1"],
            "steps": train[-1]["step"]}


def backward_macs():
    """Backward GMACs per 224 px image of a ResNet-50 truncated after block i (i = 1..4)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode
    sys.path.insert(0, REPO)
    from models.resnet import ResNet
    m, x, out = ResNet("resnet50"), torch.randn(1, 3, 224, 224), []
    for i in range(1, 5):
        loss = m.forward_stages(x, i)[-1].mean((2, 3)).sum()
        with FlopCounterMode(display=False) as c:
            loss.backward()
        out.append(c.get_total_flops() / 2e9)
        m.zero_grad(set_to_none=True)
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--method", default="simclr", choices=sorted(HEADS))
    p.add_argument("--epochs", type=int, default=8, help="baseline epochs of part 2")
    p.add_argument("--accel-epochs", type=int, default=0,
                   help="+PB+HP epochs of part 2 (default: --epochs / part 1's measured wall ratio)")
    p.add_argument("--no-part1", action="store_true", help="skip parts 0 and 1 (needs --accel-epochs)")
    p.add_argument("--probe-epochs", type=int, default=2, help="epochs per setting in part 1")
    add_scale_args(p)
    args = p.parse_args()
    if args.no_part1 and not args.accel_epochs:
        p.error("--no-part1 needs --accel-epochs")
    seeds = seed_list(args)
    print(f"{args.method}, CIFAR-stem ResNet-18 width {args.width}, {args.per_class} images/class, 32 px, batch 128, "
          f"{args.threads} threads, device: cpu\n")
    accel_epochs = args.accel_epochs
    if not args.no_part1:
        macs = backward_macs()
        print("ResNet-50, 224 px, backward GMACs per image with the loss after block 1..4: "
              + ", ".join(f"{v:.2f}" for v in macs) + f"; mean over uniform draws {sum(macs) / 4:.2f} "
              f"(over blocks 1-3 only {sum(macs[:3]) / 3:.2f}); paper: 8.2 -> 3.6\n")
        res = {name: run(args, extra, args.probe_epochs, seeds[0]) for name, extra in SETTINGS.items()}
        b = res["baseline"]
        print(f"part 1, per step ({args.probe_epochs} epochs per setting, seed {seeds[0]}):")
        print(f"{'setting':<10}{'GFLOPs/step':>12}{'FLOPs ratio':>12}{'s/step':>8}{'wall ratio':>11}"
              f"{'paper time ratio':>17}")
        for name, r in res.items():
            paper = f"{PAPER[name]:.2f}" if name in PAPER else "1.00"
            print(f"{name:<10}{r['flops_step'] / 1e9:>12.2f}{r['flops_step'] / b['flops_step']:>12.2f}"
                  f"{r['wall_step']:>8.3f}{r['wall_step'] / b['wall_step']:>11.2f}{paper:>17}")
        ratio = res["+PB+HP"]["wall_step"] / b["wall_step"]
        accel_epochs = accel_epochs or max(1, round(args.epochs / ratio))
    part2 = {}
    for seed in seeds:
        part2[seed] = {"baseline": run(args, SETTINGS["baseline"], args.epochs, seed),
                       "+PB+HP": run(args, SETTINGS["+PB+HP"], accel_epochs, seed)}
        print(f"  part 2, seed {seed}: done", file=sys.stderr, flush=True)
    epochs = {"baseline": args.epochs, "+PB+HP": accel_epochs}
    how = "fixed by --accel-epochs" if args.accel_epochs else "from part 1's wall ratio"
    print(f"\npart 2, equal wall-clock budget: baseline {args.epochs} epochs vs +PB+HP {accel_epochs} epochs ({how}), "
          f"seeds {seeds}")
    print(f"{'seed':>4}  {'setting':<10}{'epochs':>7}{'steps':>7}{'wall s':>8}{'kNN top-1 % start -> end':>26}")
    for seed, res in part2.items():
        for name, r in res.items():
            print(f"{seed:>4}  {name:<10}{epochs[name]:>7}{r['steps']:>7}{r['wall']:>8.0f}"
                  f"{r['knn0']:>15.2f} -> {r['knn']:<6.2f}")
    if len(seeds) > 1:
        print(f"\nmean +- sample std over seeds {seeds[0]}-{seeds[-1]} (n={len(seeds)}):")
        print(f"{'setting':<10}{'epochs':>7}{'steps':>7}{'wall s':>22}{'kNN top-1 %':>24}")
        for name in epochs:
            col = lambda k, spec: mean_std([part2[s][name][k] for s in seeds], spec)  # noqa: E731
            print(f"{name:<10}{epochs[name]:>7}{part2[seeds[0]][name]['steps']:>7}{col('wall', '.0f'):>22}"
                  f"{col('knn', '.2f'):>24}")
    diff = [part2[s]["+PB+HP"]["knn"] - part2[s]["baseline"]["knn"] for s in seeds]
    wall = [part2[s]["+PB+HP"]["wall"] / part2[s]["baseline"]["wall"] for s in seeds]
    print(f"kNN +PB+HP - baseline (per seed): {mean_std(diff, '+.2f')} points, +PB+HP higher on "
          f"{sum(d > 0 for d in diff)} of {len(seeds)} seeds; wall +PB+HP / baseline {mean_std(wall)}")


if __name__ == "__main__":
    main()
