#!/usr/bin/env python
"""Do the WACV'23 accelerations save wall time in proportion to the FLOPs they save?

Runs train_ssl.py twice, side by side in one invocation, at CPU scale on CIFAR-10 (the
ImageFolder copy beside the repo; the synthetic set if it is absent): the baseline setting
(cosine, 2 views at full resolution, magnitude 5) and the efficient one (F1-CLR with
anti-phased momentum, Super Progressive Learning, Hard Augment), scaled down from Table 10.
Prints training PFLOPs (training + selection passes), training wall time, kNN top-1, the FLOP
and wall-clock speed-ups, and their ratio (1 = the wall clock follows the FLOPs). With --seeds N
both settings run with train.seed = first-seed .. first-seed+N-1: one line per seed and run, the
ratios taken per seed (baseline and efficient of the same seed), then every figure as mean +-
sample std (n).

    python benchmarks/wacv_efficiency.py                   # ~6 min on 2 CPU cores
    python benchmarks/wacv_efficiency.py --seeds 3         # ~3x that (54 min with other jobs on the cores)
    python benchmarks/wacv_efficiency.py --epochs 20 --per-class 1000

Scale mapping from Table 10 (224 px): r_min 96 -> 16 px of 32 (stages of 8 px), r_sel 64 ->
16 px, efficient length 480/800 = 0.6 of the baseline epochs, warm-up 80/480 of it.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from accel import cost, progressive  # noqa: E402
from cpu_scale import add_scale_args, mean_std, seed_list, train_ssl_args  # noqa: E402


def common_args(args):
    return train_ssl_args(args.per_class, args.width, args.threads) + ["train.log_every=5"]


SETTINGS = {
    "baseline": lambda e: [f"train.epochs={e}", "optim.schedule=cosine", "augment.magnitude=5.0"],
    "efficient": lambda e: [f"train.epochs={max(1, round(0.6 * e))}", "optim.schedule=f1clr",
                            f"optim.warmup_epochs={round(0.6 * e) / 6:.3f}", "optim.lr=0.24",
                            "accel.progressive.mode=super", "accel.progressive.r_min=16",
                            "accel.progressive.step=8", "accel.hard_augment.enabled=true",
                            "accel.hard_augment.views=6", "accel.hard_augment.r_sel=16"],
}


def run_setting(name, args, seed=0):
    with tempfile.TemporaryDirectory() as out:
        cmd = ([sys.executable, "train_ssl.py"] + common_args(args) + SETTINGS[name](args.epochs)
               + [f"train.seed={seed}", f"output_dir={out}"])
        subprocess.run(cmd, cwd=REPO, check=True, capture_output=True)
        with open(os.path.join(out, "metrics.jsonl")) as f:
            rows = [json.loads(line) for line in f]
    train = [r for r in rows if "loss" in r]
    start = rows[0]["time"]  # logged right after the start-of-run kNN, before the first step
    last = train[-1]
    resolutions = [r["resolution"] for r in train]
    return {"pflops": last["train_pflops"] + last.get("selection_pflops", 0.0),
            "selection": last.get("selection_pflops", 0.0), "wall": last["time"] - start,
            "knn": rows[-1]["knn_top1"], "steps": last["step"], "resolutions": resolutions}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=10, help="baseline epochs (efficient: 0.6x)")
    add_scale_args(p)
    args = p.parse_args()
    seeds = seed_list(args)
    runs = {}   # seed -> {setting: result}, the two settings of a seed side by side
    for seed in seeds:
        runs[seed] = {name: run_setting(name, args, seed) for name in SETTINGS}
        print(f"  seed {seed}: done", file=sys.stderr, flush=True)
    ratios = {seed: {"flop": r["baseline"]["pflops"] / r["efficient"]["pflops"],
                     "wall": r["baseline"]["wall"] / r["efficient"]["wall"]} for seed, r in runs.items()}
    for r in ratios.values():
        r["wall_per_flop"] = r["wall"] / r["flop"]
    print(f"SimSiam, CIFAR-stem ResNet-18 width {args.width}, {args.per_class} images/class, batch 128, "
          f"baseline {args.epochs} epochs, {args.threads} threads, seeds {seeds}, device: cpu")
    print(f"{'seed':>4}  {'setting':<12}{'steps':>7}{'PFLOPs':>10}{'(select)':>10}{'wall s':>9}{'kNN %':>8}")
    for seed, res in runs.items():
        for name, r in res.items():
            print(f"{seed:>4}  {name:<12}{r['steps']:>7}{r['pflops']:>10.4f}{r['selection']:>10.4f}{r['wall']:>9.1f}"
                  f"{r['knn']:>8.2f}")
    for seed, r in ratios.items():
        print(f"seed {seed}: FLOP speed-up {r['flop']:.2f}x, wall-clock speed-up {r['wall']:.2f}x, "
              f"wall / FLOP ratio {r['wall_per_flop']:.2f}")
    if len(seeds) > 1:
        print(f"\nmean +- sample std over seeds {seeds[0]}-{seeds[-1]} (n={len(seeds)}):")
        print(f"{'setting':<12}{'steps':>7}{'PFLOPs':>26}{'wall s':>24}{'kNN %':>24}")
        for name in SETTINGS:
            col = lambda k, spec: mean_std([runs[s][name][k] for s in seeds], spec)  # noqa: E731
            print(f"{name:<12}{runs[seeds[0]][name]['steps']:>7}{col('pflops', '.4f'):>26}{col('wall', '.1f'):>24}"
                  f"{col('knn', '.2f'):>24}")
        kd = mean_std([runs[s]["efficient"]["knn"] - runs[s]["baseline"]["knn"] for s in seeds], "+.2f")
        wins = sum(runs[s]["efficient"]["knn"] > runs[s]["baseline"]["knn"] for s in seeds)
        col = lambda k: mean_std([ratios[s][k] for s in seeds])  # noqa: E731
        print(f"kNN efficient - baseline (per seed) {kd} points, efficient higher on {wins} of {len(seeds)} seeds")
        print(f"per-seed ratios: FLOP speed-up {col('flop')}, wall-clock speed-up {col('wall')}, "
              f"wall / FLOP ratio {col('wall_per_flop')}")
    # analytical prediction: cost of a step proportional to r^2 (Eq. 9's assumption) plus the
    # selection pass, n r_sel^2 / C relative to a step at r (Eq. 11); the steps do not depend on the seed
    b, e = runs[seeds[0]]["baseline"], runs[seeds[0]]["efficient"]
    flop_speedup = ratios[seeds[0]]["flop"]
    steps_e, steps_b = e["steps"], b["steps"]
    warm = round(steps_e / 6)
    res, _ = progressive.super_progressive(steps_e, warm, 16, 32, 4.0, 6.0, step=8)
    res_speedup = cost.resolution_speedup(res, 32)
    ha = cost.hard_augment_overhead(32, 16, 6)  # relative to a step at r = 32
    predicted = steps_b * 32 ** 2 / (np.sum(res.astype(float) ** 2) + steps_e * ha * 32 ** 2)
    print(f"analytical: resolution schedule alone {res_speedup:.2f}x (Eq. 9 as printed: "
          f"{cost.resolution_speedup_eq9(res, 32):.2f}x); Hard Augment overhead {100 * ha:.1f} % of a 32 px step "
          f"(Eq. 11, C=6); predicted FLOP speed-up {predicted:.2f}x vs measured {flop_speedup:.2f}x (seed {seeds[0]})")


if __name__ == "__main__":
    main()
