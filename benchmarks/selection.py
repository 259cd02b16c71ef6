#!/usr/bin/env python
"""Does Fast Online Minibatch Selection reach the uniform baseline's accuracy in fewer steps and
FLOPs, and does its selection pass cost what the analytical model says?

Runs train_supervised.py twice at CPU scale on CIFAR-10 (the ImageFolder copy beside the repo;
the synthetic set if absent): uniform sampling for E epochs, then Eq. 4.4 selection (beta 1,
b-bar = 2b, r-hat = r/2, uniform warm-up and a 10 % cool-down) with the uniform run's final test
top-1 as its target. Prints steps, PFLOPs (training + selection) and wall time to the target,
the measured selection overhead against accel.cost.selection_overhead, and the speed-ups. With
--seeds N both runs take train.seed = first-seed .. first-seed+N-1 (init, augmentation, order;
the image subset is the same): each seed's selection run aims at the same seed's uniform top-1,
the speed-ups are taken per seed, and every figure is printed per seed and as mean +- sample std (n).

    python benchmarks/selection.py                  # ~5 min on 2 CPU cores
    python benchmarks/selection.py --seeds 3        # 17 min: accuracies and speed-ups as mean +- std
    python benchmarks/selection.py --epochs 30 --per-class 1000
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from accel import cost  # noqa: E402
from cpu_scale import CIFAR10, add_scale_args, mean_std, seed_list  # noqa: E402


def run(args, extra, seed=0):
    if os.path.isdir(os.path.join(CIFAR10, "train")):
        data = ["data.name=imagefolder", f"data.root={CIFAR10}", f"data.subset_per_class={args.per_class}",
                "data.val_subset_per_class=100", "augment.mean=[0.4914,0.4822,0.4465]",
                "augment.std=[0.2470,0.2435,0.2616]"]
    else:
        data = [f"data.synthetic_train_size={10 * args.per_class}"]
    with tempfile.TemporaryDirectory() as out:
        cmd = [sys.executable, "train_supervised.py"] + data + [
            f"train.epochs={args.epochs}", f"model.width={args.width}", "train.batch_size=128", "train.log_every=5",
            "select.eval_every_epochs=1.0", f"train.threads={args.threads}", f"train.seed={seed}",
            f"output_dir={out}"] + extra
        subprocess.run(cmd, cwd=REPO, check=True, capture_output=True)
        with open(os.path.join(out, "metrics.jsonl")) as f:
            return [json.loads(line) for line in f]


def at_step(rows, step, key):
    """Value of a cumulative metric at the last logged step <= step."""
    vals = [r[key] for r in rows if key in r and r["step"] <= step]
    return vals[-1] if vals else 0.0


def compare(args, seed):
    """Uniform, then selection aiming at uniform's final top-1, both with train.seed = seed."""
    uni = run(args, ["select.method=uniform"], seed)
    target = [r for r in uni if "top1" in r][-1]["top1"]
    steps_per_epoch = [r for r in uni if "top1" in r][0]["step"]
    fast = run(args, ["select.method=fast", "select.beta=1.0", "select.large_batch_factor=2.0",
                      "select.resolution=16", f"select.warmup_steps={2 * steps_per_epoch}",
                      "select.cooldown_fraction=0.1", f"select.target_top1={target}"], seed)
    rows = {}
    for name, m in (("uniform", uni), ("fast", fast)):
        end = m[-1]
        steps = end.get("steps_to_target") or end["steps"]
        t0 = m[0]["time"]  # the first log line (first training window)
        wall = [r["time"] for r in m if r["step"] <= steps][-1] - t0
        train, select = at_step(m, steps, "train_pflops"), at_step(m, steps, "selection_pflops")
        n_select = sum(r["selection_steps"] for r in m if "selection_steps" in r and r["step"] <= steps)
        rows[name] = {"steps": steps, "reached": name == "uniform" or end.get("steps_to_target") is not None,
                      "pflops": train + select, "overhead": at_step(m, steps, "selection_overhead"),
                      "per_step": select / (train / steps * n_select) if n_select else 0.0,
                      "wall": wall, "best": end["best_top1"], "final": [r for r in m if "top1" in r][-1]["top1"]}
    u, f_ = rows["uniform"], rows["fast"]
    rows["speedup"] = {"steps": u["steps"] / f_["steps"], "pflops": u["pflops"] / f_["pflops"],
                       "wall": u["wall"] / f_["wall"]}
    return target, rows


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=15)
    add_scale_args(p)
    args = p.parse_args()
    seeds = seed_list(args)
    runs = {}
    for seed in seeds:
        runs[seed] = compare(args, seed)
        print(f"  seed {seed}: done", file=sys.stderr, flush=True)
    print(f"ResNet-18 (CIFAR stem, width {args.width}), {args.per_class} images/class, batch 128, uniform "
          f"{args.epochs} epochs, target = the same seed's uniform final test top-1, {args.threads} threads, "
          f"seeds {seeds}, device: cpu")
    print(f"{'seed':>4}  {'sampling':<10}{'steps':>7}{'PFLOPs':>10}{'sel. overhead':>15}{'wall s':>9}"
          f"{'final top-1':>13}{'best top-1':>12}")
    for seed, (target, rows) in runs.items():
        for name in ("uniform", "fast"):
            r = rows[name]
            flag = "" if r["reached"] else f" (target {target:.2f} not reached)"
            print(f"{seed:>4}  {name:<10}{r['steps']:>7}{r['pflops']:>10.4f}{100 * r['overhead']:>14.1f}%"
                  f"{r['wall']:>9.1f}{r['final']:>13.2f}{r['best']:>12.2f}{flag}")
    for seed, (target, rows) in runs.items():
        sp = rows["speedup"]
        print(f"seed {seed}: speed-up to the target: steps {sp['steps']:.2f}x, FLOPs {sp['pflops']:.2f}x, "
              f"wall {sp['wall']:.2f}x")
    if len(seeds) > 1:
        print(f"\nmean +- sample std over seeds {seeds[0]}-{seeds[-1]} (n={len(seeds)}):")
        print(f"{'sampling':<10}{'steps':>22}{'PFLOPs':>26}{'wall s':>22}{'final top-1':>23}{'best top-1':>23}")
        for name in ("uniform", "fast"):
            col = lambda k, spec: mean_std([runs[s][1][name][k] for s in seeds], spec)  # noqa: E731
            print(f"{name:<10}{col('steps', '.0f'):>22}{col('pflops', '.4f'):>26}{col('wall', '.1f'):>22}"
                  f"{col('final', '.2f'):>23}{col('best', '.2f'):>23}")
        reached = sum(runs[s][1]["fast"]["reached"] for s in seeds)
        gap = mean_std([runs[s][1]["fast"]["best"] - runs[s][1]["uniform"]["best"] for s in seeds], "+.2f")
        col = lambda k: mean_std([runs[s][1]["speedup"][k] for s in seeds])  # noqa: E731
        print(f"selection reached the target on {reached} of {len(seeds)} seeds; best top-1 selection - uniform "
              f"(per seed) {gap} points")
        print(f"per-seed speed-ups to the target: steps {col('steps')}, FLOPs {col('pflops')}, wall {col('wall')}")
    f_ = [runs[s][1]["fast"] for s in seeds]
    print(f"selection overhead per selection step: measured {mean_std([100 * r['per_step'] for r in f_], '.1f')} %, "
          f"analytical {100 * cost.selection_overhead(32, 16, 2.0, C=3.0):.1f} % (C = 3) / "
          f"{100 * cost.selection_overhead(32, 16, 2.0, C=3.5):.1f} % (C = 3.5, thesis Table 4.6); "
          f"over the whole run {mean_std([100 * r['overhead'] for r in f_], '.1f')} % "
          f"(warm-up and cool-down steps select nothing)")


if __name__ == "__main__":
    main()
