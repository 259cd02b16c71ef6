#!/usr/bin/env python
"""Does UBN's advantage over BN grow as depth labels get scarcer (thesis ch. 2, Fig. 2.6)?

Runs train_depth_ubn.py (yaml/ubn/quickstart.yaml's scale: procedural 64 x 192 scenes, width-8
5-level DispNet, labeled batch 16, Adam 1e-3) for each labeled fraction with BN, UBN (step-1
statistics as constants, models/ubn.py's default) and UBN with gradient through the labeled share
of the statistics; every run takes the same number of steps. Prints the test metrics and draws
delta < 1.25 against the labeled fraction (OUT/ubn_label_fraction.png).

    python benchmarks/ubn_label_fraction.py                      # ~12 min on 2 CPU cores, 1 thread
    python benchmarks/ubn_label_fraction.py --fractions 1 0.25 --epochs 5
    python benchmarks/ubn_label_fraction.py --reestimate 16    # "precise BN" running statistics before evaluation
"""
import argparse
import json
import os
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from common.plot import line_plot  # noqa: E402

# every variant sets grad_through_stats itself: yaml/ubn/quickstart.yaml (the base) turns it on
VARIANTS = {"BN": ["ubn.enabled=false"], "UBN": ["ubn.enabled=true", "ubn.grad_through_stats=false"],
            "UBN grad": ["ubn.enabled=true", "ubn.grad_through_stats=true"]}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--fractions", type=float, nargs="+", default=[1.0, 0.5, 0.25, 0.125])
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--reestimate", type=int, default=0,
                   help="ubn.reestimate_batches: recompute the running statistics over N training batches before evaluating")
    p.add_argument("--out", default=None, help="default runs/ubn_label_fraction[_reest<N>]")
    p.add_argument("--extra", nargs="*", default=[], help="more key=value overrides for every run")
    args = p.parse_args()
    if args.out is None:
        args.out = "runs/ubn_label_fraction" + (f"_reest{args.reestimate}" if args.reestimate else "")
    os.makedirs(args.out, exist_ok=True)
    results = {}
    for frac in args.fractions:
        for name, flags in VARIANTS.items():
            out = os.path.join(args.out, f"{name.replace(' ', '_').lower()}_f{frac:g}")
            cmd = [sys.executable, "train_depth_ubn.py", f"data.labeled_fraction={frac}", f"train.epochs={args.epochs}",
                   f"train.threads={args.threads}", "train.eval_every_epochs=1000", f"output_dir={out}",
                   f"ubn.reestimate_batches={args.reestimate}"] + flags + args.extra
            t = time.perf_counter()
            subprocess.run(cmd, cwd=REPO, check=True, capture_output=True)
            with open(os.path.join(out, "metrics.jsonl")) as f:
                final = [json.loads(line) for line in f][-1]
            final["wall_s"] = time.perf_counter() - t
            results[(name, frac)] = final
            print(f"{name:9s} fraction {frac:<6g} delta1 {final['delta1']:.4f}  abs_rel {final['abs_rel']:.4f}  "
                  f"rmse {final['rmse']:.3f}  ({final['wall_s']:.0f} s)", flush=True)
    print("\n| labeled fraction | " + " | ".join(f"{n} delta<1.25" for n in VARIANTS) + " | "
          + " | ".join(f"{n} AbsRel" for n in VARIANTS) + " |")
    print("|---" * (1 + 2 * len(VARIANTS)) + "|")
    for frac in args.fractions:
        print(f"| {frac:g} | " + " | ".join(f"{results[(n, frac)]['delta1']:.4f}" for n in VARIANTS) + " | "
              + " | ".join(f"{results[(n, frac)]['abs_rel']:.4f}" for n in VARIANTS) + " |")
    line_plot(os.path.join(args.out, "ubn_label_fraction.png"),
              {n: (args.fractions, [results[(n, f)]["delta1"] for f in args.fractions]) for n in VARIANTS},
              title="procedural depth: delta<1.25 vs labeled fraction (cf. thesis Fig. 2.6)",
              xlabel="labeled fraction", ylabel="delta<1.25", logx=True)
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump([{"variant": n, "fraction": fr, **r} for (n, fr), r in results.items()], f, indent=1)


if __name__ == "__main__":
    main()
