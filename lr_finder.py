#!/usr/bin/env python
"""LR range test (Smith 2017; WACV'23 supplementary C) for any train_ssl.py config.

    python lr_finder.py --config yaml/imagenette_simsiam.yaml data.root=/data/imagenette2
    python lr_finder.py lr_finder.steps=100 lr_finder.val_samples=512     # quickstart data, CPU

The learning rate rises exponentially from lr_finder.lr_start to lr_finder.lr_end (default 1e-3
to 1 in 200 steps). At every step the training loss and the method's loss on a fixed held-out
batch (views drawn once) are recorded and smoothed; the test stops early once the training loss
diverges. Suggested range: min = where the smoothed validation loss has made 10 % of its total
drop (it "starts to decrease"), max = where it is lowest (past it, it starts to diverge).
Parameter groups with fix_lr=True (SimSiam's predictor with fix_pred_lr) are not swept: they keep
the base learning rate of the config (optim.lr, scaled as train_ssl.py scales it), as in training.
Writes OUTPUT_DIR/lr_finder.csv, lr_finder.png and lr_finder.json.
"""
import csv
import json
import math
import os
import sys

import numpy as np
import torch

from common import dist, run, schedules
from common.config import parse_cli
from common.optim import build_optimizer
from common.plot import line_plot
from data import build_images, build_train_loader, device_batch
from data.augment import DeviceAugment, train_resolution
from models.batchnorm import frozen_bn_statistics
from selfsup.build import build_model
from selfsup.config import lr_finder_defaults

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_CONFIG = os.path.join(HERE, "yaml", "quickstart.yaml")   # train_ssl.py's default run


def parse_config(argv):
    return parse_cli(argv, lr_finder_defaults(), DEFAULT_CONFIG, __doc__)


def exponential_lrs(lr_start, lr_end, steps):
    """lr_t = lr_start (lr_end / lr_start)^(t / (steps - 1))."""
    return lr_start * (lr_end / lr_start) ** (np.arange(steps) / max(steps - 1, 1))


def ema(values, beta):
    """Bias-corrected exponential moving average (as in Adam)."""
    out, avg = [], 0.0
    for i, v in enumerate(values):
        avg = beta * avg + (1 - beta) * v
        out.append(avg / (1 - beta ** (i + 1)))
    return np.array(out)


def diverged(smoothed, factor, margin):
    """The smoothed loss is not finite, or above its best by (factor - 1) |best| (at least
    `margin`: SSL losses such as SimSiam's are negative and bounded)."""
    best, now = float(np.min(smoothed)), float(smoothed[-1])
    if not math.isfinite(now):
        return True
    return now > best + max(margin, (factor - 1) * abs(best))


def suggest(lrs, smoothed_val):
    """(min_lr, max_lr): where the smoothed validation loss has made 10 % of its drop, and its minimum."""
    lrs, v = np.asarray(lrs), np.asarray(smoothed_val)
    i_min = int(np.nanargmin(v))
    drop = v[0] - v[i_min]
    i_start = int(np.argmax(v[: i_min + 1] <= v[0] - 0.1 * drop)) if drop > 0 else 0
    return float(lrs[i_start]), float(lrs[i_min])


def base_lr(cfg):
    """optim.lr as train_ssl.py's schedules use it (common/schedules.base_lr)."""
    return schedules.base_lr(cfg.optim, cfg.train.batch_size)


def set_lr(optimizer, lr, fixed_lr):
    """The swept lr on every group, except fix_lr groups, which keep fixed_lr; times each group's lr_mult."""
    for g in optimizer.param_groups:
        g["lr"] = (fixed_lr if g.get("fix_lr") else lr) * g.get("lr_mult", 1.0)


def range_test(train_step, val_loss, lrs, beta=0.9, factor=4.0, margin=0.5):
    """Run train_step(lr) -> loss and val_loss() -> loss for each lr until the training loss
    diverges. Returns dict of lists: lr, train, val, train_smooth, val_smooth."""
    rec = {"lr": [], "train": [], "val": []}
    for lr in lrs:
        rec["lr"].append(float(lr))
        rec["train"].append(float(train_step(float(lr))))
        rec["val"].append(float(val_loss()))
        if len(rec["lr"]) >= 10 and diverged(ema(rec["train"], beta), factor, margin):
            break
    rec["train_smooth"] = ema(rec["train"], beta).tolist()
    rec["val_smooth"] = ema(rec["val"], beta).tolist()
    return rec


def main(cfg):
    rt = run.setup(cfg.train)
    device, world, lf = rt.device, rt.world, cfg.lr_finder
    local_batch = cfg.train.batch_size // world

    train_images, val_images, _ = build_images(cfg.data, cfg.train.seed)
    loader, sampler = build_train_loader(train_images, cfg, local_batch, device)
    augment = DeviceAugment(cfg.augment)
    resolution = train_resolution(cfg)
    # the fixed held-out batch: views of the first val_samples validation images, drawn once
    n_val = min(lf.val_samples, len(val_images)) // world
    val_loader, val_sampler = build_train_loader(val_images, cfg, max(1, n_val), device)
    val_sampler.shuffle = False
    val_batch = device_batch(next(iter(val_loader)), device)   # (JPEG decode here with data.decode=device)
    val_views = augment(val_batch["views"], val_batch["rand"], cfg.augment.magnitude, resolution)

    model, blockwise = build_model(cfg)
    model.to(device)
    ddp = run.wrap_ddp(model, rt, find_unused_parameters=blockwise)
    optimizer = build_optimizer(cfg.optim.name, model.param_groups(), lf.lr_start, cfg.optim.momentum,
                                cfg.optim.weight_decay, device=device)
    model.prepare(lf.steps, sampler.steps_per_epoch)
    fixed_lr = base_lr(cfg)                      # for fix_lr groups only
    batches = iter(())
    epoch, step = 0, 0

    def train_step(lr):
        nonlocal batches, epoch, step
        batch = next(batches, None)
        if batch is None:
            sampler.set_epoch(epoch)
            epoch += 1
            batches = iter(loader)
            batch = next(batches)
        set_lr(optimizer, lr, fixed_lr)
        model.begin_step(step)
        batch = device_batch(batch, device)
        views = augment(batch["views"], batch["rand"], cfg.augment.magnitude, resolution)
        local_views = None
        if "local_views" in batch:
            local_views = augment(batch["local_views"], batch["local_rand"], cfg.augment.magnitude, 0, local=True)
        loss = ddp(views, local_views=local_views)["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        model.after_backward(step)
        optimizer.step()
        model.on_step(step)
        step += 1
        return dist.all_reduce_mean(loss.detach().float().view(1)).item()

    @torch.no_grad()
    def val_loss():
        # batch statistics, as in training, without moving the BN running statistics
        with frozen_bn_statistics(model):
            loss = model(val_views)["loss"].float().view(1)
        return dist.all_reduce_mean(loss).item()

    lrs = exponential_lrs(lf.lr_start, lf.lr_end, lf.steps)
    rec = range_test(train_step, val_loss, lrs, lf.smoothing, lf.diverge_factor, lf.diverge_margin)
    lo, hi = suggest(rec["lr"], rec["val_smooth"])
    if dist.is_main():
        os.makedirs(cfg.output_dir, exist_ok=True)
        base = os.path.join(cfg.output_dir, "lr_finder")
        with open(base + ".csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["step", "lr", "train_loss", "val_loss", "train_smooth", "val_smooth"])
            for i in range(len(rec["lr"])):
                w.writerow([i, rec["lr"][i], rec["train"][i], rec["val"][i], rec["train_smooth"][i], rec["val_smooth"][i]])
        with open(base + ".json", "w") as f:
            json.dump({"min_lr": lo, "max_lr": hi, "steps_run": len(rec["lr"]), "steps": lf.steps,
                       "stopped_early": len(rec["lr"]) < lf.steps}, f, indent=1)
        line_plot(base + ".png", {"train (smoothed)": (rec["lr"], rec["train_smooth"]),
                                  "validation (smoothed)": (rec["lr"], rec["val_smooth"])},
                  title=f"LR range test: {cfg.method.name}, {train_images.description}", xlabel="learning rate",
                  ylabel="loss", logx=True, vlines=[(lo, "min"), (hi, "max")])
        print(f"suggested learning rate range: {lo:.3g} to {hi:.3g} (absolute, at batch {cfg.train.batch_size}); "
              f"{len(rec['lr'])}/{lf.steps} steps; wrote {base}.csv/.png/.json")


if __name__ == "__main__":
    run.cli(lambda: main(parse_config(sys.argv[1:])))
