#!/usr/bin/env python
"""How long does optimizer.step() take, per implementation? Milliseconds per step of SGD with
momentum, AdamW and LARS over the parameters of a ResNet-50 and a ViT-S/16 backbone (this repo's
models/, random gradients), for each kernel choice torch offers: the per-parameter loop
(foreach=False; for LARS the loop common/optim.py had before its foreach rewrite), foreach
(multi-tensor ops; LARS as it is now) and fused (one kernel per update; SGD and AdamW only, on the
devices torch has it for). The variants of one optimizer are timed side by side in one run, in
alternation, and the median over rounds is reported, so a shared machine's load hits all alike.

    python benchmarks/optimizer_step.py                     # CPU, 2 threads, ~1 min
    python benchmarks/optimizer_step.py --device cuda --rounds 50
    python benchmarks/optimizer_step.py --models vit_s16 --optimizers lars --rounds 5

speed-up = per-parameter ms / ms of the variant (> 1: faster than the loop). What build_optimizer
picks for a device: common/optim.py implementation().
"""
import argparse
import os
import statistics
import sys
import time

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from common.optim import LARS, split_decay  # noqa: E402
from models.resnet import ResNet  # noqa: E402
from models.vit import ViT  # noqa: E402

MODELS = {"resnet50": lambda: ResNet("resnet50"), "vit_s16": lambda: ViT("vit_s16")}
VARIANTS = ("per-parameter", "foreach", "fused")


class PerParameterLARS(LARS):
    """LARS.step before the foreach rewrite: one parameter at a time (the maths of LARS.step;
    tests/test_optim.py checks the two agree)."""

    @torch.no_grad()
    def step(self, closure=None):
        for g in self.param_groups:
            for p in g["params"]:
                if p.grad is None:
                    continue
                d = p.grad
                if not g["lars_exclude"]:
                    if g["weight_decay"]:
                        d = d.add(p, alpha=g["weight_decay"])
                    w_norm, d_norm = torch.norm(p), torch.norm(d)
                    trust = torch.where((w_norm > 0) & (d_norm > 0), g["eta"] * w_norm / d_norm,
                                        torch.ones_like(w_norm))
                    d = d.mul(trust)
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.clone(d).detach()
                else:
                    state["momentum_buffer"].mul_(g["momentum"]).add_(d)
                p.add_(state["momentum_buffer"], alpha=-g["lr"])


def build(name, variant, params):
    """The optimizer `name` in implementation `variant`, with build_optimizer's groups and typical
    hyper-parameters; None where torch has no such implementation."""
    kernel = {"per-parameter": dict(foreach=False), "foreach": dict(foreach=True), "fused": dict(fused=True)}[variant]
    if name == "sgd":
        return torch.optim.SGD(params, lr=0.05, momentum=0.9, weight_decay=1e-4, **kernel)
    if name == "adamw":
        groups = [dict(g, weight_decay=0.0) if g.get("no_decay") else g
                  for g in split_decay([{"params": params}], "no_decay")]
        return torch.optim.AdamW(groups, lr=1e-3, weight_decay=0.05, **kernel)
    if variant == "fused":
        return None
    cls = PerParameterLARS if variant == "per-parameter" else LARS
    return cls(split_decay([{"params": params}], "lars_exclude"), lr=0.3, momentum=0.9, weight_decay=1e-6)


def time_variants(name, params, device, rounds):
    """Median ms per step of each variant, stepped in turn each round (after 2 warm-up steps,
    which also create the optimizer state). None: not available on this device."""
    opts = {}
    for v in VARIANTS:
        try:
            opts[v] = build(name, v, params)
            if opts[v] is not None:
                for _ in range(2):
                    opts[v].step()
        except RuntimeError:   # e.g. a fused kernel torch lacks for this device
            opts[v] = None
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    times = {v: [] for v, o in opts.items() if o is not None}
    for _ in range(rounds):
        for v in times:
            sync()
            t = time.perf_counter()
            opts[v].step()
            sync()   # the step's kernels are asynchronous on a GPU: wait for them before reading the clock
            times[v].append(1e3 * (time.perf_counter() - t))
    return {v: statistics.median(times[v]) if v in times else None for v in VARIANTS}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--models", nargs="+", choices=sorted(MODELS), default=["resnet50", "vit_s16"])
    p.add_argument("--optimizers", nargs="+", choices=["sgd", "adamw", "lars"], default=["sgd", "adamw", "lars"])
    p.add_argument("--rounds", type=int, default=9)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    rows = []
    for model_name in args.models:
        torch.manual_seed(0)
        params = [q for q in MODELS[model_name]().to(device).parameters() if q.requires_grad]
        for q in params:
            q.grad = 1e-3 * torch.randn_like(q)
        n = sum(q.numel() for q in params)
        for name in args.optimizers:
            rows.append((f"{model_name} ({len(params)} tensors, {n / 1e6:.1f} M)", name,
                         time_variants(name, params, device, args.rounds)))
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu, {args.threads} threads"
    where += f", load average {os.getloadavg()[0]:.1f}"   # a shared machine's other jobs slow every variant
    print(f"optimizer.step() in ms, median of {args.rounds} rounds, float32, torch {torch.__version__}, {where}")
    print(f"{'parameters':<33}{'optimizer':<10}{'per-param':>10}{'foreach':>10}{'fused':>10}"
          f"{'foreach x':>11}{'fused x':>9}")
    for model_name, name, t in rows:
        def ms(v):
            return f"{t[v]:>10.2f}" if t[v] is not None else f"{'-':>10}"

        def speedup(v, width):
            return f"{t['per-parameter'] / t[v]:>{width}.2f}" if t[v] is not None else f"{'-':>{width}}"
        print(f"{model_name:<33}{name:<10}{ms('per-parameter')}{ms('foreach')}{ms('fused')}"
              f"{speedup('foreach', 11)}{speedup('fused', 9)}")


if __name__ == "__main__":
    main()
