#!/usr/bin/env python
"""Does Fast Online Minibatch Selection reach the uniform baseline's accuracy in fewer steps and
FLOPs, and does its selection pass cost what the analytical model says?

Runs train_supervised.py twice at CPU scale on CIFAR-10 (the ImageFolder copy beside the repo;
the synthetic set if absent): uniform sampling for E epochs, then Eq. 4.4 selection (beta 1,
b-bar = 2b, r-hat = r/2, uniform warm-up and a 10 % cool-down) with the uniform run's final test
top-1 as its target. Prints steps, PFLOPs (training + selection) and wall time to the target,
the measured selection overhead against accel.cost.selection_overhead, and the speed-ups.

    python benchmarks/selection.py                  # ~5 min on 2 CPU cores
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

CIFAR10 = os.path.join(REPO, "..", "shared", "datasets", "cifar10")


def run(args, extra):
    if os.path.isdir(os.path.join(CIFAR10, "train")):
        data = ["data.name=imagefolder", f"data.root={CIFAR10}", f"data.subset_per_class={args.per_class}",
                "data.val_subset_per_class=100", "augment.mean=[0.4914,0.4822,0.4465]",
                "augment.std=[0.2470,0.2435,0.2616]"]
    else:
        data = [f"data.synthetic_train_size={10 * args.per_class}"]
    with tempfile.TemporaryDirectory() as out:
        cmd = [sys.executable, "train_supervised.py"] + data + [
            f"train.epochs={args.epochs}", f"model.width={args.width}", "train.batch_size=128", "train.log_every=5",
            "select.eval_every_epochs=1.0", f"train.threads={args.threads}", f"output_dir={out}"] + extra
        subprocess.run(cmd, cwd=REPO, check=True, capture_output=True)
        with open(os.path.join(out, "metrics.jsonl")) as f:
            return [json.loads(line) for line in f]


def at_step(rows, step, key):
    """Value of a cumulative metric at the last logged step <= step."""
    vals = [r[key] for r in rows if key in r and r["step"] <= step]
    return vals[-1] if vals else 0.0


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--per-class", type=int, default=500)
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    uni = run(args, ["select.method=uniform"])
    target = [r for r in uni if "top1" in r][-1]["top1"]
    steps_per_epoch = [r for r in uni if "top1" in r][0]["step"]
    fast = run(args, ["select.method=fast", "select.beta=1.0", "select.large_batch_factor=2.0",
                      "select.resolution=16", f"select.warmup_steps={2 * steps_per_epoch}",
                      "select.cooldown_fraction=0.1", f"select.target_top1={target}"])
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
                      "wall": wall, "best": end["best_top1"]}
    print(f"ResNet-18 (CIFAR stem, width {args.width}), {args.per_class} images/class, batch 128, uniform "
          f"{args.epochs} epochs, target = uniform's final test top-1 {target:.2f} %, {args.threads} threads, device: cpu")
    print(f"{'sampling':<10}{'steps':>7}{'PFLOPs':>10}{'sel. overhead':>15}{'wall s':>9}{'best top-1':>12}")
    for name, r in rows.items():
        flag = "" if r["reached"] else " (target not reached)"
        print(f"{name:<10}{r['steps']:>7}{r['pflops']:>10.4f}{100 * r['overhead']:>14.1f}%{r['wall']:>9.1f}"
              f"{r['best']:>12.2f}{flag}")
    u, f_ = rows["uniform"], rows["fast"]
    print(f"speed-up to the target: steps {u['steps'] / f_['steps']:.2f}x, FLOPs {u['pflops'] / f_['pflops']:.2f}x, "
          f"wall {u['wall'] / f_['wall']:.2f}x")
    print(f"selection overhead per selection step: measured {100 * f_['per_step']:.1f} %, analytical "
          f"{100 * cost.selection_overhead(32, 16, 2.0, C=3.0):.1f} % (C = 3) / "
          f"{100 * cost.selection_overhead(32, 16, 2.0, C=3.5):.1f} % (C = 3.5, thesis Table 4.6); "
          f"over the whole run {100 * f_['overhead']:.1f} % (warm-up and cool-down steps select nothing)")


if __name__ == "__main__":
    main()
