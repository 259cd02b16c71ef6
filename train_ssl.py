#!/usr/bin/env python
"""Self-supervised pretraining with a hand-written data-parallel loop.

    python train_ssl.py                                   # yaml/quickstart.yaml: synthetic data, CPU minutes
    python train_ssl.py --config yaml/cifar10_simsiam.yaml data.root=../shared/datasets/cifar10
    torchrun --nproc_per_node=8 train_ssl.py --config yaml/imagenet_simsiam.yaml data.root=/data/imagenet

Re-running the same command with the same output_dir resumes from output_dir/checkpoint.pt.
"""
import dataclasses
import json
import os
import sys

import numpy as np
import torch
from tqdm import tqdm

from accel import compression, cost, hard_augment, online_camse, progressive
from common import checkpoint, dist, host_sync, precision, rng, run, schedules
from common import plan as planning
from common.config import ConfigError, load_config, parse_cli
from common.flops import FlopLedger
from common.logger import LossWindow, RunLogger, write_run_files
from common.optim import build_optimizer, set_weight_decay
from data import build_eval_loader, build_images, build_train_loader, device_batch
from data.augment import DeviceAugment
from evaluation.knn import knn_top1
from models import SIZES as VIT_ARCHS
from models.batchnorm import convert_sync_bn
from selfsup.build import build_model
from selfsup.config import ssl_defaults

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_CONFIG = os.path.join(HERE, "yaml", "quickstart.yaml")


def parse_config(argv):
    return parse_cli(argv, ssl_defaults(), DEFAULT_CONFIG, __doc__)


def plan(cfg, config_file=None, baseline=True, count_flops=True):
    """--plan: the run this config describes, without data or training (common/plan.py): steps and
    epochs for the dataset its paper: section names, the schedules as stages, sample-cost units,
    analytical PFLOPs (counted on meta tensors), and the speed-up against paper.baseline."""
    check_config(cfg)
    n_images, source = planning.dataset_size(cfg)
    steps_per_epoch = n_images // cfg.train.batch_size
    if steps_per_epoch == 0:
        raise ConfigError(f"train.batch_size={cfg.train.batch_size} exceeds the {n_images} training images")
    model_key = json.dumps({k: cfg[k] for k in ("model", "method", "interloss")}, sort_keys=True, default=str)
    model, blockwise = planning.meta_model(model_key, lambda: build_model(cfg))
    sched = build_schedules(cfg, model, steps_per_epoch)
    p, ha, batch = sched.plan, cfg.accel.hard_augment, cfg.train.batch_size
    out = {"file": config_file, "script": "train_ssl.py", "method": cfg.method.name, "arch": cfg.model.arch,
           "dataset": source, "train_images": n_images, "global_batch": batch, "steps_per_epoch": steps_per_epoch,
           "steps": p.total_steps, "epochs": p.total_steps / steps_per_epoch,
           "warmup_steps": warmup_as_run(cfg, p, steps_per_epoch)}
    if p.illustrative:   # a placeholder schedule: say so wherever the plan is read (text and JSON)
        out["illustrative_schedule"] = f"{cfg.accel.compression.schedule} is a placeholder, not a measured CA-MSE schedule"
    # every step's cost is set by (resolution, compression stage): count each pair once, on meta tensors
    groups = planning.runs(np.stack([sched.resolution, p.d_q, p.p_q, p.d_k, p.p_k], 1))
    n_views, n_local = 2 if ha.enabled else cfg.data.num_views, cfg.data.local_views
    train = selection = units = 0.0
    for t, n in groups.values():
        res = int(sched.resolution[t])
        if p.vit:
            units += n * p.units(t, res, batch, n_views, n_local)
        if blockwise or not count_flops:   # blockwise: the cost depends on the block drawn each step
            continue
        f_train, f_sel = _step_flops(cfg, res, p.compression(t, torch.Generator()))
        train, selection = train + n * batch * f_train, selection + n * batch * f_sel
    if count_flops and not blockwise:
        out["train_pflops"], out["selection_pflops"] = train / 1e15, selection / 1e15
    if p.vit:
        out["budget_M"] = units / 1e6
    paper = cfg.get("paper") or {}
    if baseline and paper.get("baseline") and config_file:
        base_file = os.path.join(os.path.dirname(config_file), paper["baseline"])
        base = plan(load_config(ssl_defaults(), base_file), base_file, baseline=False, count_flops=count_flops)
        out.update(baseline=base_file, **planning.speedups(out, base))
    lr = sched.lr / sched.base_lr if sched.base_lr else sched.lr
    columns = {"lr/base": lr, "resolution": sched.resolution, "magnitude": sched.magnitude}
    if sched.momentum is not None:
        columns["momentum"] = sched.momentum
    if p.active:
        columns.update(drop=p.d_q, patch=p.p_q, key_drop=p.d_k, key_patch=p.p_k)
    warm = np.arange(p.total_steps) < out["warmup_steps"]
    stage_keys = ["resolution"] + (["drop", "patch", "key_drop", "key_patch"] if p.active else [])
    out["stages"] = planning.stage_table(steps_per_epoch, dict(columns, warmup=warm), stage_keys + ["warmup"])
    return out


def warmup_as_run(cfg, p, steps_per_epoch):
    """Steps until the lr stops rising. With train.budget the lr follows the fraction of budget
    spent (CompressionPlan.follow), so cheap compressed steps stretch the warm-up past its step
    count: the first step whose progress reaches the warm-up's share."""
    w = schedules.warmup_steps_of(cfg.optim, p.total_steps, steps_per_epoch)
    return int(np.searchsorted(np.asarray(p.progress) * p.total_steps, w, side="left")) if w else 0


def _step_flops(cfg, res, compression):
    """(training, selection) FLOPs per image of one step at `res` with this compression setting,
    counted on meta tensors: Hard Augment's selection pass at r_sel, then the training step."""
    ha, b = cfg.accel.hard_augment, 2
    views = {k: cfg.data[k] for k in ("num_views", "local_views", "local_crop_size")}
    model_key = json.dumps([{k: cfg[k] for k in ("model", "method", "interloss")}, views], sort_keys=True, default=str)

    def setup(views_res, device):
        with torch.device(device):
            model, _ = build_model(cfg)
        model.prepare(1, 1)
        model.begin_step(0)
        return model, planning.inputs(ha.views if ha.enabled else cfg.data.num_views, b, views_res, device)

    def select(model, views):
        return hard_augment.select(model, views, ha.r_sel, "hard", ha.extra_targets)

    def train(model, views):
        targets = None
        if ha.enabled:   # the selection pass (counted above) picks the pair
            views, targets, _ = select(model, views)
        local = planning.inputs(cfg.data.local_views, b, cfg.data.local_crop_size, views[0].device) or None
        return model, views, targets, local

    def forward_backward(model, views, targets, local):
        model(views, targets=targets, local_views=local, compression=compression)["loss"].backward()

    selection = planning.flops(("select", model_key, str(dict(ha))), select,
                               lambda device: setup(ha.r_sel, device)) if ha.enabled else 0.0
    setting = None if compression is None else (compression.query.drop_ratio, compression.query.patch_size,
                                                 compression.key.drop_ratio, compression.key.patch_size)
    total = planning.flops(("train", model_key, str(dict(ha)), res, setting), forward_backward,
                           lambda device: train(*setup(res, device)))
    return total / b, selection / b


def check_config(cfg):
    if cfg.optim.lr_scaling not in ("linear", "none"):
        raise ConfigError(f"optim.lr_scaling '{cfg.optim.lr_scaling}' is not one of linear, none")
    ha = cfg.accel.hard_augment
    if ha.enabled and (ha.views < 2 or ha.pick not in ("hard", "easy", "random")):
        raise ConfigError(f"accel.hard_augment needs views >= 2 and pick hard|easy|random; "
                          f"got views={ha.views}, pick={ha.pick!r}")
    if cfg.data.crop_size <= 0:
        raise ConfigError(f"data.crop_size must be positive, got {cfg.data.crop_size}")
    wd_end = cfg.optim.weight_decay_end
    if wd_end is not None and (isinstance(wd_end, bool) or not isinstance(wd_end, (int, float))):
        raise ConfigError(f"optim.weight_decay_end must be a number or null, got {wd_end!r}")


@dataclasses.dataclass
class Schedules:
    """Everything indexed by the global step (DINO's habit: precomputed per-iteration arrays)."""
    base_lr: float
    lr: np.ndarray
    momentum: np.ndarray            # F1-CLR / 1-cycle anti-phased momentum, or None
    weight_decay: np.ndarray        # None: constant
    resolution: np.ndarray          # Super Progressive Learning (WACV'23 sec. 3.2)
    magnitude: np.ndarray
    plan: compression.CompressionPlan   # NeurIPS'24 sequence compression and run length
    raw: tuple                          # (lr, momentum, weight decay) before following the budget

    def apply(self, optimizer, step):
        for g in optimizer.param_groups:
            g["lr"] = (self.base_lr if g.get("fix_lr") else float(self.lr[step])) * g.get("lr_mult", 1.0)
            if self.momentum is not None:
                g["momentum"] = float(self.momentum[step])
        if self.weight_decay is not None:
            set_weight_decay(optimizer, float(self.weight_decay[step]))

    def replanned(self, model):
        """Online CA-MSE re-made the plan (accel/online_camse.py): re-sample what follows the budget
        at the new fractions, and the method's per-step arrays (EMA momentum) at the new length.
        (train.budget needs accel.progressive.mode=none: resolution and magnitude are constant.)"""
        self.lr, self.momentum, self.weight_decay = map(self.plan.follow, self.raw)
        n = self.plan.total_steps
        self.resolution, self.magnitude = np.full(n, self.resolution[0]), np.full(n, self.magnitude[0])
        model.prepare(n, self.plan.steps_per_epoch)
        model.follow_budget(self.plan.follow)

    def resume(self, plan_state, model):
        """Replay a checkpoint's online switches (none: nothing to do)."""
        if plan_state and plan_state.get("switches"):
            self.plan.load_state_dict(plan_state)
            self.replanned(model)


def build_schedules(cfg, model, steps_per_epoch):
    # train.epochs, or train.budget sample-cost units (accel/compression.py), fixes the step count
    plan = compression.CompressionPlan(cfg, model, steps_per_epoch, cfg.train.batch_size)
    cfg.accel.compression.illustrative = plan.illustrative   # recorded in config.yaml
    total = plan.total_steps
    base_lr = cfg.optim.lr * (cfg.train.batch_size / 256 if cfg.optim.lr_scaling == "linear" else 1.0)
    lr, momentum = schedules.build_lr_schedule(cfg.optim, total, steps_per_epoch, base_lr)
    wd = None if cfg.optim.weight_decay_end is None else \
        schedules.cosine(total, cfg.optim.weight_decay, float(cfg.optim.weight_decay_end))
    # with a budget, warm-up and decay follow the fraction of budget spent (identity otherwise)
    raw = (lr, momentum, wd)
    lr, momentum, wd = map(plan.follow, raw)
    warmup = schedules.warmup_steps_of(cfg.optim, total, steps_per_epoch)
    res, mag = progressive.build_progressive(cfg.accel.progressive, total, warmup,
                                             cfg.augment.resolution or cfg.data.crop_size, cfg.augment.magnitude)
    return Schedules(base_lr, lr, momentum, wd, res, mag, plan, raw)


def step_shapes(cfg, sched):
    """How many distinct input shapes the training steps produce (train.compile's graphs):
    resolutions x compression stages, plus Hard Augment's selection pass and multi-crop's small
    views at their own sizes."""
    p = sched.plan
    stages = np.unique(np.stack([sched.resolution, p.d_q, p.p_q, p.d_k, p.p_k], 1), axis=0)
    return len(stages) + int(cfg.accel.hard_augment.enabled) + int(cfg.data.local_views > 0)


def train_step(cfg, model, ddp, batch, optimizer, scaler, augment, sched, ledger, step, device):
    """One optimizer step: schedules, device-side augmentation at this step's resolution and
    magnitude, Hard Augment's pick, the (compressed) forward and backward, the update."""
    sched.apply(optimizer, step)
    model.begin_step(step)
    cl, ha = cfg.train.channels_last, cfg.accel.hard_augment
    autocast = precision.autocast(device, precision.AMP_DTYPES[cfg.train.amp])
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
    plan = sched.plan
    if plan.due(step):  # online CA-MSE: re-estimate on this batch, switch, re-plan the remaining budget
        online_camse.reestimate(model, plan, views, local_views, step, cfg.train.seed, ledger)
        sched.replanned(model)
    seq = plan.compression(step, rng.generator(cfg.train.seed, rng.Stream.COMPRESSION, step, dist.rank()))
    with ledger.count(("train", res, len(views), b, targets is not None) + model.ledger_key() + plan.key(step)):
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
    ledger.add("budget_units", plan.units(step, res, b, len(views), len(local_views or ())))
    return loss.detach(), {"resolution": res, "magnitude": mag}


def step_metrics(cfg, model, optimizer, sched, ledger, step):
    """The scheduled values of the step just taken, for metrics.jsonl."""
    out = {"lr": float(sched.lr[step - 1]), "train_pflops": ledger.global_total("train") / 1e15}
    if sched.plan.vit:  # NeurIPS'24 sample-cost units (Table 1), cumulative over ranks
        out["budget_units"] = ledger.global_total("budget_units")
        if sched.plan.active:
            out.update(zip(("drop_ratio", "patch_size", "key_drop_ratio", "key_patch_size"), sched.plan.stage(step - 1)))
        if sched.plan.online:  # the estimates' own passes (charged to budget_units too)
            out["online_units"] = ledger.global_total("online_units")
            out["online_pflops"] = ledger.global_total("online") / 1e15
    if "momentum" in optimizer.param_groups[0]:  # SGD / LARS (AdamW has betas)
        out["momentum"] = optimizer.param_groups[0]["momentum"]
    if sched.weight_decay is not None:
        out["weight_decay"] = float(sched.weight_decay[step - 1])
    if cfg.accel.hard_augment.enabled:
        out["selection_pflops"] = ledger.global_total("selection") / 1e15
    return dict(out, **model.schedule_values())  # EMA momentum, teacher temperature, ...


def run_summary(cfg, sched, ledger, local_batch):
    """Training compute of the whole run, its speed-up over full resolution, budget units."""
    out = {"train_pflops": ledger.global_total("train") / 1e15}
    out.update(speedup_vs_full_resolution(ledger, sched.resolution, cfg.augment.resolution or cfg.data.crop_size,
                                          local_batch, cfg.accel.hard_augment))
    if sched.plan.vit:
        out["budget_units"] = ledger.global_total("budget_units")
    if sched.plan.online:
        out["online_units"] = ledger.global_total("online_units")
    return out


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
    rt = run.setup(cfg.train)
    device, local_batch = rt.device, cfg.train.batch_size // rt.world
    amp_dtype = precision.resolve(cfg.train, device, conv=cfg.model.arch not in VIT_ARCHS)  # train.amp=auto -> bf16 / none
    check_config(cfg)

    # ---- data: crops in loader workers, photometric operations on the device
    train_images, val_images, num_classes = build_images(cfg.data, cfg.train.seed)
    ha = cfg.accel.hard_augment
    loader, sampler = build_train_loader(train_images, cfg, local_batch, device,
                                         num_views=ha.views if ha.enabled else cfg.data.num_views)
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

    # ---- optimizer and per-iteration schedules
    steps_per_epoch = sampler.steps_per_epoch
    sched = build_schedules(cfg, model, steps_per_epoch)
    sampler.set_sizes(sched.resolution)  # the loader crops at each step's resolution (no 224 -> 96 resample)
    optimizer = build_optimizer(cfg.optim.name, model.param_groups(), sched.base_lr, cfg.optim.momentum,
                                cfg.optim.weight_decay, device=device)
    compiled = run.Compiled(model, cfg.train, shapes=step_shapes(cfg, sched))
    model.prepare(sched.plan.total_steps, steps_per_epoch)  # the method's own per-step arrays (EMA momentum, temperatures)
    model.follow_budget(sched.plan.follow)   # with train.budget, those counted in epochs follow the budget spent
    scaler, ledger = torch.amp.GradScaler("cuda", enabled=amp_dtype is torch.float16), FlopLedger()

    # ---- resume
    ckpt = checkpoint.Checkpointer(cfg.output_dir, rt, cfg)
    state = ckpt.restore(model=model, optimizer=optimizer, scaler=scaler, ledger=ledger)
    sched.resume(state.get("plan"), model)  # online CA-MSE's switches
    step, knn_start = state.get("step", 0), state.get("knn_start")
    logger = RunLogger(cfg.output_dir, rt.is_main, resume_step=step)
    if rt.is_main:
        write_run_files(cfg.output_dir, cfg, git_commit=ckpt.commit, world_size=rt.world, device=str(device),
                        train_images=train_images.description, val_images=val_images.description)
        logger.print("\n".join([f"{cfg.method.name} on {train_images.description}; {rt.world} rank(s) x {local_batch} "
                                f"images, {steps_per_epoch} steps/epoch, {sched.plan.total_steps} steps, lr "
                                f"{sched.base_lr:g}; output {cfg.output_dir}", *sched.plan.warnings()]))  # + warnings

    def knn():
        return knn_top1(model.eval_backbone(), *knn_loaders, augment, device, num_classes,
                        cfg.knn.k, cfg.knn.temperature, cfg.train.channels_last, amp_dtype)

    def save(epoch, snapshot=None):
        ckpt.save(snapshot, model=model, backbone=model.eval_backbone(), optimizer=optimizer, scaler=scaler,
                  ledger=ledger, step=step, epoch=epoch, knn_start=knn_start, plan=sched.plan)

    # train.snapshot_fractions not yet passed (at 0: before the first step)
    fractions = sorted(f for f in cfg.train.snapshot_fractions if f > sched.plan.fraction_done(step) or f == step == 0)

    def snapshot_due(n):
        return bool(fractions) and sched.plan.fraction_done(n) >= fractions[0] - 1e-12

    def snapshots(epoch):
        while snapshot_due(step):
            save(epoch, snapshot=f"ckpt_p{round(100 * fractions.pop(0)):03d}.pt")

    if step == 0:
        knn_start = knn()
        logger.log({"epoch": 0.0, "knn_top1": knn_start}, step=0)
        logger.print(f"kNN top-1 at start (random init): {knn_start:.2f}%")
        snapshots(0)
    if step >= sched.plan.total_steps:
        logger.print(f"{ckpt.path} is already at the last step ({sched.plan.total_steps}); nothing to train")
        return

    # ---- the loop: an explicit pass over each epoch's batches
    stop = run.StopFlag(device, cfg.train.check_every)
    bar = tqdm(total=sched.plan.total_steps, initial=step, disable=not rt.is_main, dynamic_ncols=True, mininterval=2)
    window, first = LossWindow(device), step
    for epoch in sched.plan.epoch_range(step // steps_per_epoch):  # online CA-MSE may change the length
        sampler.set_epoch(epoch, skip_steps=step - epoch * steps_per_epoch)
        model.train()
        for batch in loader:
            done, last = step + 1, sched.plan.total_steps
            logs = done % cfg.train.log_every == 0 or done >= last
            saves = (done % steps_per_epoch == 0 or done == cfg.train.stop_at_step
                     or (cfg.train.ckpt_every_steps and done % cfg.train.ckpt_every_steps == 0)
                     or snapshot_due(done))
            # a step that neither logs, saves nor checks reads no device value (train.forbid_sync
            # enforces it after the first step, whose set-up may synchronise)
            quiet = not (logs or saves or stop.due(done) or sched.plan.due(step)) and step > first
            with host_sync.forbid(device, cfg.train.forbid_sync and quiet):
                loss, shown = train_step(cfg, model, ddp, batch, optimizer, scaler, augment, sched, ledger, step, device)
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
            if logs or step == sched.plan.total_steps:   # online CA-MSE may have moved the last step
                mean_loss, ips = window.flush(cfg.train.batch_size)
                logger.log({"epoch": step / steps_per_epoch, "loss": mean_loss, **shown, "images_per_s": ips,
                            **step_metrics(cfg, model, optimizer, sched, ledger, step), **run.memory_metrics(device),
                            **compiled.metrics()}, step)
                bar.set_postfix(loss=f"{mean_loss:.4f}", ips=f"{ips:.0f}")
            if cfg.train.ckpt_every_steps and step % cfg.train.ckpt_every_steps == 0:
                save(epoch)
            snapshots(epoch)
            if step == cfg.train.stop_at_step or stop_requested:
                save(epoch)
                bar.close()
                logger.close()
                raise run.Stopped(step, stop.signum if stop_requested else None)
            if step >= sched.plan.total_steps:  # a train.budget run ends inside its last epoch
                break
        done = epoch + 1
        if cfg.knn.every_epochs and done % cfg.knn.every_epochs == 0 and done < sched.plan.epochs:
            logger.log({"epoch": float(done), "knn_top1": knn()}, step)
        snap = cfg.train.snapshot_every_epochs and done % cfg.train.snapshot_every_epochs == 0
        save(done, snapshot=f"ckpt_{done:04d}.pt" if snap else None)
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
