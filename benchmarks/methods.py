#!/usr/bin/env python
"""How do the SSL methods of selfsup/ compare at the same budget?

Pretrains every registered method with train_ssl.py, one after the other in one invocation, at
CPU scale on CIFAR-10 (the ImageFolder copy beside the repo; the synthetic set if it is absent),
with the same backbone, optimizer, augmentations, batch and epochs for all of them (the
protocol of WACV'23 Table 2: "the same optimizer and augmentation hyper-parameters for all").
Heads are each method's own, narrowed for the width-16 backbone (METHOD_ARGS below); DINO and
SwAV add 2 local 16 px crops (multi-crop), which shows in their FLOPs per step. Prints kNN
top-1 (k=20) at the start and end, training PFLOPs (the FLOP ledger: momentum encoders and
local crops included), training wall time, and FLOPs per step relative to SimSiam.

    python benchmarks/methods.py                            # ~20 min on 2 CPU cores
    python benchmarks/methods.py --methods simsiam byol --epochs 10
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

from cpu_scale import REPO, train_ssl_args

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


def run_method(name, args):
    extra = [a.format(warm=args.epochs * 0.3) for a in METHOD_ARGS[name]]
    with tempfile.TemporaryDirectory() as out:
        cmd = [sys.executable, "train_ssl.py"] + common_args(args) + [f"method.name={name}"] + extra + [f"output_dir={out}"]
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
    p.add_argument("--per-class", type=int, default=500)
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    res = {}
    for name in args.methods:
        res[name] = run_method(name, args)
        print(f"  {name}: done ({res[name]['wall']:.0f} s)", file=sys.stderr, flush=True)
    ref = res.get("simsiam")
    print(f"CIFAR-stem ResNet-18 width {args.width}, {args.per_class} images/class, batch 128, {args.epochs} epochs, "
          f"SGD as yaml/cifar10_simsiam_cpu.yaml, {args.threads} threads, device: cpu")
    print(f"{'method':<12}{'steps':>6}{'loss':>16}{'kNN % start->end':>19}{'PFLOPs':>9}{'wall s':>8}"
          f"{'FLOPs/step vs SimSiam':>23}{'wall vs SimSiam':>17}")
    for name, r in res.items():
        rel = f"{r['pflops'] / r['steps'] / (ref['pflops'] / ref['steps']):.2f}" if ref else "-"
        relw = f"{r['wall'] / r['steps'] / (ref['wall'] / ref['steps']):.2f}" if ref else "-"
        print(f"{name:<12}{r['steps']:>6}{r['loss0']:>8.3f}->{r['loss']:<7.3f}{r['knn0']:>8.2f} -> {r['knn']:<6.2f}"
              f"{r['pflops']:>9.4f}{r['wall']:>8.0f}{rel:>23}{relw:>17}")


if __name__ == "__main__":
    main()
