#!/usr/bin/env python
"""Supervised image classification with uniform sampling or Fast Online Minibatch Selection
(thesis 2023 ch. 4, Algorithms 2-3; accel/selection.py).

    python train_supervised.py                      # quick CPU example on the synthetic data
    torchrun --nproc_per_node=8 train_supervised.py --config yaml/selection/imagenet_resnet50_fast.yaml data.root=/data/imagenet

With select.method != uniform, each step loads b-bar = select.large_batch_factor x b images,
computes their per-sample losses without gradient on copies down-sampled to select.resolution,
picks b of them (Eq. 4.4 for `fast`), and trains on those at full resolution; the warm-up and the
cool-down use the first b images of the (uniformly drawn) large batch. Each rank ranks its own
shard (see accel/selection.py). Training length counts training steps of b images, so uniform and
selection runs of the same epochs take the same number of steps. Re-running the same command
resumes from output_dir/checkpoint.pt.

Semi-supervised (thesis ch. 2 applied to classification): ubn.labels_per_class=N keeps the labels
of the first N training images of each class; the labeled batches cycle through them, and an
epoch stays one pass's worth of steps over all training images. ubn.enabled=true adds an
unlabeled batch from all training images and trains with UBN's two steps (accel/ubn.py); its
step-1 forward is counted in train_pflops.
    python train_supervised.py --config yaml/ubn/cifar10_1000labels_ubn.yaml
"""
import math
import os
import signal
import sys
import time

import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP

from accel import schedules, selection, ubn
from accel.hard_augment import frozen_bn_statistics
from common import checkpoint, dist
from common.config import ConfigError, parse_cli
from common.flops import FlopLedger
from common.logger import RunLogger, write_run_files
from common.optim import build_optimizer
from data import DataError, build_eval_loader, build_images, build_train_loader
from data.augment import DeviceAugment
from data.multiview import sample_generator
from evaluation.knn import topk_accuracy
from models.batchnorm import convert_sync_bn
from models.classifier import build_classifier, load_pretrained_backbone
from train_ssl import config_defaults

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_CONFIG = os.path.join(HERE, "yaml", "selection", "quickstart.yaml")
METHODS = ("uniform", "fast", "greedy", "selective_backprop")


class LabeledSubset:
    """The first `per_class` images of each class of `images` (same `load` interface)."""

    def __init__(self, images, per_class):
        count, self.idx = {}, []
        for i, t in enumerate(images.targets):
            if count.get(t, 0) < per_class:
                self.idx.append(i)
                count[t] = count.get(t, 0) + 1
        self.images, self.targets = images, [images.targets[i] for i in self.idx]
        self.description = f"{len(self.idx)} labeled of {images.description}"

    def __len__(self):
        return len(self.idx)

    def load(self, i):
        return self.images.load(self.idx[i])


def cycle(loader, sampler, start_step):
    """The loader's batches forever, positioned at `start_step` (exact resume)."""
    epoch, skip = divmod(start_step, sampler.steps_per_epoch)
    while True:
        sampler.set_epoch(epoch, skip)
        yield from loader
        epoch, skip = epoch + 1, 0


def parse_config(argv):
    return parse_cli(argv, config_defaults(), DEFAULT_CONFIG, __doc__)  # one defaults tree for every script


@torch.no_grad()
def selection_losses(model, images, labels, resolution):
    """Eq. 4.3: per-sample losses of the large batch at the selection resolution, no autograd;
    training-mode BN (batch statistics, as Algorithm 3's pass) with running statistics untouched."""
    small = F.interpolate(images, size=(resolution, resolution), mode="bilinear", antialias=True, align_corners=False)
    with frozen_bn_statistics(model):
        return F.cross_entropy(model(small), labels, reduction="none")


@torch.no_grad()
def evaluate(model, loader, augment, device, num_classes):
    model.eval()
    logits, labels = [], []
    for b in loader:
        logits.append(model(augment.eval_batch(b["image"].to(device))).float())
        labels.append(b["label"].to(device))
    model.train()
    logits, labels = dist.all_gather_variable(torch.cat(logits)), dist.all_gather_variable(torch.cat(labels))
    return topk_accuracy(logits, labels, ks=(1, min(5, num_classes)))


def main(cfg):
    device = dist.init_distributed(cfg.train.device)
    world, is_main, sel = dist.world_size(), dist.is_main(), cfg.select
    if cfg.train.batch_size % world:
        raise ConfigError(f"train.batch_size={cfg.train.batch_size} is not divisible by the {world} ranks")
    if sel.method not in METHODS:
        raise ConfigError(f"select.method '{sel.method}' is not one of {', '.join(METHODS)}")
    if sel.method == "fast" and sel.large_batch_factor < 1 + sel.beta:
        raise ConfigError(f"select.large_batch_factor={sel.large_batch_factor} must be >= 1 + select.beta "
                          f"({1 + sel.beta}) for Eq. 4.4 selection")
    if cfg.ubn.enabled and sel.method != "uniform":
        raise ConfigError(f"ubn.enabled=true needs select.method=uniform, not '{sel.method}'")
    u_batch = cfg.ubn.unlabeled_batch_size or cfg.train.batch_size
    if cfg.ubn.enabled and u_batch % world:
        raise ConfigError(f"ubn.unlabeled_batch_size={u_batch} is not divisible by the {world} ranks")
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    torch.manual_seed(cfg.train.seed)
    local_b = cfg.train.batch_size // world
    local_bbar = local_b if sel.method == "uniform" else int(math.ceil(sel.large_batch_factor * local_b))

    train_images, val_images, num_classes = build_images(cfg.data, cfg.train.seed)
    labeled_images = LabeledSubset(train_images, cfg.ubn.labels_per_class) if cfg.ubn.labels_per_class > 0 else train_images
    loader, sampler = build_train_loader(labeled_images, cfg, local_bbar, device, num_views=1)
    val_loader = build_eval_loader(val_images, cfg, max(local_b, 64), device)
    augment = DeviceAugment(cfg.augment)
    resolution = cfg.augment.resolution or cfg.data.crop_size

    model = build_classifier(cfg.model, num_classes)
    if cfg.model.pretrained:  # full fine-tuning of a self-supervised backbone (NeurIPS'24 "FT")
        load_pretrained_backbone(model, cfg.model.pretrained)
    if cfg.train.sync_bn and world > 1:
        model = convert_sync_bn(model, device)
    model.to(device)
    ddp = DDP(model, device_ids=[device.index] if device.type == "cuda" else None) if world > 1 else model

    # training length in steps of b images; the loader's epochs are of b-bar-image batches
    steps_per_epoch = len(train_images) // cfg.train.batch_size
    total_steps = cfg.train.epochs * steps_per_epoch
    loader_steps = sampler.steps_per_epoch
    lr = cfg.optim.lr * (cfg.train.batch_size / 256 if cfg.optim.lr_scaling == "linear" else 1.0)
    optimizer = build_optimizer(cfg.optim.name, [{"params": model.parameters()}], lr, cfg.optim.momentum,
                                cfg.optim.weight_decay)
    lr_schedule, momentum_schedule = schedules.build_lr_schedule(cfg.optim, total_steps, steps_per_epoch, lr)
    ledger = FlopLedger()
    sb = selection.SelectiveBackprop(sel.sb_history, sel.beta)

    os.makedirs(cfg.output_dir, exist_ok=True)
    ckpt_path = os.path.join(cfg.output_dir, "checkpoint.pt")
    step, best = 0, 0.0
    if os.path.exists(ckpt_path):
        state = checkpoint.load(ckpt_path)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        ledger.load_state_dict(state["ledger"])
        checkpoint.set_rng_state(state["rng"])
        sb.recent = state["sb_recent"]
        step, best = state["step"], state["best_top1"]
        if is_main:
            print(f"resuming from {ckpt_path} at step {step}/{total_steps}", flush=True)
    commit = checkpoint.git_commit()
    logger = RunLogger(cfg.output_dir, is_main)
    if is_main:
        write_run_files(cfg.output_dir, cfg, git_commit=commit, world_size=world)
        logger.print(f"{cfg.model.arch}, select.method={sel.method}{', UBN' if cfg.ubn.enabled else ''} on "
                     f"{labeled_images.description}; {world} rank(s) x {local_b} (large batch {local_bbar}"
                     f"{f', unlabeled {u_batch // world}' if cfg.ubn.enabled else ''}), {total_steps} steps, lr {lr:g}; "
                     f"output {cfg.output_dir}")

    def save():
        if is_main:
            checkpoint.save_atomic({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                                    "ledger": ledger.state_dict(), "rng": checkpoint.rng_state(), "step": step,
                                    "best_top1": best, "sb_recent": sb.recent, "config": cfg.to_dict(),
                                    "git_commit": commit, "world_size": world}, ckpt_path)

    unlabeled = None
    if cfg.ubn.enabled:   # all training images, the labeled ones included (thesis Fig. 2.1: dataset U)
        u_loader, u_sampler = build_train_loader(train_images, cfg, u_batch // world, device, num_views=1)
        unlabeled = cycle(u_loader, u_sampler, step)

    stop = {"requested": False}
    signal.signal(signal.SIGTERM, lambda *_: stop.update(requested=True))
    eval_every = max(1, int(round(sel.eval_every_epochs * steps_per_epoch)))
    loss_sum, window = torch.zeros((), device=device), {"t": time.perf_counter(), "steps": 0, "selected": 0}
    reached = None
    while step < total_steps and reached is None:
        sampler.set_epoch(step // loader_steps, skip_steps=step % loader_steps)
        model.train()
        for batch in loader:
            for g in optimizer.param_groups:
                g["lr"] = float(lr_schedule[step])
                if momentum_schedule is not None:
                    g["momentum"] = float(momentum_schedule[step])
            images = augment(batch["views"].to(device, non_blocking=True), batch["rand"].to(device, non_blocking=True),
                             cfg.augment.magnitude, resolution)[0]
            labels = batch["label"].to(device, non_blocking=True)
            uniform = sel.method == "uniform" or selection.uniform_phase(step, total_steps, sel.warmup_steps,
                                                                         sel.cooldown_fraction)
            if uniform:
                idx = torch.arange(local_b, device=device)   # the large batch is already a uniform draw
            else:
                with ledger.count(("select", sel.resolution, local_bbar), kind="selection"):
                    losses = selection_losses(model, images, labels, sel.resolution)
                g = sample_generator(cfg.train.seed, step, dist.rank())
                if sel.method == "fast":
                    idx = selection.select(losses, local_b, sel.beta, g)
                elif sel.method == "greedy":
                    idx = selection.select_greedy(losses, local_b)
                else:  # Selective-Backprop keeps a variable number; at most b are trained on
                    idx = sb.select(losses, g)[:local_b]
                    idx = idx if len(idx) else losses.argmax().view(1)
            x, y = images[idx], labels[idx]
            u = None
            if unlabeled is not None:   # UBN: statistics of {x, u}, then forward-backward of x alone
                ub = next(unlabeled)
                u = augment(ub["views"].to(device, non_blocking=True), ub["rand"].to(device, non_blocking=True),
                            cfg.augment.magnitude, resolution)[0]
            with ledger.count(("train", resolution, len(idx)) + ((len(u),) if u is not None else ())):
                out = ubn.forward(ddp, x, u, cfg.ubn.grad_through_stats) if u is not None else ddp(x)
                loss = F.cross_entropy(out, y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
            optimizer.step()
            step += 1
            loss_sum += loss.detach().float()
            window["steps"] += 1
            window["selected"] += 0 if uniform else 1

            if step % cfg.train.log_every == 0 or step == total_steps:
                flag = torch.tensor([float(stop["requested"])], device=device)
                stop["requested"] = dist.all_reduce_sum(flag).item() > 0
                train_f, select_f = ledger.global_total("train"), ledger.global_total("selection")
                logger.log({"epoch": step / steps_per_epoch, "loss": dist.all_reduce_mean(loss_sum / window["steps"]).item(),
                            "lr": float(lr_schedule[step - 1]), "selection_steps": window["selected"],
                            "images_per_s": window["steps"] * cfg.train.batch_size / (time.perf_counter() - window["t"]),
                            "train_pflops": train_f / 1e15, "selection_pflops": select_f / 1e15,
                            "selection_overhead": select_f / max(train_f, 1.0)}, step)
                loss_sum.zero_()
                window.update(t=time.perf_counter(), steps=0, selected=0)
            if step % eval_every == 0 or step == total_steps:
                top1, top5 = evaluate(model, val_loader, augment, device, num_classes)
                best = max(best, top1)
                logger.log({"epoch": step / steps_per_epoch, "top1": top1, "top5": top5}, step)
                logger.print(f"step {step}/{total_steps}: val top-1 {top1:.2f}%  top-5 {top5:.2f}%")
                if sel.target_top1 > 0 and top1 >= sel.target_top1:
                    reached = step
            if cfg.train.ckpt_every_steps and step % cfg.train.ckpt_every_steps == 0:
                save()
            if stop["requested"] or step == cfg.train.stop_at_step:
                save()
                logger.print(f"stopped at step {step}; re-run the same command to resume")
                logger.close()
                return
            if step >= total_steps or reached is not None:
                break
        save()
    summary = {"best_top1": best, "steps": step, "train_pflops": ledger.global_total("train") / 1e15,
               "selection_pflops": ledger.global_total("selection") / 1e15}
    if sel.target_top1 > 0:
        summary["steps_to_target"] = reached  # None: the target was not reached
    logger.log(summary, step)
    reached_text = f"target {sel.target_top1}% reached at step {reached}; " if reached else ""
    logger.print(f"best val top-1 {best:.2f}% after {step} steps; {reached_text}"
                 f"{summary['train_pflops']:.4g} training + {summary['selection_pflops']:.4g} selection PFLOPs")
    logger.close()


if __name__ == "__main__":
    try:
        main(parse_config(sys.argv[1:]))
    except (ConfigError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    finally:
        dist.cleanup()
