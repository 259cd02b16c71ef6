"""Compression schedules and sample-cost budgets for ViT pretraining (NeurIPS'24 sec. 4-6).

A compression *stage* is (query drop ratio, query patch size, key drop ratio, key patch size).
`accel.compression` gives one stage (constant compression, Tables 2-3) or a schedule file
(the CA-MSE-optimal schedule of sec. 6.3, written by grad_error.py):

    # any comment
    schedule:
      - {start: 0.0,   drop_ratio: 0.5,  patch_size: 30}
      - {start: 0.125, drop_ratio: 0.25, patch_size: 24, key_drop_ratio: 0.0, key_patch_size: 24}
      - ...

`start` is the fraction of training (of the budget, with train.budget) from which the entry
holds. Entries may omit key_*: the key then takes accel.compression.key_drop_ratio and
key_patch_size (0: the query's patch size -- symmetric patch scaling, asymmetric dropout, the
paper's choice for MoCo v3 and DINO, sec. 6.2-6.4).

Like every other schedule the loop reads precomputed per-step arrays. With `train.budget` the
run length is a budget of sample-cost units (Table 1, accel/cost.py) and the number of steps
follows from it up front: the per-step cost of every stage is known, so walking the schedule
(the stage is chosen by the fraction of budget spent so far) gives the step at which the budget
is spent, and the fraction of budget spent before every step (`progress`), which the learning
rate, warm-up included, follows (sec. 6.1: budgets, not epochs, make strategies comparable).
That walk and the run length it gives live in common/run_length.py; this file gives the costs.
"""
import numpy as np
import yaml

from accel import cost, hard_augment, token_dropout
from common.config import ConfigError
from common.run_length import RunLength
from data.augment import train_resolution

KEYS = ("drop_ratio", "patch_size", "key_drop_ratio", "key_patch_size")


def _check_stage(where, d_q, p_q, d_k, p_k):
    for name, d in (("drop_ratio", d_q), ("key_drop_ratio", d_k)):
        if not (isinstance(d, (int, float)) and 0.0 <= d < 1.0):
            raise ConfigError(f"{where}: {name} must be in [0, 1), got {d!r}")
    for name, p in (("patch_size", p_q), ("key_patch_size", p_k)):
        if not (isinstance(p, int) and p > 0):
            raise ConfigError(f"{where}: {name} must be a positive integer, got {p!r}")


TOP_KEYS = ("schedule", "illustrative")


def load_schedule(path):
    """[(start, {drop_ratio, patch_size, [key_drop_ratio, key_patch_size]})] sorted by start."""
    return read_schedule(path)[0]


def read_schedule(path):
    """(entries as load_schedule, illustrative): a file may carry `illustrative: true` at the top
    level, the marker of a placeholder that no CA-MSE measurement produced; the plan reports it."""
    try:
        with open(path) as f:
            data = yaml.safe_load(f)
    except OSError:
        raise ConfigError(f"accel.compression.schedule: cannot read {path}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"accel.compression.schedule: {path} is not valid YAML: {str(e).splitlines()[0]}") from None
    entries = data.get("schedule") if isinstance(data, dict) else None
    if not isinstance(entries, list) or not entries:
        raise ConfigError(f"accel.compression.schedule: {path} needs a non-empty list under 'schedule:'")
    unknown = set(data) - set(TOP_KEYS)
    if unknown:
        raise ConfigError(f"accel.compression.schedule {path}: unknown top-level key(s) {sorted(unknown)}; "
                          f"allowed: {', '.join(TOP_KEYS)}")
    illustrative = data.get("illustrative", False)
    if not isinstance(illustrative, bool):
        raise ConfigError(f"accel.compression.schedule {path}: illustrative must be true or false, got {illustrative!r}")
    out = []
    for i, e in enumerate(entries):
        where = f"accel.compression.schedule {path}, entry {i}"
        if not isinstance(e, dict) or "start" not in e:
            raise ConfigError(f"{where}: expected a mapping with 'start', got {e!r}")
        unknown = set(e) - set(KEYS) - {"start"}
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {sorted(unknown)}; allowed: start, {', '.join(KEYS)}")
        if not 0.0 <= float(e["start"]) <= 1.0:
            raise ConfigError(f"{where}: start must be a fraction in [0, 1], got {e['start']!r}")
        out.append((float(e["start"]), {k: e[k] for k in KEYS if k in e}))
    out.sort(key=lambda s: s[0])
    if out[0][0] != 0.0:
        raise ConfigError(f"accel.compression.schedule {path}: the first entry must start at 0.0, not {out[0][0]}")
    return out, illustrative


def save_schedule(path, entries, comment="", illustrative=False):
    """Write [(start, {drop_ratio, patch_size, ...})] in the format load_schedule reads."""
    rows = [dict(start=float(s), **{k: (float(v) if "drop" in k else int(v)) for k, v in e.items()})
            for s, e in entries]
    with open(path, "w") as f:
        for line in comment.splitlines():
            f.write(f"# {line}\n")
        if illustrative:
            f.write("illustrative: true\n")
        yaml.safe_dump({"schedule": rows}, f, sort_keys=False, default_flow_style=None)


def stages(comp_cfg, model_patch):
    """[(start, (d_q, p_q, d_k, p_k))] with every patch size resolved (0 -> model / query)."""
    raw = read_schedule(comp_cfg.schedule)[0] if comp_cfg.schedule else [(0.0, {})]
    out = []
    for start, e in raw:
        d_q = e.get("drop_ratio", comp_cfg.drop_ratio)
        p_q = e.get("patch_size", comp_cfg.patch_size) or model_patch
        d_k = e.get("key_drop_ratio", comp_cfg.key_drop_ratio)
        p_k = e.get("key_patch_size", comp_cfg.key_patch_size) or p_q
        where = f"accel.compression.schedule entry at {start}" if comp_cfg.schedule else "accel.compression"
        _check_stage(where, d_q, p_q, d_k, p_k)
        out.append((start, (float(d_q), int(p_q), float(d_k), int(p_k))))
    return out


def is_active(stage_list, model_patch):
    return any(d_q > 0 or d_k > 0 or p_q != model_patch or p_k != model_patch
               for _, (d_q, p_q, d_k, p_k) in stage_list)


def per_step(stage_list, progress):
    """Per-step arrays (d_q, p_q, d_k, p_k) for the fractions of training `progress`."""
    starts = np.array([s for s, _ in stage_list])
    idx = np.maximum(np.searchsorted(starts, np.asarray(progress), side="right") - 1, 0)
    table = np.array([st for _, st in stage_list], dtype=np.float64)
    rows = table[idx]
    return rows[:, 0], rows[:, 1].astype(int), rows[:, 2], rows[:, 3].astype(int)


def image_cost(res, stage, encoded, n_local=0, L_small=0.0):
    """Sample-cost units of one image in one step (cost.vit_image_cost) under `stage`, with
    L = sequence_length + 1 (the class token). encoded = (query views, key views) the method
    computes per image (selfsup/base.py `encoded_views`); keys use the key setting."""
    d_q, p_q, d_k, p_k = stage
    L_q = 1 + cost.sequence_length(res, p_q, d_q)
    L_k = 1 + cost.sequence_length(res, p_k, d_k)
    return cost.vit_image_cost(encoded[0], encoded[1], L_q, L_k, n_local, L_small)


def default_patch_sizes(model_patch, crop):
    """Fig. 4's sizes {16, 20, 24, 30, 40, 48} relative to patch 16, scaled to the model's patch
    size, keeping those that divide the crop (grad_error.py's grid, online CA-MSE's candidates)."""
    sizes = sorted({int(round(s * model_patch / 16)) for s in (16, 20, 24, 30, 40, 48)})
    return [s for s in sizes if crop % s == 0]


def candidate_stage(comp_cfg, has_target, d, p):
    """The stage a CA-MSE candidate (query drop d, query patch p) trains with: the key follows
    accel.compression's key settings (key_patch_size 0: the query's patch); a method without a
    target compresses every view alike."""
    if not has_target:
        return (float(d), int(p), float(d), int(p))
    return (float(d), int(p), float(comp_cfg.key_drop_ratio), int(comp_cfg.key_patch_size or p))


class CompressionSchedule:
    """Which compression step t runs, and what it costs: the stage of step t (a
    token_dropout.QueryKey for the method's forward, `compression`), its FLOP-ledger key, and its
    sample-cost units. The stage of a step is chosen by how far along the run is
    (common/run_length.py: the fraction of training, of the budget with train.budget), so the
    per-step arrays are made for a RunLength (`follow`). The backbone is a ViT when it says so
    (`is_vit`, models/vit.py); whether the method has a momentum target is its `has_target`, and
    which views it encodes per image its `encoded_views` (selfsup/).

    units(t) = images x cost.vit_image_cost(...) with L = sequence_length(res, q, d) + 1 (the
    class token; Table 1's L's include it) for the query and key of the stage at step t.

    `illustrative`: the schedule file says it is a placeholder (`illustrative: true`), not a
    measured CA-MSE schedule; `warnings()` says so for the run's log and the run records it in
    config.yaml (accel.compression.illustrative). With accel.compression.online the stage can
    switch mid-run (`switch`, accel/online_camse.py); `state_dict` carries those switches."""

    def __init__(self, cfg, method, global_batch):
        self.cfg = cfg
        self.vit = bool(getattr(method.backbone, "is_vit", False))
        self.has_target = bool(method.has_target)
        self.encoded_views = method.encoded_views
        self.model_patch = cfg.model.patch_size
        comp = cfg.accel.compression
        self.stages = stages(comp, self.model_patch)
        self.illustrative = bool(comp.schedule) and read_schedule(comp.schedule)[1]
        self.online = bool(comp.online)
        self.active = is_active(self.stages, self.model_patch) or self.online
        self.res = res = train_resolution(cfg)
        self.n_views = hard_augment.views_trained(cfg)
        self.n_local = cfg.data.local_views
        self.global_batch = global_batch
        self.L_small = (1 + cost.sequence_length(cfg.data.local_crop_size, self.model_patch)) if self.vit else 0.0
        if self.active or cfg.train.budget:
            if not self.vit:
                raise ConfigError(f"accel.compression and train.budget need a ViT backbone (model.arch=vit_*), "
                                  f"not model.arch={cfg.model.arch}")
            for _, (_, p_q, d_k, p_k) in self.stages:
                if not self.has_target and (d_k or p_k != p_q):
                    raise ConfigError(f"method.name={cfg.method.name} has no momentum target: every view is "
                                      f"compressed with the query setting, so accel.compression.key_drop_ratio / "
                                      f"key_patch_size must stay 0 (got {d_k}, {p_k})")
                for name, p in (("patch_size", p_q), ("key_patch_size", p_k)):
                    if res % p:
                        raise ConfigError(f"accel.compression.{name}={p} does not divide the training resolution "
                                          f"{res} (data.crop_size / augment.resolution)")
        if self.online and (not cfg.train.budget or comp.online_every < 1):
            raise ConfigError("accel.compression.online=true needs train.budget (it re-plans the steps the "
                              f"remaining budget buys) and online_every >= 1 (got {comp.online_every})")
        if cfg.train.budget and cfg.accel.progressive.mode != "none":
            raise ConfigError("train.budget with accel.progressive.mode != none is not supported: the step "
                              "count is planned at one resolution")
        self.switches = []

    def run_length(self, steps_per_epoch):
        """The run's length: train.budget sample-cost units, walked over this schedule's per-step
        costs, or train.epochs."""
        if self.cfg.train.budget:
            costs = [(start, self.step_units(st)) for start, st in self.stages]
            return RunLength.of_budget(self.cfg.train.budget, steps_per_epoch, costs)
        return RunLength.of_epochs(self.cfg.train.epochs, steps_per_epoch)

    def follow(self, length):
        """Make the per-step stages for `length` (its progress picks each step's entry)."""
        self.length = length
        self.d_q, self.p_q, self.d_k, self.p_k = per_step(self.stages, length.progress)
        for step, st, _ in self.switches:   # online switches hold from their step on
            self.d_q[step:], self.p_q[step:], self.d_k[step:], self.p_k[step:] = st
        return self

    def step_units(self, stage):
        """Sample-cost units of one step (the whole global batch) under `stage`."""
        return self.global_batch * self.image_cost(self.res, stage)

    def warnings(self):
        """Lines the run prints at start (and tests read)."""
        if not self.illustrative:
            return []
        return [f"WARNING: accel.compression.schedule={self.cfg.accel.compression.schedule} is ILLUSTRATIVE "
                "(a placeholder with the paper's shape, not a measured CA-MSE schedule); derive one with "
                "grad_error.py --schedule-out (docs/neurips2024.md)"]

    def due(self, step):
        """Whether online CA-MSE re-estimates before this step."""
        return self.online and step % self.cfg.accel.compression.online_every == 0

    def switch(self, step, stage, extra_units=0.0):
        """Switch to `stage` from `step` on; the run length follows: the budget left after
        `extra_units` more are spent (the estimate's own passes) buys ceil(left / step cost)
        steps (RunLength.replan). Returns the number of steps that remain."""
        self.length.replan(step, extra_units, self.step_units(stage))
        self.switches = [sw for sw in self.switches if sw[0] < step] + [(step, tuple(stage), float(extra_units))]
        self.follow(self.length)
        return self.length.total_steps - step

    def state_dict(self):
        return {"switches": [(int(s), list(st), float(extra)) for s, st, extra in self.switches]}

    def load_state_dict(self, state):
        """Replay the online switches of a checkpoint (resume)."""
        for step, st, *extra in (state or {}).get("switches", []):
            self.switch(step, (float(st[0]), int(st[1]), float(st[2]), int(st[3])), extra[0] if extra else 0.0)

    def image_cost(self, res, stage, n_views=None, n_local=None):
        n_views = self.n_views if n_views is None else n_views
        n_local = self.n_local if n_local is None else n_local
        return image_cost(res, stage, self.encoded_views(n_views, n_local), n_local, self.L_small)

    def stage(self, step):
        return (float(self.d_q[step]), int(self.p_q[step]), float(self.d_k[step]), int(self.p_k[step]))

    def key(self, step):
        """Extra FLOP-ledger key: compressed steps are measured apart from full ones."""
        return ("compression",) + self.stage(step) if self.active else ()

    def compression(self, step, generator):
        """The `compression` argument of the method's forward at this step: a QueryKey (the query
        setting for the online backbone, the key setting for the momentum target), or None when
        compression is off. `generator` draws the dropped tokens."""
        if not self.active:
            return None
        d_q, p_q, d_k, p_k = self.stage(step)
        return token_dropout.QueryKey(token_dropout.SeqCompression(d_q, p_q, generator),
                                      token_dropout.SeqCompression(d_k, p_k, generator))

    def units(self, step, res, images, n_views, n_local):
        """Sample-cost units of `images` images at this step (0 for non-ViT backbones)."""
        if not self.vit:
            return 0.0
        return images * self.image_cost(res, self.stage(step), n_views, n_local)
