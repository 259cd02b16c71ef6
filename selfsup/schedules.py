"""The per-iteration arrays of a train_ssl.py run (DINO's habit): learning rate, momentum and
weight decay, Super Progressive Learning's resolution and magnitude, and NeurIPS'24's
compression stages, all indexed by the global step, with the run's length (common/run_length.py)
that they are made for.

    sched = build_schedules(cfg, model, steps_per_epoch)
    sched.apply(optimizer, step)                     # lr, momentum, weight decay of this step
    res, mag = sched.resolution[step], sched.magnitude[step]
    seq = sched.compression.compression(step, generator)
"""
import dataclasses

import numpy as np

from accel import compression, progressive
from common import schedules
from common.optim import set_weight_decay
from common.run_length import RunLength
from data.augment import train_resolution


@dataclasses.dataclass
class Schedules:
    """Everything indexed by the global step."""
    base_lr: float
    lr: np.ndarray
    momentum: np.ndarray            # F1-CLR / 1-cycle anti-phased momentum, or None
    weight_decay: np.ndarray        # None: constant
    resolution: np.ndarray          # Super Progressive Learning (WACV'23 sec. 3.2)
    magnitude: np.ndarray
    length: RunLength               # steps, epochs, progress (train.epochs or train.budget)
    compression: compression.CompressionSchedule   # NeurIPS'24 sequence compression of step t
    raw: tuple                      # (lr, momentum, weight decay) before following the budget

    def apply(self, optimizer, step):
        for g in optimizer.param_groups:
            g["lr"] = (self.base_lr if g.get("fix_lr") else float(self.lr[step])) * g.get("lr_mult", 1.0)
            if self.momentum is not None:
                g["momentum"] = float(self.momentum[step])
        if self.weight_decay is not None:
            set_weight_decay(optimizer, float(self.weight_decay[step]))

    def switched(self, model):
        """Online CA-MSE switched the compression and re-made the run length
        (accel/online_camse.py): re-sample what follows the budget at the new fractions, and the
        method's per-step arrays (EMA momentum) at the new length. (train.budget needs
        accel.progressive.mode=none: resolution and magnitude are constant.)"""
        self.lr, self.momentum, self.weight_decay = map(self.length.follow, self.raw)
        n = self.length.total_steps
        self.resolution, self.magnitude = np.full(n, self.resolution[0]), np.full(n, self.magnitude[0])
        model.prepare(n, self.length.steps_per_epoch)
        model.follow_budget(self.length.follow)

    def resume(self, compression_state, model):
        """Replay a checkpoint's online switches (none: nothing to do)."""
        if compression_state and compression_state.get("switches"):
            self.compression.load_state_dict(compression_state)
            self.switched(model)

    def metrics(self, cfg, model, optimizer, ledger, step):
        """The scheduled values of the step just taken (`step` steps done), for metrics.jsonl."""
        out = {"lr": float(self.lr[step - 1]), "train_pflops": ledger.global_total("train") / 1e15}
        comp = self.compression
        if comp.vit:  # NeurIPS'24 sample-cost units (Table 1), cumulative over ranks
            out["budget_units"] = ledger.global_total("budget_units")
            if comp.active:
                out.update(zip(("drop_ratio", "patch_size", "key_drop_ratio", "key_patch_size"), comp.stage(step - 1)))
            if comp.online:  # the estimates' own passes (charged to budget_units too)
                out["online_units"] = ledger.global_total("online_units")
                out["online_pflops"] = ledger.global_total("online") / 1e15
        if "momentum" in optimizer.param_groups[0]:  # SGD / LARS (AdamW has betas)
            out["momentum"] = optimizer.param_groups[0]["momentum"]
        if self.weight_decay is not None:
            out["weight_decay"] = float(self.weight_decay[step - 1])
        if cfg.accel.hard_augment.enabled:
            out["selection_pflops"] = ledger.global_total("selection") / 1e15
        return dict(out, **model.schedule_values())  # EMA momentum, teacher temperature, ...


def build_schedules(cfg, model, steps_per_epoch):
    comp = compression.CompressionSchedule(cfg, model, cfg.train.batch_size)
    cfg.accel.compression.illustrative = comp.illustrative   # recorded in config.yaml
    # train.epochs, or train.budget sample-cost units walked over the compression stages' costs
    length = comp.run_length(steps_per_epoch)
    comp.follow(length)
    total = length.total_steps
    base_lr = schedules.base_lr(cfg.optim, cfg.train.batch_size)
    lr, momentum = schedules.build_lr_schedule(cfg.optim, total, steps_per_epoch, base_lr)
    wd = None if cfg.optim.weight_decay_end is None else \
        schedules.cosine(total, cfg.optim.weight_decay, float(cfg.optim.weight_decay_end))
    # with a budget, warm-up and decay follow the fraction of budget spent (identity otherwise)
    raw = (lr, momentum, wd)
    lr, momentum, wd = map(length.follow, raw)
    warmup = schedules.warmup_steps_of(cfg.optim, total, steps_per_epoch)
    res, mag = progressive.build_progressive(cfg.accel.progressive, total, warmup, train_resolution(cfg),
                                             cfg.augment.magnitude)
    return Schedules(base_lr, lr, momentum, wd, res, mag, length, comp, raw)


def step_shapes(cfg, sched):
    """How many distinct input shapes the training steps produce (train.compile's graphs):
    resolutions x compression stages, plus Hard Augment's selection pass and multi-crop's small
    views at their own sizes."""
    c = sched.compression
    stages = np.unique(np.stack([sched.resolution, c.d_q, c.p_q, c.d_k, c.p_k], 1), axis=0)
    return len(stages) + int(cfg.accel.hard_augment.enabled) + int(cfg.data.local_views > 0)
