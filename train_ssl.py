#!/usr/bin/env python
"""Self-supervised pretraining with a hand-written data-parallel loop.

    python train_ssl.py                                   # yaml/quickstart.yaml: synthetic data, CPU minutes
    python train_ssl.py --config yaml/cifar10_simsiam.yaml data.root=../shared/datasets/cifar10
    torchrun --nproc_per_node=8 train_ssl.py --config yaml/imagenet_simsiam.yaml data.root=/data/imagenet

Re-running the same command with the same output_dir resumes from output_dir/checkpoint.pt.
"""
import os
import signal
import sys
import time

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

import selfsup
from accel import compression, cost, hard_augment, progressive, schedules
from common import checkpoint, dist
from common.config import DEFAULTS, ConfigError, diff_configs, parse_cli
from common.flops import FlopLedger
from common.logger import RunLogger, write_run_files
from common.optim import build_optimizer, set_weight_decay
from data import DataError, build_eval_loader, build_images, build_train_loader
from data.augment import DeviceAugment
from data.multiview import sample_generator
from evaluation.knn import knn_top1
from models.batchnorm import convert_sync_bn
from selfsup.blockwise import BlockwiseMethod
from models import build_backbone

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_CONFIG = os.path.join(HERE, "yaml", "quickstart.yaml")
AMP_DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def config_defaults():
    return dict(DEFAULTS, method=selfsup.method_defaults())


def parse_config(argv):
    return parse_cli(argv, config_defaults(), DEFAULT_CONFIG, __doc__)


def check_config(cfg, world):
    if cfg.train.batch_size % world:
        raise ConfigError(f"train.batch_size={cfg.train.batch_size} is not divisible by the {world} ranks")
    if cfg.train.amp not in AMP_DTYPES:
        raise ConfigError(f"train.amp '{cfg.train.amp}' is not one of {sorted(AMP_DTYPES)}")
    if cfg.optim.lr_scaling not in ("linear", "none"):
        raise ConfigError(f"optim.lr_scaling '{cfg.optim.lr_scaling}' is not one of linear, none")
    ha = cfg.accel.hard_augment
    if ha.enabled and (ha.views < 2 or ha.selection not in ("hard", "easy", "random")):
        raise ConfigError(f"accel.hard_augment needs views >= 2 and selection hard|easy|random; "
                          f"got views={ha.views}, selection={ha.selection!r}")
    if cfg.data.crop_size <= 0:
        raise ConfigError(f"data.crop_size must be positive, got {cfg.data.crop_size}")
    wd_end = cfg.optim.weight_decay_end
    if wd_end is not None and (isinstance(wd_end, bool) or not isinstance(wd_end, (int, float))):
        raise ConfigError(f"optim.weight_decay_end must be a number or null, got {wd_end!r}")


def build_model(cfg):
    """The configured method on its backbone; with intermediate losses (any of interloss.aux_losses,
    partial_backprop, hard_pairs) a head per block around it (selfsup/blockwise.py).
    Returns (model, blockwise)."""
    il = cfg.interloss
    if il.aux_losses or il.partial_backprop or il.hard_pairs:
        return BlockwiseMethod(cfg.method, build_backbone(cfg.model), il, cfg.train.seed), True
    return selfsup.build_method(cfg.method, build_backbone(cfg.model)), False


def speedup_vs_full_resolution(ledger, res_schedule, r_max, local_batch, ha):
    """Cost of the run against the same steps at full resolution with 2 views, measured (ledger)
    and analytical (WACV'23 Eq. 9's r^2 cost, Eq. 11's selection overhead with C = 6). Empty when
    the run has no accelerated steps or never ran a 2-view full-resolution step to measure."""
    full = ledger.flops_of(("train", r_max, 2, local_batch, False))
    if full is None or (np.all(res_schedule == r_max) and not ha.enabled):
        return {}
    spent = ledger.local["train"] + ledger.local["selection"]
    r2 = np.asarray(res_schedule, dtype=np.float64) ** 2
    selection = len(r2) * cost.hard_augment_overhead(r_max, ha.r_sel, ha.views) * r_max ** 2 if ha.enabled else 0.0
    return {"measured_speedup": len(r2) * full / spent,
            "analytic_speedup": len(r2) * r_max ** 2 / (r2.sum() + selection)}


def main(cfg):
    device = dist.init_distributed(cfg.train.device)
    world, is_main = dist.world_size(), dist.is_main()
    check_config(cfg, world)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    amp_dtype = AMP_DTYPES[cfg.train.amp]
    if amp_dtype is torch.float16 and device.type != "cuda":
        raise ConfigError("train.amp=fp16 needs CUDA; use bf16 or none on the CPU")
    local_batch = cfg.train.batch_size // world
    torch.manual_seed(cfg.train.seed)  # identical initial weights on every rank

    # ---- data: crops in loader workers, photometric operations on the device
    train_images, val_images, num_classes = build_images(cfg.data, cfg.train.seed)
    ha = cfg.accel.hard_augment
    loader, sampler = build_train_loader(train_images, cfg, local_batch, device,
                                         num_views=ha.views if ha.enabled else cfg.data.num_views)
    knn_train_loader = build_eval_loader(train_images, cfg, cfg.knn.batch_size, device)
    knn_val_loader = build_eval_loader(val_images, cfg, cfg.knn.batch_size, device)
    augment = DeviceAugment(cfg.augment)
    resolution = cfg.augment.resolution or cfg.data.crop_size

    # ---- model
    model, blockwise = build_model(cfg)
    if cfg.train.sync_bn and world > 1:
        model = convert_sync_bn(model, device)
    model.to(device)
    if cfg.train.channels_last:
        model.to(memory_format=torch.channels_last)
    # partial back-propagation leaves blocks and heads out of some steps: DDP must not wait for them
    ddp = DDP(model, device_ids=[device.index] if device.type == "cuda" else None,
              find_unused_parameters=blockwise) if world > 1 else model

    # ---- optimizer and per-iteration schedules
    steps_per_epoch = sampler.steps_per_epoch
    # NeurIPS'24 sequence compression: per-step (drop ratio, patch size) of query and key, and the
    # run length in steps -- train.epochs, or train.budget sample-cost units (accel/compression.py)
    plan = compression.CompressionPlan(cfg, model, steps_per_epoch, cfg.train.batch_size)
    total_steps, n_epochs = plan.total_steps, plan.epochs
    lr = cfg.optim.lr * (cfg.train.batch_size / 256 if cfg.optim.lr_scaling == "linear" else 1.0)
    optimizer = build_optimizer(cfg.optim.name, model.param_groups(), lr, cfg.optim.momentum, cfg.optim.weight_decay)
    lr_schedule, momentum_schedule = schedules.build_lr_schedule(cfg.optim, total_steps, steps_per_epoch, lr)
    wd_schedule = None if cfg.optim.weight_decay_end is None else \
        schedules.cosine(total_steps, cfg.optim.weight_decay, float(cfg.optim.weight_decay_end))
    # with a budget, warm-up and decay follow the fraction of budget spent (identity otherwise)
    lr_schedule, momentum_schedule, wd_schedule = map(plan.follow, (lr_schedule, momentum_schedule, wd_schedule))
    model.prepare(total_steps, steps_per_epoch)  # the method's own per-step arrays (EMA momentum, temperatures)
    warmup_steps = schedules.warmup_steps_of(cfg.optim, total_steps, steps_per_epoch)
    res_schedule, mag_schedule = progressive.build_progressive(cfg.accel.progressive, total_steps, warmup_steps,
                                                               resolution, cfg.augment.magnitude)
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype is torch.float16)
    ledger = FlopLedger()

    # ---- resume
    os.makedirs(cfg.output_dir, exist_ok=True)
    ckpt_path = os.path.join(cfg.output_dir, "checkpoint.pt")
    step, knn_start = 0, None
    if os.path.exists(ckpt_path):
        state = checkpoint.load(ckpt_path)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        ledger.load_state_dict(state["ledger"])
        checkpoint.set_rng_state(state["rng"])
        step, knn_start = state["step"], state.get("knn_start")
        changed = diff_configs(state["config"], cfg.to_dict())
        if is_main:
            print(f"resuming from {ckpt_path} at step {step}/{total_steps}"
                  + (f"; config changed: {', '.join(changed)}" if changed else ""), flush=True)
    commit = checkpoint.git_commit()
    logger = RunLogger(cfg.output_dir, is_main)
    if is_main:
        write_run_files(cfg.output_dir, cfg, git_commit=commit, world_size=world, device=str(device),
                        train_images=train_images.description, val_images=val_images.description)
        logger.print(f"{cfg.method.name} on {train_images.description}; {world} rank(s) x {local_batch} images, "
                     f"{steps_per_epoch} steps/epoch, {total_steps} steps, lr {lr:g}; output {cfg.output_dir}")

    def knn():
        return knn_top1(model.eval_backbone(), knn_train_loader, knn_val_loader, augment, device, num_classes,
                        cfg.knn.k, cfg.knn.temperature, cfg.train.channels_last, amp_dtype)

    def save(epoch, snapshot=False):
        if not is_main:
            return
        state = {"model": model.state_dict(), "backbone": model.eval_backbone().state_dict(),
                 "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
                 "ledger": ledger.state_dict(), "rng": checkpoint.rng_state(), "step": step, "epoch": epoch,
                 "knn_start": knn_start, "config": cfg.to_dict(), "git_commit": commit, "world_size": world}
        checkpoint.save_atomic(state, ckpt_path)
        if snapshot:
            checkpoint.save_atomic(state, os.path.join(cfg.output_dir, f"ckpt_{epoch:04d}.pt"))

    if step == 0:
        knn_start = knn()
        logger.log({"epoch": 0.0, "knn_top1": knn_start}, step=0)
        logger.print(f"kNN top-1 at start (random init): {knn_start:.2f}%")
    if step >= total_steps:
        logger.print(f"{ckpt_path} is already at the last step ({total_steps}); nothing to train")
        return

    # SIGTERM (pre-emption, scancel): at the next logging step, write the checkpoint and exit.
    stop = {"requested": False}
    signal.signal(signal.SIGTERM, lambda *_: stop.update(requested=True))

    bar = tqdm(total=total_steps, initial=step, disable=not is_main, dynamic_ncols=True, mininterval=2)
    loss_sum = torch.zeros((), device=device)
    window = {"t": time.perf_counter(), "steps": 0}
    for epoch in range(step // steps_per_epoch, n_epochs):
        sampler.set_epoch(epoch, skip_steps=step - epoch * steps_per_epoch)
        model.train()
        for batch in loader:
            for g in optimizer.param_groups:
                g["lr"] = (lr if g.get("fix_lr") else float(lr_schedule[step])) * g.get("lr_mult", 1.0)
                if momentum_schedule is not None:  # F1-CLR / 1-cycle: anti-phased momentum
                    g["momentum"] = float(momentum_schedule[step])
            if wd_schedule is not None:
                set_weight_decay(optimizer, float(wd_schedule[step]))
            model.begin_step(step)
            res, mag = int(res_schedule[step]), float(mag_schedule[step])
            views = augment(batch["views"].to(device, non_blocking=True), batch["rand"].to(device, non_blocking=True),
                            mag, res, cfg.train.channels_last)
            local_views = None
            if "local_views" in batch:  # multi-crop: small views at their own fixed size
                local_views = augment(batch["local_views"].to(device, non_blocking=True),
                                      batch["local_rand"].to(device, non_blocking=True), mag, 0,
                                      cfg.train.channels_last, local=True)
            targets = None
            if ha.enabled:  # Hard Augment: keep the hardest pair of views per sample
                with ledger.count(("select", ha.r_sel, len(views), local_batch), kind="selection"):
                    with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                        views, targets, _ = hard_augment.select(
                            model, views, ha.r_sel, ha.selection, ha.extra_targets,
                            sample_generator(cfg.train.seed, step, dist.rank()))
            with ledger.count(("train", res, len(views), local_batch, targets is not None) + model.ledger_key()
                              + plan.key(step)):
                with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None), \
                        plan.context(model, step, sample_generator(cfg.train.seed, step, dist.rank(), 9)):
                    loss = ddp(views, targets=targets, local_views=local_views)["loss"]
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
            model.after_backward(step)
            if cfg.optim.clip_grad > 0:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.clip_grad)
            scaler.step(optimizer)
            scaler.update()
            model.on_step(step)
            ledger.add("budget_units", plan.units(step, res, local_batch, len(views), len(local_views or ())))
            step += 1
            loss_sum += loss.detach().float()
            window["steps"] += 1
            bar.update(1)

            stop_requested = False
            if step % cfg.train.log_every == 0 or step == total_steps:
                # ranks may see SIGTERM a step apart: agree on stopping here, where all ranks meet
                flag = torch.tensor([float(stop["requested"])], device=device)
                stop_requested = dist.all_reduce_sum(flag).item() > 0
                mean_loss = dist.all_reduce_mean(loss_sum / window["steps"]).item()
                elapsed = time.perf_counter() - window["t"]
                metrics = {"epoch": step / steps_per_epoch, "loss": mean_loss, "lr": float(lr_schedule[step - 1]),
                           "resolution": res,
                           "magnitude": mag, "images_per_s": window["steps"] * cfg.train.batch_size / elapsed,
                           "train_pflops": ledger.global_total("train") / 1e15}
                if plan.vit:  # NeurIPS'24 sample-cost units (Table 1), cumulative over ranks
                    metrics["budget_units"] = ledger.global_total("budget_units")
                    if plan.active:
                        metrics.update(zip(("drop_ratio", "patch_size", "key_drop_ratio", "key_patch_size"),
                                           plan.stage(step - 1)))
                g0 = optimizer.param_groups[0]
                if "momentum" in g0:  # SGD / LARS (AdamW has betas)
                    metrics["momentum"] = g0["momentum"]
                if wd_schedule is not None:
                    metrics["weight_decay"] = float(wd_schedule[step - 1])
                metrics.update(model.schedule_values())  # EMA momentum, teacher temperature, ...
                if ha.enabled:
                    metrics["selection_pflops"] = ledger.global_total("selection") / 1e15
                logger.log(metrics, step)
                bar.set_postfix(loss=f"{mean_loss:.4f}", ips=f"{metrics['images_per_s']:.0f}")
                loss_sum.zero_()
                window.update(t=time.perf_counter(), steps=0)
            if cfg.train.ckpt_every_steps and step % cfg.train.ckpt_every_steps == 0:
                save(epoch)
            if step == cfg.train.stop_at_step or stop_requested:
                save(epoch)
                bar.close()
                logger.print(f"stopped at step {step}; re-run the same command to resume")
                logger.close()
                return
            if step >= total_steps:  # a train.budget run ends inside its last epoch
                break

        done = epoch + 1
        if cfg.knn.every_epochs and done % cfg.knn.every_epochs == 0 and done < n_epochs:
            logger.log({"epoch": float(done), "knn_top1": knn()}, step)
        save(done, snapshot=bool(cfg.train.snapshot_every_epochs) and done % cfg.train.snapshot_every_epochs == 0)
    bar.close()

    knn_end = knn()
    summary = {"epoch": step / steps_per_epoch, "knn_top1": knn_end, "knn_start": knn_start,
               "train_pflops": ledger.global_total("train") / 1e15}
    summary.update(speedup_vs_full_resolution(ledger, res_schedule, resolution, local_batch, ha))
    if plan.vit:
        summary["budget_units"] = ledger.global_total("budget_units")
    logger.log(summary, step)
    logger.print(f"kNN top-1: {knn_start:.2f}% at start -> {knn_end:.2f}% after {step / steps_per_epoch:g} epochs "
                 f"({ledger.global_total('train') / 1e15:.4g} training PFLOPs)")
    logger.close()


if __name__ == "__main__":
    try:
        cfg = parse_config(sys.argv[1:])
        main(cfg)
    except (ConfigError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    finally:
        dist.cleanup()
