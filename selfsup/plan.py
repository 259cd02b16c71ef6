"""The plan of a train_ssl.py run and its cost accounting.

`plan(cfg)` is `train_ssl.py --plan`: the run an experiment file describes, resolved without
data or training (common/plan.py holds what the scripts' plans share): steps and epochs for the
dataset its `paper:` section names, the schedules as stages, warm-up as it is actually run,
sample-cost units, analytical PFLOPs counted on meta tensors, and the speed-up against
paper.baseline. `run_summary` is the same accounting for a finished run, from its FLOP ledger.
"""
import json
import os

import numpy as np
import torch

from accel import cost, hard_augment
from common import plan as planning
from common import schedules
from common.config import ConfigError, load_config
from data.augment import train_resolution
from selfsup.build import build_model
from selfsup.config import check_ssl_config, ssl_defaults
from selfsup.schedules import build_schedules


def plan(cfg, config_file=None, baseline=True, count_flops=True):
    """--plan of this config (module docstring)."""
    check_ssl_config(cfg)
    n_images, source = planning.dataset_size(cfg)
    steps_per_epoch = n_images // cfg.train.batch_size
    if steps_per_epoch == 0:
        raise ConfigError(f"train.batch_size={cfg.train.batch_size} exceeds the {n_images} training images")
    model_key = json.dumps({k: cfg[k] for k in ("model", "method", "interloss")}, sort_keys=True, default=str)
    model, blockwise = planning.meta_model(model_key, lambda: build_model(cfg))
    sched = build_schedules(cfg, model, steps_per_epoch)
    comp, length, batch = sched.compression, sched.length, cfg.train.batch_size
    out = {"file": config_file, "script": "train_ssl.py", "method": cfg.method.name, "arch": cfg.model.arch,
           "dataset": source, "train_images": n_images, "global_batch": batch, "steps_per_epoch": steps_per_epoch,
           "steps": length.total_steps, "epochs": length.total_steps / steps_per_epoch,
           "warmup_steps": warmup_as_run(cfg, length)}
    if comp.illustrative:   # a placeholder schedule: say so wherever the plan is read (text and JSON)
        out["illustrative_schedule"] = f"{cfg.accel.compression.schedule} is a placeholder, not a measured CA-MSE schedule"
    # every step's cost is set by (resolution, compression stage): count each pair once, on meta tensors
    groups = planning.runs(np.stack([sched.resolution, comp.d_q, comp.p_q, comp.d_k, comp.p_k], 1))
    n_views, n_local = hard_augment.views_trained(cfg), cfg.data.local_views
    train = selection = units = 0.0
    for t, n in groups.values():
        res = int(sched.resolution[t])
        if comp.vit:
            units += n * comp.units(t, res, batch, n_views, n_local)
        if blockwise or not count_flops:   # blockwise: the cost depends on the block drawn each step
            continue
        f_train, f_sel = step_flops(cfg, res, comp.compression(t, torch.Generator()))
        train, selection = train + n * batch * f_train, selection + n * batch * f_sel
    if count_flops and not blockwise:
        out["train_pflops"], out["selection_pflops"] = train / 1e15, selection / 1e15
    if comp.vit:
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
    if comp.active:
        columns.update(drop=comp.d_q, patch=comp.p_q, key_drop=comp.d_k, key_patch=comp.p_k)
    warm = np.arange(length.total_steps) < out["warmup_steps"]
    stage_keys = ["resolution"] + (["drop", "patch", "key_drop", "key_patch"] if comp.active else [])
    out["stages"] = planning.stage_table(steps_per_epoch, dict(columns, warmup=warm), stage_keys + ["warmup"])
    return out


def warmup_as_run(cfg, length):
    """Steps until the lr stops rising. With train.budget the lr follows the fraction of budget
    spent (RunLength.follow), so cheap compressed steps stretch the warm-up past its step count:
    the first step whose progress reaches the warm-up's share."""
    w = schedules.warmup_steps_of(cfg.optim, length.total_steps, length.steps_per_epoch)
    return int(np.searchsorted(length.progress * length.total_steps, w, side="left")) if w else 0


def step_flops(cfg, res, compression):
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
        return model, planning.inputs(hard_augment.views_loaded(cfg), b, views_res, device)

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


def run_summary(cfg, sched, ledger, local_batch):
    """Training compute of the whole run, its speed-up over full resolution, budget units."""
    out = {"train_pflops": ledger.global_total("train") / 1e15}
    out.update(speedup_vs_full_resolution(ledger, sched.resolution, train_resolution(cfg), local_batch,
                                          cfg.accel.hard_augment))
    if sched.compression.vit:
        out["budget_units"] = ledger.global_total("budget_units")
    if sched.compression.online:
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
