"""`--plan`: what an experiment file will do, resolved without data and without training.

A plan is a dict: steps, epochs, steps per epoch for the dataset the file's `paper:` section
names, the per-step schedules summarised as a short table of stages, sample-cost budget units,
analytical training (and selection) petaFLOPs, and the speed-up against the file's baseline. The
scripts build it (selfsup/plan.py, train_supervised.plan); this module holds what they share:
dataset sizes, FLOP counting on meta tensors (shapes only: ResNet-50 or ViT-B at 224 px in well
under a second, memoised per shape), the stage table and the printing.
"""
import json

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from common.config import ConfigError

# Training-split sizes of the datasets experiment files name (paper.dataset): ImageNet-1k,
# ImageNet-100 (the CMC class list), Imagenette (full-size v2), CIFAR-10, Food-101, Places365-
# Standard, KITTI (Eigen-Zhou training frames).
TRAIN_IMAGES = {"imagenet": 1281167, "imagenet100": 126689, "imagenette": 9469, "cifar10": 50000,
                "food101": 75750, "places365": 1803460, "kitti": 39810}
CLASSES = {"imagenet": 1000, "imagenet100": 100, "imagenette": 10, "cifar10": 10, "food101": 101,
           "places365": 365}


def dataset_size(cfg):
    """(training images, where the figure comes from) for the file's dataset."""
    paper = cfg.get("paper") or {}
    data = cfg.data
    if data.name == "synthetic":
        return data.synthetic_train_size, "data.synthetic_train_size"
    name = paper.get("dataset")
    if name not in TRAIN_IMAGES:
        raise ConfigError(f"--plan needs paper.dataset (one of {', '.join(TRAIN_IMAGES)}) for data.name={data.name}")
    n = TRAIN_IMAGES[name]
    per_class = data.get("subset_per_class", 0)
    if per_class and name in CLASSES:
        return min(n, per_class * CLASSES[name]), f"{name}, data.subset_per_class={per_class}"
    return n, name


_FLOPS = {}


def flops(key, fn, setup):
    """FLOPs of fn(*setup(device)) (forward and whatever backward it runs), counted once per key;
    setup (uncounted) builds the model and inputs on `device`: the meta device first, so nothing
    is computed; the CPU (a real, small computation) for the rare code that needs values."""
    if key not in _FLOPS:
        for device in ("meta", "cpu"):
            try:
                args = setup(device)
                with FlopCounterMode(display=False) as counter:
                    fn(*args)
                break
            except (NotImplementedError, RuntimeError):
                if device == "cpu":
                    raise
        _FLOPS[key] = float(counter.get_total_flops())
    return _FLOPS[key]


def runs(keys):
    """Run-length groups of the rows of `keys` [T, K]: {row as tuple: (first index, count)}
    (a few change points, where np.unique would sort every step)."""
    keys = np.asarray(keys)
    change = np.flatnonzero(np.any(keys[1:] != keys[:-1], axis=1)) + 1
    starts, ends = np.concatenate([[0], change]), np.concatenate([change, [len(keys)]])
    out = {}
    for a, b in zip(starts, ends):
        k = tuple(keys[a].tolist())
        first, count = out.get(k, (a, 0))
        out[k] = (first, count + b - a)
    return out


_MODELS = {}


def meta_model(key, build):
    """build() on the meta device (shapes only), once per key: plans of many files share models."""
    if key not in _MODELS:
        with torch.device("meta"):
            _MODELS[key] = build()
    return _MODELS[key]


def stage_table(steps_per_epoch, columns, keys):
    """Consecutive steps whose `keys` values (arrays in `columns`) are equal form a stage; per
    stage the first and last value of every column. Returns a list of row dicts."""
    total = len(next(iter(columns.values())))
    if total == 0:
        return []
    stacked = np.stack([np.asarray(columns[k], dtype=np.float64) for k in keys], 1)
    change = np.flatnonzero(np.any(stacked[1:] != stacked[:-1], axis=1)) + 1
    starts = np.concatenate([[0], change])
    ends = np.concatenate([change, [total]])
    rows = []
    for a, b in zip(starts, ends):
        row = {"steps": f"{a}-{b - 1}", "epochs": f"{a / steps_per_epoch:.4g}-{b / steps_per_epoch:.4g}"}
        for name, arr in columns.items():
            first, last = float(arr[a]), float(arr[b - 1])
            row[name] = f"{first:.4g}" if np.isclose(first, last) else f"{first:.4g}->{last:.4g}"
        rows.append(row)
    return rows


def print_plan(plan, as_json=False):
    if as_json:
        print(json.dumps(plan, indent=1, default=float))
        return
    for k, v in plan.items():
        if k != "stages":
            print(f"{k:>22}: {v:.6g}" if isinstance(v, float) else f"{k:>22}: {v}")
    rows = plan.get("stages", [])
    if rows:
        cols = list(rows[0])
        width = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in cols}
        print("  ".join(c.rjust(width[c]) for c in cols))
        for r in rows:
            print("  ".join(str(r[c]).rjust(width[c]) for c in cols))


def speedups(plan, base):
    """Speed-up of `plan` against its baseline's plan, by each measure the papers use."""
    out = {"speedup_steps": base["steps"] / plan["steps"]}
    if plan.get("train_pflops") and base.get("train_pflops"):
        mine = plan["train_pflops"] + plan.get("selection_pflops", 0.0)
        theirs = base["train_pflops"] + base.get("selection_pflops", 0.0)
        out["speedup_flops"] = theirs / mine
    if plan.get("budget_M") and base.get("budget_M"):
        out["speedup_budget"] = base["budget_M"] / plan["budget_M"]
    return out


def inputs(n, batch, res, device="meta"):
    """n image batches [batch, 3, res, res]: shapes only on meta, zeros elsewhere."""
    return [torch.zeros(batch, 3, res, res, device=device) for _ in range(n)]
