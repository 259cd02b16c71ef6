"""The config tree of the self-supervised scripts (train_ssl.py, lr_finder.py, linear_eval.py,
grad_error.py): the shared sections of common/config.py plus multi-crop views, sample-cost budgets,
the SSL methods' own keys (method.<name>.*, declared in selfsup/<name>.py), the accelerations
(accel.*), intermediate losses (interloss.*) and the online kNN monitor (knn.*). Each default
lives here once; YAML files and `key.sub=value` override it.
"""
from common.config import SHARED, ConfigError, compose
import selfsup

# data: extra views per image for the SSL loader (data/multiview.py)
SSL_DATA = {
    "num_views": 2,               # views per image delivered by the loader (global views)
    # Multi-crop (SwAV, DINO): this many extra small views per image at local_crop_size, from
    # RandomResizedCrop areas in local_crop_scale; they stay at that size whatever the
    # resolution schedule does to the global views, and Hard Augment does not rank them.
    "local_views": 0,
    "local_crop_size": 96,
    "local_crop_scale": [0.05, 0.14],
}

# train: run length in sample-cost units (ViT sequence compression)
SSL_TRAIN = {
    # >0: train for this many sample-cost units (NeurIPS'24 Table 1, ViTs only) instead of
    # train.epochs; the step count follows up front from the compression schedule's per-step
    # cost, and the lr schedule (warm-up included) follows the fraction of budget spent
    "budget": 0.0,
    # also keep ckpt_pNNN.pt when the run has done these fractions of its training (of train.budget
    # in budget runs; 0 = before the first step): CA-MSE's checkpoints at 0, 25, 50, 75 and 100 %
    # (NeurIPS'24 sec. 6.3; grad_error.py), e.g. [0, 0.25, 0.5, 0.75, 1.0]
    "snapshot_fractions": [],
    # exactness checks: weights, views and losses in float64 (CPU). A 2-rank run then computes the
    # 1-rank update to ~1e-12 instead of float32 rounding noise (tests/test_training.py)
    "float64": False,
}

ACCEL = {
    # WACV'23 Super Progressive Learning (accel/progressive.py): resolution and colour
    # magnitude follow per-step schedules. super: full resolution (data.crop_size) during the
    # lr warm-up (optim.warmup_epochs), then r_min rising in multiples of `step` to
    # data.crop_size as the inverse of the F1-CLR annealing; plain: the same rise from step 0
    # in equal stages (Progressive Learning, Fig. 3 right); none: fixed.
    "progressive": {
        "mode": "none",
        "r_min": 96,
        "step": 32,
        "m_min": 4.0,
        "m_max": 6.0,
    },
    # WACV'23 Hard Augment (accel/hard_augment.py): `views` views per image; a no-grad pass at
    # r_sel ranks the views(views-1)/2 pairs by the method's per-sample loss; the hardest pair
    # per sample is trained on at the current resolution (Eq. 10).
    "hard_augment": {
        "enabled": False,
        "views": 6,
        "r_sel": 64,
        "pick": "hard",           # hard | easy | random (random is the control)
        "extra_targets": False,   # Table 9: the unselected low-resolution views as extra targets
    },
    # NeurIPS'24 ViT sequence compression (accel/token_dropout.py, models/flexi_patch.py,
    # accel/compression.py): token dropout d keeps round((1-d) N) patch tokens per sample;
    # patch size q resizes the patch kernel (Eq. 3's pseudo-inverse). The query setting acts on
    # the online encoder, the key setting on a momentum target (MoCo v3, DINO); methods without
    # a target (SimCLR) compress every view with the query setting (symmetric). DINO's local
    # crops are never compressed.
    "compression": {
        "drop_ratio": 0.0,        # query token dropout d
        "patch_size": 0,          # query patch size q; 0 = model.patch_size
        "key_drop_ratio": 0.0,    # key (momentum target) token dropout; 0 = full key (asymmetric, Table 2a)
        "key_patch_size": 0,      # key patch size; 0 = the query's (symmetric patch scaling, Table 2c)
        "schedule": None,         # YAML file: fraction of training -> stage (grad_error.py writes it)
        # set by the run, recorded in config.yaml: the schedule file says `illustrative: true`
        # (a placeholder, not a measured CA-MSE schedule; the log prints a warning too)
        "illustrative": False,
        # online CA-MSE (accel/online_camse.py; needs train.budget): every online_every steps,
        # estimate CA-MSE of online_drop_ratios x online_patch_sizes (empty: grad_error.py's
        # default sizes) on that step's batch in sub-batches of online_sub_batch images, switch to
        # the best and re-make the steps the remaining budget buys (common/run_length.py)
        "online": False,
        "online_every": 100,
        "online_drop_ratios": [0.0, 0.25, 0.5, 0.75, 0.9],
        "online_patch_sizes": [],
        "online_sub_batch": 16,
    },
}

INTERLOSS = {
    # Intermediate contrastive losses (selfsup/blockwise.py): a head and the method's loss
    # after each ResNet block. Switched on by any of aux_losses / partial_backprop / hard_pairs.
    "aux_losses": False,          # every block's loss, every step (mean), full back-propagation
    "partial_backprop": False,    # Algorithm 1: one block loss per step, forward stops there
    "loss_probs": [],             # probabilities of blocks 1..n (default uniform)
    "bp_scheme": "to_input",      # to_input | nearby | skipping (Table 4; accel/partial_backprop.py)
    "nearby_blocks": 2,           # nearby: blocks back-propagated, ending at the drawn one
    "hard_pairs": False,          # Eq. 4: hardest of M x M feature-map crop pairs goes on
    "pair_blocks": [1, 2],        # after these blocks (the paper: 1 and 2)
    "candidates": 4,              # M (Table 7)
    "crop": 0.75,                 # crop side / map side (the paper: 3/4)
    "pair_pick": "hard",          # hard | easy | random | hard_example (Table 5)
}

KNN = {
    "k": 200,
    "temperature": 0.07,
    "every_epochs": 0,            # online kNN every N epochs (0: only at start and end)
    "batch_size": 256,
}

LR_FINDER = {
    # lr_finder.py: the LR range test (Smith; WACV'23 supplementary C): the learning rate rises
    # exponentially from lr_start to lr_end over `steps` steps (absolute values, not per 256).
    "lr_start": 1e-3,
    "lr_end": 1.0,
    "steps": 200,
    "val_samples": 4096,          # fixed held-out batch (views fixed once) for the validation loss
    "smoothing": 0.9,             # EMA factor of the smoothed curves
    "diverge_factor": 4.0,        # stop once the smoothed training loss exceeds its best by (factor - 1) |best|,
    "diverge_margin": 0.5,        # ... and by at least this much (SSL losses can be negative)
}

EVAL = {
    # linear_eval.py: a linear classifier on the frozen backbone. Defaults: the protocol of the
    # WACV'23 paper / SimSiam (LARS, batch 2048, lr 0.1 x 2048/256 = 0.8, 90 epochs, cosine).
    "epochs": 90,
    "batch_size": 2048,
    "optimizer": "lars",          # lars | sgd
    "lr": 0.1,                    # x eval.batch_size / 256
    "momentum": 0.9,
    "weight_decay": 0.0,
    "augment": True,              # RandomResizedCrop + flip each epoch; false: features computed once
    "crop_scale": [0.08, 1.0],
    "feature": "final",           # final | block1 | block2 | block3 | block4 (pooled stage output)
}


def ssl_defaults():
    """train_ssl.py's tree."""
    return compose(SHARED, data=SSL_DATA, train=SSL_TRAIN, method=selfsup.method_defaults(), accel=ACCEL,
                   interloss=INTERLOSS, knn=KNN)


def lr_finder_defaults():
    """lr_finder.py: a train_ssl.py config plus the range test's own keys."""
    return compose(ssl_defaults(), lr_finder=LR_FINDER)


def linear_eval_defaults():
    """linear_eval.py and grad_error.py start from a train_ssl.py checkpoint's config: its tree
    plus the probe protocol (eval.*)."""
    return compose(ssl_defaults(), eval=EVAL)


def check_ssl_config(cfg):
    """The checks of a train_ssl.py config that no single module owns (each module checks its own
    keys where it reads them: optim.lr_scaling in common/schedules.base_lr, accel.compression in
    accel/compression.py, ...)."""
    ha = cfg.accel.hard_augment
    if ha.enabled and (ha.views < 2 or ha.pick not in ("hard", "easy", "random")):
        raise ConfigError(f"accel.hard_augment needs views >= 2 and pick hard|easy|random; "
                          f"got views={ha.views}, pick={ha.pick!r}")
    if cfg.data.crop_size <= 0:
        raise ConfigError(f"data.crop_size must be positive, got {cfg.data.crop_size}")
    wd_end = cfg.optim.weight_decay_end
    if wd_end is not None and (isinstance(wd_end, bool) or not isinstance(wd_end, (int, float))):
        raise ConfigError(f"optim.weight_decay_end must be a number or null, got {wd_end!r}")
