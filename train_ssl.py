#!/usr/bin/env python
"""Self-supervised pretraining with a hand-written data-parallel loop.

    python train_ssl.py                                   # yaml/quickstart.yaml: synthetic data, CPU minutes
    python train_ssl.py --config yaml/cifar10_simsiam.yaml data.root=../shared/datasets/cifar10
    torchrun --nproc_per_node=8 train_ssl.py --config yaml/imagenet_simsiam.yaml data.root=/data/imagenet

Re-running the same command with the same output_dir resumes from output_dir/checkpoint.pt.
"""
import os
import sys

import torch
from tqdm import tqdm

from accel import hard_augment, online_camse
from common import checkpoint, dist, host_sync, precision, rng, run
from common import plan as planning
from common.config import parse_cli
from common.flops import FlopLedger
from common.logger import LossWindow
from common.optim import build_optimizer
from data import build_eval_loader, build_images, build_train_loader, device_batch
from data.augment import DeviceAugment
from evaluation.knn import knn_top1
from models import SIZES as VIT_ARCHS
from models.batchnorm import convert_sync_bn
from selfsup.build import build_model
from selfsup.config import check_ssl_config, ssl_defaults
from selfsup.plan import plan, run_summary
from selfsup.schedules import build_schedules, step_shapes

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_CONFIG = os.path.join(HERE, "yaml", "quickstart.yaml")


def parse_config(argv):
    return parse_cli(argv, ssl_defaults(), DEFAULT_CONFIG, __doc__)


def train_step(cfg, model, ddp, batch, optimizer, scaler, augment, sched, ledger, step, device, amp_dtype):
    """One optimizer step: schedules, device-side augmentation at this step's resolution and
    magnitude, Hard Augment's pick, the (compressed) forward and backward, the update."""
    sched.apply(optimizer, step)
    model.begin_step(step)
    cl, ha = cfg.train.channels_last, cfg.accel.hard_augment
    autocast = precision.autocast(device, amp_dtype)
    dtype = torch.float64 if cfg.train.float64 else torch.float32
    res, mag = int(sched.resolution[step]), float(sched.magnitude[step])
    batch = device_batch(batch, device)  # JPEG decode and crops here with data.decode=device
    views = augment(batch["views"], batch["rand"], mag, res, cl, dtype)
    local_views = None
    if "local_views" in batch:  # multi-crop: small views at their own fixed size
        local_views = augment(batch["local_views"], batch["local_rand"], mag, 0, cl, dtype, local=True)
    b, targets = views[0].shape[0], None
    if ha.enabled:  # Hard Augment: keep the hardest pair of views per sample (WACV'23 Eq. 10)
        with ledger.count(("select", ha.r_sel, len(views), b), kind="selection"), autocast:
            views, targets, _ = hard_augment.select(
                model, views, ha.r_sel, ha.pick, ha.extra_targets,
                rng.generator(cfg.train.seed, rng.Stream.HARD_AUGMENT, step, dist.rank()))
    comp = sched.compression
    if comp.due(step):  # online CA-MSE: re-estimate on this batch, switch, re-make the remaining budget's steps
        online_camse.reestimate(model, comp, views, local_views, step, cfg.train.seed, ledger)
        sched.switched(model)
    seq = comp.compression(step, rng.generator(cfg.train.seed, rng.Stream.COMPRESSION, step, dist.rank()))
    with ledger.count(("train", res, len(views), b, targets is not None) + model.ledger_key() + comp.key(step)):
        with autocast:
            loss = ddp(views, targets=targets, local_views=local_views, compression=seq)["loss"]
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
    model.after_backward(step)
    if cfg.optim.clip_grad > 0:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.clip_grad)
    scaler.step(optimizer)
    scaler.update()
    model.on_step(step)
    ledger.add("budget_units", comp.units(step, res, b, len(views), len(local_views or ())))
    return loss.detach(), {"resolution": res, "magnitude": mag}


def main(cfg):
    rt = run.setup(cfg.train)
    device, local_batch = rt.device, cfg.train.batch_size // rt.world
    amp_dtype = precision.resolve(cfg.train, device, conv=cfg.model.arch not in VIT_ARCHS)  # train.amp=auto -> bf16 / none
    check_ssl_config(cfg)

    # ---- data: crops in loader workers, photometric operations on the device
    train_images, val_images, num_classes = build_images(cfg.data, cfg.train.seed)
    loader, sampler = build_train_loader(train_images, cfg, local_batch, device,
                                         num_views=hard_augment.views_loaded(cfg))
    knn_loaders = [build_eval_loader(images, cfg, cfg.knn.batch_size, device) for images in (train_images, val_images)]
    augment = DeviceAugment(cfg.augment)

    # ---- model
    model, blockwise = build_model(cfg)
    if cfg.train.sync_bn and rt.world > 1:
        model = convert_sync_bn(model, device)
    model.to(device, torch.float64 if cfg.train.float64 else None,
             memory_format=torch.channels_last if cfg.train.channels_last else torch.preserve_format)
    # partial back-propagation leaves blocks and heads out of some steps: DDP must not wait for them
    ddp = run.wrap_ddp(model, rt, find_unused_parameters=blockwise)

    # ---- optimizer and per-iteration schedules (selfsup/schedules.py), the run's length among them
    steps_per_epoch = sampler.steps_per_epoch
    sched = build_schedules(cfg, model, steps_per_epoch)
    length = sched.length   # online CA-MSE may change it mid-run
    sampler.set_sizes(sched.resolution)  # the loader crops at each step's resolution (no 224 -> 96 resample)
    optimizer = build_optimizer(cfg.optim.name, model.param_groups(), sched.base_lr, cfg.optim.momentum,
                                cfg.optim.weight_decay, device=device)
    compiled = run.Compiled(model, cfg.train, shapes=step_shapes(cfg, sched))
    model.prepare(length.total_steps, steps_per_epoch)  # the method's own per-step arrays (EMA momentum, temperatures)
    model.follow_budget(length.follow)   # with train.budget, those counted in epochs follow the budget spent
    scaler, ledger = torch.amp.GradScaler("cuda", enabled=amp_dtype is torch.float16), FlopLedger()

    # ---- resume
    ckpt = checkpoint.Checkpointer(cfg.output_dir, rt, cfg)
    state = ckpt.restore(model=model, optimizer=optimizer, scaler=scaler, ledger=ledger)
    sched.resume(state.get("compression", state.get("plan")), model)  # online CA-MSE's switches ("plan" before 12-2026)
    step, knn_start = state.get("step", 0), state.get("knn_start")
    logger = run.start(cfg, rt, ckpt, step, "\n".join([
        f"{cfg.method.name} on {train_images.description}; {rt.world} rank(s) x {local_batch} images, {steps_per_epoch} "
        f"steps/epoch, {length.total_steps} steps, lr {sched.base_lr:g}; output {cfg.output_dir}",
        *sched.compression.warnings()]), device=str(device), train_images=train_images.description,
        val_images=val_images.description)

    def knn():
        return knn_top1(model.eval_backbone(), *knn_loaders, augment, device, num_classes,
                        cfg.knn.k, cfg.knn.temperature, cfg.train.channels_last, amp_dtype)

    def save(snapshot=None):
        ckpt.save(snapshot, model=model, backbone=model.eval_backbone(), optimizer=optimizer, scaler=scaler,
                  ledger=ledger, step=step, epoch=step / steps_per_epoch, knn_start=knn_start,
                  compression=sched.compression)

    # train.snapshot_fractions not yet passed (at 0: before the first step)
    fractions = sorted(f for f in cfg.train.snapshot_fractions if f > length.fraction_done(step) or f == step == 0)

    def snapshot_due(n):
        return bool(fractions) and length.fraction_done(n) >= fractions[0] - 1e-12

    def snapshots():
        while snapshot_due(step):
            save(snapshot=f"ckpt_p{round(100 * fractions.pop(0)):03d}.pt")

    if step == 0:
        knn_start = knn()
        logger.log({"epoch": 0.0, "knn_top1": knn_start}, step=0)
        logger.print(f"kNN top-1 at start (random init): {knn_start:.2f}%")
        snapshots()
    if step >= length.total_steps:
        logger.print(f"{ckpt.path} is already at the last step ({length.total_steps}); nothing to train")
        return

    # ---- the loop: one step per batch of the stream, which starts where a resumed run stopped
    batches = run.stream(loader, sampler, step)
    stop = run.StopFlag(device, cfg.train.check_every)
    bar = tqdm(total=length.total_steps, initial=step, disable=not rt.is_main, dynamic_ncols=True, mininterval=2)
    window, first = LossWindow(device), step
    model.train()
    while step < length.total_steps:
        done = step + 1
        logs = done % cfg.train.log_every == 0 or done >= length.total_steps
        saves = (done % steps_per_epoch == 0 or done >= length.total_steps or done == cfg.train.stop_at_step
                 or snapshot_due(done) or (cfg.train.ckpt_every_steps and done % cfg.train.ckpt_every_steps == 0))
        # a step that neither logs, saves nor checks reads no device value (train.forbid_sync
        # enforces it after the first step, whose set-up may synchronise)
        quiet = not (logs or saves or stop.due(done) or sched.compression.due(step)) and step > first
        with host_sync.forbid(device, cfg.train.forbid_sync and quiet):
            loss, shown = train_step(cfg, model, ddp, next(batches), optimizer, scaler, augment, sched, ledger, step,
                                     device, amp_dtype)
            stop_requested, diverged = stop.check(loss, done, force=logs or saves)
        if diverged:
            bar.close()
            raise checkpoint.Diverged(diverged, ckpt.path)
        step = done
        window.add(loss)
        bar.update(1)
        news = compiled.report(step)   # a line when this step compiled new graphs
        if news:
            logger.print(news)
        if logs or step == length.total_steps:   # online CA-MSE may have moved the last step
            mean_loss, ips = window.flush(cfg.train.batch_size)
            logger.log({"epoch": step / steps_per_epoch, "loss": mean_loss, **shown, "images_per_s": ips,
                        **sched.metrics(cfg, model, optimizer, ledger, step), **run.memory_metrics(device),
                        **compiled.metrics()}, step)
            bar.set_postfix(loss=f"{mean_loss:.4f}", ips=f"{ips:.0f}")
        ends_epoch = step % steps_per_epoch == 0 or step >= length.total_steps   # (the last may be partial)
        epoch = -(-step // steps_per_epoch)   # epochs begun
        if cfg.knn.every_epochs and ends_epoch and epoch % cfg.knn.every_epochs == 0 and step < length.total_steps:
            logger.log({"epoch": float(epoch), "knn_top1": knn()}, step)
        if (ends_epoch or step == cfg.train.stop_at_step or stop_requested
                or (cfg.train.ckpt_every_steps and step % cfg.train.ckpt_every_steps == 0)):
            # at the end of every snapshot_every_epochs-th epoch, ckpt_EPOCH.pt beside checkpoint.pt
            every = cfg.train.snapshot_every_epochs
            save(snapshot=f"ckpt_{epoch:04d}.pt" if every and ends_epoch and epoch % every == 0 else None)
        snapshots()
        if step == cfg.train.stop_at_step or stop_requested:
            bar.close()
            logger.close()
            raise run.Stopped(step, stop.signum if stop_requested else None)
    bar.close()

    finish(cfg, sched, ledger, local_batch, logger, step / steps_per_epoch, knn(), knn_start, step)


def finish(cfg, sched, ledger, local_batch, logger, epoch, knn_end, knn_start, step):
    """The run's last line of metrics.jsonl and its summary line."""
    summary = {"epoch": epoch, "knn_top1": knn_end, "knn_start": knn_start, **run_summary(cfg, sched, ledger, local_batch)}
    logger.log(summary, step)
    logger.print(f"kNN top-1: {knn_start:.2f}% at start -> {knn_end:.2f}% after {epoch:g} "
                 f"epochs ({summary['train_pflops']:.4g} training PFLOPs)")
    logger.close()


def cli(argv):
    cfg, args = parse_cli(argv, ssl_defaults(), DEFAULT_CONFIG, __doc__, plan=True)
    if args.plan:
        return planning.print_plan(plan(cfg, args.config), args.json)
    main(cfg)


if __name__ == "__main__":
    run.cli(lambda: cli(sys.argv[1:]))
