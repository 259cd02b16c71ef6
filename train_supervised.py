#!/usr/bin/env python
"""Supervised image classification with uniform sampling or Fast Online Minibatch Selection
(thesis 2023 ch. 4, Algorithms 2-3; accel/minibatch_selection.py).

    python train_supervised.py                      # quick CPU example on the synthetic data
    torchrun --nproc_per_node=8 train_supervised.py --config yaml/selection/imagenet_resnet50_fast.yaml data.root=/data/imagenet

With select.method != uniform, each step loads b-bar = select.large_batch_factor x b images,
computes their per-sample losses without gradient on copies down-sampled to select.resolution,
picks b of them (Eq. 4.4 for `fast`), and trains on those at full resolution; the warm-up and the
cool-down use the first b images of the (uniformly drawn) large batch. Each rank ranks its own
shard (see accel/minibatch_selection.py). Training length counts training steps of b images, so uniform and
selection runs of the same epochs take the same number of steps. Re-running the same command
resumes from output_dir/checkpoint.pt.

Semi-supervised (thesis ch. 2 applied to classification): ubn.labels_per_class=N keeps the labels
of the first N training images of each class; the labeled batches cycle through them, and an
epoch stays one pass's worth of steps over all training images. ubn.enabled=true adds an
unlabeled batch from all training images and trains with UBN's two steps (models/ubn.py); its
step-1 forward is counted in train_pflops.
    python train_supervised.py --config yaml/ubn/cifar10_1000labels_ubn.yaml
"""
import math
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F

from accel import minibatch_selection as selection
from common import checkpoint, dist, host_sync, precision, rng, run, schedules
from common import plan as planning
from common.config import SHARED, ConfigError, compose, load_config, parse_cli
from common.flops import FlopLedger
from common.logger import LossWindow
from common.optim import build_optimizer
from common.run_length import RunLength
from data import LabeledSubset, build_eval_loader, build_images, build_train_loader, device_batch
from data.augment import DeviceAugment, train_resolution
from evaluation.knn import topk_accuracy
from models import ubn
from models import SIZES as VIT_ARCHS
from models.batchnorm import convert_sync_bn, frozen_bn_statistics
from models.classifier import build_classifier, load_pretrained_backbone

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_CONFIG = os.path.join(HERE, "yaml", "selection", "quickstart.yaml")
METHODS = ("uniform", "fast", "greedy", "selective_backprop")

# train_supervised.py's own sections; with the shared ones (common/config.py) they make its tree.
SUPERVISED_MODEL = {
    # train_supervised.py: start the classifier's backbone from a train_ssl.py checkpoint (its
    # "backbone" entry: the method's eval_backbone) -- full fine-tuning (FT) of a pretrained net
    "pretrained": None,
}
SELECT = {
    # train_supervised.py: Fast Online Minibatch Selection (thesis ch. 4, accel/minibatch_selection.py).
    # Each step loads b-bar = large_batch_factor x train.batch_size images, ranks their losses
    # at `resolution` without gradient, and trains on train.batch_size of them at full resolution.
    "method": "uniform",          # uniform | fast (Eq. 4.4) | greedy (top-b by loss) | selective_backprop
    "beta": 1.0,                  # hardness of Eq. 4.4; 0 = uniform
    "large_batch_factor": 2.0,    # b-bar / b; at least 1 + beta for `fast`
    "resolution": 96,             # r-hat, the selection pass's resolution
    "warmup_steps": 10000,        # uniform sampling before this step ...
    "cooldown_fraction": 0.1,     # ... and in this last fraction of training
    "sb_history": 1024,           # Selective-Backprop: number of recent losses for the percentile
    "target_top1": 0.0,           # > 0: stop once validation top-1 reaches it and report the steps (xTS)
    "eval_every_epochs": 1.0,     # validation top-1 every this many epochs
}

UBN = {
    # train_supervised.py: semi-supervised classification with Unsupervised Batch Normalization
    # (thesis ch. 2, Fig. 2.1 / Eq. 2.4, models/ubn.py; the thesis's future work, sec. 5.2.1).
    "labels_per_class": 0,        # >0: only the first N training images of each class keep their label
    "enabled": False,             # true: BN statistics of labeled + unlabeled batch (UBN); false: BN
    "unlabeled_batch_size": 0,    # global unlabeled batch drawn from all training images; 0 = train.batch_size
    "grad_through_stats": False,  # false: step 1's statistics are constants in step 2 (models/ubn.py)
}

# This script's tree: the shared sections (common/config.py) and its own. A key it does not read
# (method.*, accel.*, interloss.*, knn.*) is an unknown key here.
SUPERVISED_DEFAULTS = compose(SHARED, model=SUPERVISED_MODEL, select=SELECT, ubn=UBN)


def parse_config(argv):
    return parse_cli(argv, SUPERVISED_DEFAULTS, DEFAULT_CONFIG, __doc__)


def plan(cfg, config_file=None, baseline=True, count_flops=True):
    """--plan (common/plan.py): steps of b images for the dataset paper.dataset names, the lr
    stages, analytical training PFLOPs (counted on meta tensors) and the selection passes'
    PFLOPs (Eq. 4.3's forward of b-bar images at r-hat on every step outside warm-up and
    cool-down), and the speed-up against paper.baseline."""
    sel = cfg.select
    n_images, source = planning.dataset_size(cfg)
    steps_per_epoch = n_images // cfg.train.batch_size
    if steps_per_epoch == 0:
        raise ConfigError(f"train.batch_size={cfg.train.batch_size} exceeds the {n_images} training images")
    total = RunLength.of_epochs(cfg.train.epochs, steps_per_epoch).total_steps
    res, b = train_resolution(cfg), cfg.train.batch_size
    classes = planning.CLASSES.get((cfg.get("paper") or {}).get("dataset"), 10)

    def count(r, backward):
        def fn(model, x):
            out = model(x).sum()
            if backward:
                out.backward()
        return planning.flops(("sup", str(cfg.model), classes, r, backward), fn, lambda device: setup(r, device)) / 2

    def setup(r, device):
        with torch.device(device):
            return build_classifier(cfg.model, classes), planning.inputs(1, 2, r, device)[0]

    t = np.arange(total)
    phase = (np.zeros(total, dtype=int) if sel.method == "uniform" else
             (~((t < sel.warmup_steps) | (t >= total - int(round(sel.cooldown_fraction * total))))).astype(int))
    ranked = int(phase.sum())   # selection.uniform_phase over all steps, vectorised
    b_bar = int(math.ceil(sel.large_batch_factor * b))
    schedules.base_lr(cfg.optim, b)   # optim.lr_scaling checked here as in the run (the stages show lr / base)
    lr, _ = schedules.build_lr_schedule(cfg.optim, total, steps_per_epoch, 1.0)
    out = {"file": config_file, "script": "train_supervised.py", "arch": cfg.model.arch, "select": sel.method,
           "dataset": source, "train_images": n_images, "global_batch": b, "steps_per_epoch": steps_per_epoch,
           "steps": total, "epochs": float(cfg.train.epochs), "ranked_steps": ranked}
    if count_flops:
        out["train_pflops"] = total * b * count(res, True) / 1e15
        out["selection_pflops"] = ranked * b_bar * count(sel.resolution, False) / 1e15 if ranked else 0.0
    paper = cfg.get("paper") or {}
    if baseline and paper.get("baseline") and config_file:
        base_file = os.path.join(os.path.dirname(config_file), paper["baseline"])
        base = plan(load_config(SUPERVISED_DEFAULTS, base_file), base_file, baseline=False, count_flops=count_flops)
        out.update(baseline=base_file, **planning.speedups(out, base))
    out["stages"] = planning.stage_table(steps_per_epoch, {"lr/base": lr, "ranked": phase}, ["ranked"])
    return out


def cli(argv):
    cfg, args = parse_cli(argv, SUPERVISED_DEFAULTS, DEFAULT_CONFIG, __doc__, plan=True)
    if args.plan:
        return planning.print_plan(plan(cfg, args.config), args.json)
    main(cfg)


def check_config(cfg, rt):
    sel, world = cfg.select, rt.world
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


@torch.no_grad()
def selection_losses(model, images, labels, resolution, amp_dtype=None):
    """Eq. 4.3: per-sample losses of the large batch at the selection resolution, no autograd;
    training-mode BN (batch statistics, as Algorithm 3's pass) with running statistics untouched."""
    small = F.interpolate(images, size=(resolution, resolution), mode="bilinear", antialias=True, align_corners=False)
    with frozen_bn_statistics(model), precision.autocast(images.device, amp_dtype):
        return F.cross_entropy(model(small), labels, reduction="none")


def choose_minibatch(model, images, labels, step, total_steps, cfg, rt, ledger, amp_dtype):
    """Indices of the b images (of the local large batch) to train on, and whether they were
    ranked. Uniform phases (select.method=uniform, warm-up, cool-down) take the first b: the large
    batch is already a uniform draw. Otherwise the losses at r-hat pick them (Algorithm 3)."""
    sel, local_b = cfg.select, cfg.train.batch_size // rt.world
    if sel.method == "uniform" or selection.uniform_phase(step, total_steps, sel.warmup_steps, sel.cooldown_fraction):
        return torch.arange(local_b, device=images.device), False
    with ledger.count(("select", sel.resolution, len(images)), kind="selection"):
        losses = selection_losses(model, images, labels, sel.resolution, amp_dtype)
    g = rng.generator(cfg.train.seed, rng.Stream.MINIBATCH, step, rt.rank)
    if sel.method == "fast":
        return selection.select(losses, local_b, sel.beta, g), True
    return selection.select_greedy(losses, local_b), True


def selective_backprop_batch(model, batches, views, step, total_steps, cfg, rt, sb, buffer, ledger, amp_dtype):
    """Selective-Backprop (Jiang et al. 2019): each loader batch's samples are kept with probability
    CDF(loss)^beta and appended to `buffer`; loader batches are consumed until it holds b (this
    rank's share), and the step trains on exactly b of them, the rest carried to the next step.
    Warm-up and cool-down: the first b of one loader batch, the buffer emptied. Returns (x, y, ranked)."""
    sel, local_b = cfg.select, cfg.train.batch_size // rt.world
    if selection.uniform_phase(step, total_steps, sel.warmup_steps, sel.cooldown_fraction):
        buffer.clear()
        images, labels = views(next(batches))
        buffer.batches += 1
        return images[:local_b], labels[:local_b], False
    while len(buffer) < local_b:
        images, labels = views(next(batches))
        with ledger.count(("select", sel.resolution, len(images)), kind="selection"):
            losses = selection_losses(model, images, labels, sel.resolution, amp_dtype)
        g = rng.generator(cfg.train.seed, rng.Stream.MINIBATCH, buffer.batches, rt.rank)   # per loader batch
        keep = sb.select(losses, g)
        buffer.add(images[keep], labels[keep])
        buffer.batches += 1
    x, y = buffer.take(local_b)
    return x, y, True


def set_schedules(optimizer, step, lr_schedule, momentum_schedule):
    """This step's learning rate and, with F1-CLR / 1-cycle, its anti-phased momentum."""
    for g in optimizer.param_groups:
        g["lr"] = float(lr_schedule[step])
        if momentum_schedule is not None:
            g["momentum"] = float(momentum_schedule[step])


def train_step(cfg, rt, model, ddp, batches, unlabeled, optimizer, scaler, augment, sb, buffer, ledger, step,
               total_steps, amp_dtype):
    """One step on b images chosen from the large batch (Selective-Backprop: from its buffer,
    filled from as many loader batches as it takes); with UBN, BN statistics of {x, u}, then
    forward-backward of x alone. Returns the loss (detached) and whether the batch was ranked."""
    res, dev = train_resolution(cfg), rt.device

    def views(b):   # a loader batch on the device (JPEG decode and crops here with data.decode=device)
        b = device_batch(b, dev)
        return augment(b["views"], b["rand"], cfg.augment.magnitude, res, cfg.train.channels_last)[0], b["label"]

    if cfg.select.method == "selective_backprop":
        x, y, ranked = selective_backprop_batch(model, batches, views, step, total_steps, cfg, rt, sb,
                                                buffer, ledger, amp_dtype)
    else:
        images, labels = views(next(batches))
        idx, ranked = choose_minibatch(model, images, labels, step, total_steps, cfg, rt, ledger, amp_dtype)
        x, y = images[idx], labels[idx]
    u = views(unlabeled)[0] if unlabeled is not None else None
    with ledger.count(("train", res, len(y)) + ((len(u),) if u is not None else ())):
        with precision.autocast(dev, amp_dtype):
            out = ubn.forward(ddp, x, u, cfg.ubn.grad_through_stats) if u is not None else ddp(x)
            loss = F.cross_entropy(out, y)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
    scaler.step(optimizer)   # fp16: skipped when the gradients overflowed; otherwise optimizer.step()
    scaler.update()
    return loss.detach(), ranked


def flop_metrics(ledger):
    """Training and selection PFLOPs so far, over all ranks (a collective: every rank calls it)."""
    train_f, select_f = ledger.global_total("train"), ledger.global_total("selection")
    return {"train_pflops": train_f / 1e15, "selection_pflops": select_f / 1e15,
            "selection_overhead": select_f / max(train_f, 1.0)}


@torch.no_grad()
def evaluate(model, loader, augment, device, num_classes, channels_last=False, amp_dtype=None):
    model.eval()
    logits, labels = [], []
    for b in loader:
        with precision.autocast(device, amp_dtype):
            logits.append(model(augment.eval_batch(b["image"].to(device), channels_last)).float())
        labels.append(b["label"].to(device))
    model.train()
    logits, labels = dist.all_gather_variable(torch.cat(logits)), dist.all_gather_variable(torch.cat(labels))
    return topk_accuracy(logits, labels, ks=(1, min(5, num_classes)))


def main(cfg):
    rt = run.setup(cfg.train)
    check_config(cfg, rt)
    # train.amp=auto -> bf16 / none, channels_last=auto -> on for convolutional nets under autocast
    amp_dtype = precision.resolve(cfg.train, rt.device, conv=cfg.model.arch not in VIT_ARCHS)
    sel, device = cfg.select, rt.device
    local_b = cfg.train.batch_size // rt.world
    local_bbar = local_b if sel.method == "uniform" else int(math.ceil(sel.large_batch_factor * local_b))
    local_u = (cfg.ubn.unlabeled_batch_size or cfg.train.batch_size) // rt.world

    # ---- data: b-bar-image batches of the labeled images; UBN's unlabeled batches from all of them
    train_images, val_images, num_classes = build_images(cfg.data, cfg.train.seed)
    labeled_images = LabeledSubset(train_images, cfg.ubn.labels_per_class) if cfg.ubn.labels_per_class > 0 else train_images
    loader, sampler = build_train_loader(labeled_images, cfg, local_bbar, device, num_views=1)
    if cfg.ubn.enabled:   # thesis Fig. 2.1: dataset U, the labeled images included
        u_loader, u_sampler = build_train_loader(train_images, cfg, local_u, device, num_views=1)
    val_loader = build_eval_loader(val_images, cfg, max(local_b, 64), device)
    augment = DeviceAugment(cfg.augment)

    # ---- model
    model = build_classifier(cfg.model, num_classes)
    if cfg.model.pretrained:  # full fine-tuning of a self-supervised backbone (NeurIPS'24 "FT")
        load_pretrained_backbone(model, cfg.model.pretrained, cfg.model)
    if cfg.train.sync_bn and rt.world > 1:
        model = convert_sync_bn(model, device)
    model.to(device)
    if cfg.train.channels_last:
        model.to(memory_format=torch.channels_last)
    ddp = run.wrap_ddp(model, rt)
    # one training resolution; the selection pass at select.resolution and evaluation add shapes
    compiled = run.Compiled(model, cfg.train, shapes=3)

    # ---- optimizer and schedules: training length in steps of b images (the loader's are b-bar)
    length = RunLength.of_epochs(cfg.train.epochs, len(train_images) // cfg.train.batch_size)
    steps_per_epoch, total_steps = length.steps_per_epoch, length.total_steps
    lr = schedules.base_lr(cfg.optim, cfg.train.batch_size)
    optimizer = build_optimizer(cfg.optim.name, [{"params": model.parameters()}], lr, cfg.optim.momentum,
                                cfg.optim.weight_decay, device=device)
    lr_schedule, momentum_schedule = schedules.build_lr_schedule(cfg.optim, total_steps, steps_per_epoch, lr)
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype is torch.float16)
    ledger = FlopLedger()
    sb = selection.SelectiveBackprop(sel.sb_history, sel.beta)
    buffer = selection.SelectedBuffer()   # Selective-Backprop: selected samples waiting for a full batch

    # ---- resume
    ckpt = checkpoint.Checkpointer(cfg.output_dir, rt, cfg)
    state = ckpt.restore(model=model, optimizer=optimizer, scaler=scaler, ledger=ledger)
    step, best = state.get("step", 0), state.get("best_top1", 0.0)
    if sel.method == "selective_backprop":   # per rank: loss history, selected samples, batches consumed
        selection.restore_selective_backprop(state.get("sb_state"), sb, buffer, rt.rank, rt.world, ckpt.path,
                                             step, rt.device)
    logger = run.start(cfg, rt, ckpt, step,
                       f"{cfg.model.arch}, select.method={sel.method}{', UBN' if cfg.ubn.enabled else ''} on "
                       f"{labeled_images.description}; {rt.world} rank(s) x {local_b} (large batch {local_bbar}"
                       f"{f', unlabeled {local_u}' if cfg.ubn.enabled else ''}), {total_steps} steps, lr {lr:g}; "
                       f"output {cfg.output_dir}")

    def save():   # checkpoint.pt; at the end of every snapshot_every_epochs-th epoch also ckpt_EPOCH.pt
        epoch, every = step // steps_per_epoch, cfg.train.snapshot_every_epochs
        snapshot = every and step % steps_per_epoch == 0 and epoch % every == 0
        extra = {"sb_state": selection.gather_selective_backprop(sb, buffer, rt.world)} \
            if sel.method == "selective_backprop" else {}
        ckpt.save(snapshot=f"ckpt_{epoch:04d}.pt" if snapshot else None, model=model, optimizer=optimizer,
                  scaler=scaler, ledger=ledger, step=step, best_top1=best, **extra)

    # ---- loop
    # Selective-Backprop consumes a variable number of loader batches per step: its own count
    batches = run.stream(loader, sampler, buffer.batches if sel.method == "selective_backprop" else step)
    unlabeled = run.stream(u_loader, u_sampler, step) if cfg.ubn.enabled else None
    stop = run.StopFlag(device, cfg.train.check_every)
    eval_every = max(1, int(round(sel.eval_every_epochs * steps_per_epoch)))
    window, ranked_steps, reached, first = LossWindow(device), 0, None, step
    model.train()
    while step < total_steps and reached is None:
        done = step + 1
        logs = done % cfg.train.log_every == 0 or done == total_steps or done % eval_every == 0
        saves = (done % steps_per_epoch == 0 or done == cfg.train.stop_at_step
                 or (cfg.train.ckpt_every_steps and done % cfg.train.ckpt_every_steps == 0))
        # a step that neither logs, evaluates, saves nor checks reads no device value (Selective-
        # Backprop's buffer is host-side by design: its steps decide on the host how many batches to draw)
        quiet = not (logs or saves or stop.due(done)) and step > first and sel.method != "selective_backprop"
        with host_sync.forbid(device, cfg.train.forbid_sync and quiet):
            set_schedules(optimizer, step, lr_schedule, momentum_schedule)
            u_batch = next(unlabeled) if unlabeled is not None else None
            loss, ranked = train_step(cfg, rt, model, ddp, batches, u_batch, optimizer, scaler, augment, sb, buffer,
                                      ledger, step, total_steps, amp_dtype)
            stop_requested, diverged = stop.check(loss, done, force=logs or saves)
        if diverged:
            raise checkpoint.Diverged(diverged, ckpt.path)
        step = done
        window.add(loss)
        ranked_steps += ranked
        news = compiled.report(step)   # a line when this step compiled new graphs
        if news:
            logger.print(news)

        if step % cfg.train.log_every == 0 or step == total_steps:
            mean_loss, ips = window.flush(cfg.train.batch_size)
            logger.log({"epoch": step / steps_per_epoch, "loss": mean_loss, "lr": float(lr_schedule[step - 1]),
                        "selection_steps": ranked_steps, "images_per_s": ips, **flop_metrics(ledger),
                        **run.memory_metrics(device), **compiled.metrics()}, step)
            ranked_steps = 0
        if step % eval_every == 0 or step == total_steps:
            top1, top5 = evaluate(model, val_loader, augment, device, num_classes, cfg.train.channels_last, amp_dtype)
            best = max(best, top1)
            logger.log({"epoch": step / steps_per_epoch, "top1": top1, "top5": top5}, step)
            logger.print(f"step {step}/{total_steps}: val top-1 {top1:.2f}%  top-5 {top5:.2f}%")
            if sel.target_top1 > 0 and top1 >= sel.target_top1:
                reached = step
        stopping = stop_requested or step == cfg.train.stop_at_step
        if (stopping or reached or step % steps_per_epoch == 0
                or (cfg.train.ckpt_every_steps and step % cfg.train.ckpt_every_steps == 0)):
            save()
        if stopping:
            logger.close()
            raise run.Stopped(step, stop.signum if stop_requested else None)

    log_summary(logger, ledger, sel, best, step, reached)
    logger.close()


def log_summary(logger, ledger, sel, best, step, reached):
    summary = {"best_top1": best, "steps": step, "train_pflops": ledger.global_total("train") / 1e15,
               "selection_pflops": ledger.global_total("selection") / 1e15}
    if sel.target_top1 > 0:
        summary["steps_to_target"] = reached  # None: the target was not reached
    logger.log(summary, step)
    reached_text = f"target {sel.target_top1}% reached at step {reached}; " if reached else ""
    logger.print(f"best val top-1 {best:.2f}% after {step} steps; {reached_text}"
                 f"{summary['train_pflops']:.4g} training + {summary['selection_pflops']:.4g} selection PFLOPs")


if __name__ == "__main__":
    run.cli(lambda: cli(sys.argv[1:]))
