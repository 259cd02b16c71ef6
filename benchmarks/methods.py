#!/usr/bin/env python
"""How do the SSL methods of selfsup/ compare at the same budget?

Pretrains every registered method with train_ssl.py, one after the other in one invocation, at
CPU scale on CIFAR-10 (the ImageFolder copy beside the repo; the synthetic set if it is absent),
with the same backbone, optimizer, augmentations, batch and epochs for all of them (the
protocol of WACV'23 Table 2: "the same optimizer and augmentation hyper-parameters for all").
Heads are each method's own, narrowed for the width-16 backbone (METHOD_ARGS below); DINO and
SwAV add 2 local 16 px crops (multi-crop), which shows in their FLOPs per step. Prints kNN
top-1 (k=20) at the start and end, training PFLOPs (the FLOP ledger: momentum encoders and
local crops included), training wall time, and FLOPs per step relative to SimSiam. With --seeds
N every method runs with train.seed = first-seed .. first-seed+N-1 (init, augmentation, order;
the same images): one line per method and seed, the ratios to SimSiam taken within each seed,
then every figure as mean +- sample std (n).

    python benchmarks/methods.py                            # ~20 min on 2 CPU cores
    python benchmarks/methods.py --seeds 3                  # ~3x that: kNN and losses as mean +- std
    python benchmarks/methods.py --methods simsiam byol --epochs 10
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

from cpu_scale import REPO, add_scale_args, mean_std, seed_list, train_ssl_args

MULTI_CROP = ["data.local_views=2", "data.local_crop_size=16", "data.local_crop_scale=[0.05,0.4]"]
METHOD_ARGS = {
    "simsiam": [],                                      # yaml/cifar10_simsiam_cpu.yaml's heads
    "simclr": ["method.simclr.proj_hidden=512", "method.simclr.temperature=0.2"],
    "byol": ["method.byol.proj_hidden=512", "method.byol.proj_dim=128", "method.byol.pred_hidden=512"],
    "moco": ["method.moco.queue_size=4096"],
    "mocov2": ["method.mocov2.proj_hidden=512", "method.mocov2.queue_size=4096"],
    "mocov2plus": ["method.mocov2plus.proj_hidden=512", "method.mocov2plus.queue_size=4096"],
    "mocov3": ["method.mocov3.proj_hidden=512", "method.mocov3.proj_dim=128", "method.mocov3.pred_hidden=512",
               "method.mocov3.temperature=0.2"],
    "dino": ["method.dino.hidden_dim=512", "method.dino.bottleneck_dim=128", "method.dino.out_dim=4096",
             "method.dino.use_bn_in_head=true", "method.dino.warmup_teacher_temp_epochs={warm}"] + MULTI_CROP,
    "swav": ["method.swav.proj_hidden=512", "method.swav.num_prototypes=100", "method.swav.queue_length=1024",
             "method.swav.queue_start_epoch={warm}"] + MULTI_CROP,
}


def common_args(args):
    return train_ssl_args(args.per_class, args.width, args.threads) + [f"train.epochs={args.epochs}", "train.log_every=5"]


def run_method(name, args, seed=0):
    extra = [a.format(warm=args.epochs * 0.3) for a in METHOD_ARGS[name]]
    with tempfile.TemporaryDirectory() as out:
        cmd = ([sys.executable, "train_ssl.py"] + common_args(args) + [f"method.name={name}"] + extra
               + [f"train.seed={seed}", f"output_dir={out}"])
        p = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
        if p.returncode:
            raise RuntimeError(f"{name} failed:\n{p.stderr[-2000:]}")
        with open(os.path.join(out, "metrics.jsonl")) as f:
            rows = [json.loads(line) for line in f]
    train = [r for r in rows if "loss" in r]
    return {"pflops": train[-1]["train_pflops"], "wall": train[-1]["time"] - rows[0]["time"],
            "steps": train[-1]["step"], "knn0": rows[0]["knn_top1"], "knn": rows[-1]["knn_top1"],
            "loss0": train[0]["loss"], "loss": train[-1]["loss"]}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--methods", nargs="+", default=list(METHOD_ARGS), choices=list(METHOD_ARGS))
    p.add_argument("--epochs", type=int, default=5)
    add_scale_args(p)
    args = p.parse_args()
    seeds = seed_list(args)
    res = {name: {} for name in args.methods}   # method -> seed -> result
    for seed in seeds:   # seed by seed: an interrupted sweep leaves whole seeds, every method in each
        for name in args.methods:
            res[name][seed] = r = run_method(name, args, seed)
            print(f"  {name}, seed {seed}: done ({r['wall']:.0f} s, kNN {r['knn']:.2f})", file=sys.stderr, flush=True)
    ref = res.get("simsiam")
    for by_seed in res.values():   # per step, relative to SimSiam of the same seed
        for seed, r in by_seed.items():
            r["rel_flops"] = r["pflops"] / r["steps"] / (ref[seed]["pflops"] / ref[seed]["steps"]) if ref else None
            r["rel_wall"] = r["wall"] / r["steps"] / (ref[seed]["wall"] / ref[seed]["steps"]) if ref else None
    print(f"CIFAR-stem ResNet-18 width {args.width}, {args.per_class} images/class, batch 128, {args.epochs} epochs, "
          f"SGD as yaml/cifar10_simsiam_cpu.yaml, {args.threads} threads, seeds {seeds}, device: cpu")
    print(f"{'method':<12}{'seed':>5}{'steps':>6}{'loss':>16}{'kNN % start->end':>19}{'PFLOPs':>9}{'wall s':>8}"
          f"{'FLOPs/step vs SimSiam':>23}{'wall vs SimSiam':>17}")
    for name, by_seed in res.items():
        for seed, r in by_seed.items():
            rel = f"{r['rel_flops']:.2f}" if ref else "-"
            relw = f"{r['rel_wall']:.2f}" if ref else "-"
            print(f"{name:<12}{seed:>5}{r['steps']:>6}{r['loss0']:>8.3f}->{r['loss']:<7.3f}{r['knn0']:>8.2f} -> "
                  f"{r['knn']:<6.2f}{r['pflops']:>9.4f}{r['wall']:>8.0f}{rel:>23}{relw:>17}")
    if len(seeds) > 1:
        print(f"\nmean +- sample std over seeds {seeds[0]}-{seeds[-1]} (n={len(seeds)}):")
        print(f"{'method':<12}{'kNN % start':>22}{'kNN % end':>22}{'kNN gain':>22}{'last loss':>24}{'PFLOPs':>9}"
              f"{'wall s':>18}{'FLOPs/step vs SimSiam':>23}{'wall/step vs SimSiam':>22}")
        for name, by_seed in res.items():
            col = lambda k, spec: mean_std([r[k] for r in by_seed.values()], spec)  # noqa: E731
            gain = mean_std([r["knn"] - r["knn0"] for r in by_seed.values()], "+.2f")
            rel = col("rel_flops", ".2f").split(" (")[0] if ref else "-"
            relw = col("rel_wall", ".2f").split(" (")[0] if ref else "-"
            print(f"{name:<12}{col('knn0', '.2f'):>22}{col('knn', '.2f'):>22}{gain:>22}{col('loss', '.3f'):>24}"
                  f"{sum(r['pflops'] for r in by_seed.values()) / len(by_seed):>9.4f}"
                  f"{col('wall', '.0f').split(' (')[0]:>18}{rel:>23}{relw:>22}")


if __name__ == "__main__":
    main()
