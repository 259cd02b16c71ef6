#!/usr/bin/env python
"""Supervised monocular depth with BN or Unsupervised Batch Normalization (thesis 2023 ch. 2).

    python train_depth_ubn.py                       # yaml/ubn/quickstart.yaml: procedural scenes, CPU minutes
    python train_depth_ubn.py --toy spiral          # the spiral study of sec. 2.3.3 (toys/spiral.py)
    torchrun --nproc_per_node=8 train_depth_ubn.py --config yaml/ubn/kitti_ubn_f0.25.yaml data.root=/data/kitti_raw

A DispNet-style network (models/dispnet.py, Eq. 2.5) is trained with a loss at each of its 4
output scales against the ground truth resized to that scale. data.labeled_fraction keeps ground
truth on a regular subset of the training frames (data/depth.py, Fig. 2.6); every training image
stays available as unlabeled data. ubn.enabled=false is the BN baseline: it trains on the labeled
frames alone. ubn.enabled=true runs UBN's two steps (models/ubn.py): BN statistics from the labeled
batch plus an unlabeled batch, then forward-backward of the labeled batch with those statistics.
An epoch is one pass over all training images (len(train) // batch steps) whatever the labeled
fraction, so every fraction gets the same number of steps; the labeled stream cycles through the
labeled frames. Re-running the same command resumes from output_dir/checkpoint.pt.
"""
import os
import sys

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Subset

from common import checkpoint, dist, host_sync, precision, run
from common import plan as planning
from common.config import SHARED, ConfigError, parse_cli
from common.logger import LossWindow
from common.optim import implementation as optimizer_impl
from common.run_length import RunLength
from data import ignore_stop_signals
from data.depth import DepthDataset, build_depth_images, labeled_indices
from data.sampler import EpochSampler
from evaluation.depth_metrics import NAMES, depth_metrics, summarize
from models import ubn
from models.batchnorm import convert_sync_bn
from models.dispnet import build_dispnet
from toys import spiral

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_CONFIG = os.path.join(HERE, "yaml", "ubn", "quickstart.yaml")

# This script's own defaults tree: the thesis's KITTI recipe (sec. 2.4); yaml/ubn/quickstart.yaml
# shrinks it to CPU scale.
DEPTH_DEFAULTS = {
    "output_dir": "runs/ubn_depth",
    "paper": None,                        # the paper row of an experiment file (common/config.py SHARED)
    "data": {
        "name": "synthetic",              # synthetic (data/synthetic_depth.py) | kitti (data/kitti.py)
        "root": None,                     # kitti: the KITTI raw folder (see data/kitti.py for the layout)
        "train_split": "splits/eigen_zhou/train_files.txt",   # kitti: relative to root, or a path
        "test_split": "splits/eigen/test_files.txt",
        "height": 256,                    # sec. 2.4: 256 x 832
        "width": 832,
        "labeled_fraction": 1.0,          # Fig. 2.6: share of training frames that keep ground truth
        "synthetic_train_size": 4096,
        "synthetic_test_size": 512,
        "flip_prob": 0.5,                 # horizontal flip of image and depth
        "workers": 2,                     # loader processes per stream and rank
    },
    "model": {
        "width": 32,                      # SfMLearner DispNet: encoder 32 ... 512 channels
        "levels": 7,                      # stride-2 encoder levels (7 in SfMLearner)
        "scales": 4,                      # predictions at 1, 1/2, 1/4, 1/8 resolution
        "scale": 0.4,                     # Eq. 2.5: s
        "min_disp": 0.0125,               # Eq. 2.5: m (max depth 1/m = 80 m)
    },
    "optim": {
        "lr": 2e-4,                       # sec. 2.4: Adam, lr 0.0002 (absolute, not per 256)
        "betas": [0.9, 0.999],
        "weight_decay": 0.0,
    },
    "ubn": {
        "enabled": False,                 # false: BN on labeled batches; true: UBN (Fig. 2.1, Eq. 2.4)
        "unlabeled_batch_size": 0,        # global size of the unlabeled batch y; 0 = train.batch_size
        "grad_through_stats": False,      # false: step 1's statistics are constants in step 2 (models/ubn.py)
        "reestimate_batches": 0,          # >0: before each evaluation, BN running statistics = the plain
                                          # average over this many training batches ("precise BN",
                                          # models/ubn.reestimate_running_stats); also for the BN baseline
    },
    "loss": {
        "kind": "l1",                     # l1: |D - D*|; log_l1: |log D - log D*| (valid pixels, mean)
        "max_depth": 80.0,                # ground truth beyond this is ignored (Eq. 2.5's range)
    },
    "train": {
        "epochs": 160,                    # sec. 2.4
        "batch_size": 128,                # sec. 2.4; global labeled batch, split across ranks
        "seed": 0,
        "device": "auto",
        "sync_bn": False,                 # global-batch BN across ranks (models/batchnorm.py)
        # amp, channels_last, compile, compile_backend, check_every, forbid_sync, allow_changes: as in
        # common/config.py SHARED (one meaning, one default: copied from there below)
        "threads": 0,
        "log_every": 10,
        "ckpt_every_steps": 200,
        "stop_at_step": 0,                # >0: save and exit after this step, as a pre-emption would
        "eval_every_epochs": 10.0,
    },
    "eval": {
        "min_depth": 1e-3,
        "max_depth": 80.0,                # the usual 80 m cap
        "crop": "none",                   # none | garg | eigen (KITTI Eigen split: garg)
        "batch_size": 32,
    },
}
DEPTH_DEFAULTS["train"].update({k: SHARED["train"][k] for k in (
    "amp", "channels_last", "compile", "compile_backend", "check_every", "forbid_sync", "allow_changes")})
MEAN, STD = 0.45, 0.225                   # input normalisation of [0, 1] images


def parse_config(argv):
    return parse_cli(argv, DEPTH_DEFAULTS, DEFAULT_CONFIG, __doc__)


def resize_sparse(gt, size):
    """Ground truth at a prediction's size: the mean of the valid (> 0) pixels in each cell."""
    if tuple(gt.shape[-2:]) == tuple(size):
        return gt
    valid = (gt > 0).float()
    total = F.adaptive_avg_pool2d(gt * valid, size)
    count = F.adaptive_avg_pool2d(valid, size)
    return torch.where(count > 0, total / count.clamp_min(1e-12), torch.zeros_like(total))


def multiscale_loss(depths, gt, kind="l1", max_depth=80.0):
    """Mean over the scales of the mean error on pixels with ground truth (sec. 2.4)."""
    losses = []
    for d in depths:
        g = resize_sparse(gt, d.shape[-2:])
        m = (g > 0) & (g < max_depth)
        if kind == "l1":
            err = (d - g).abs()
        elif kind == "log_l1":
            err = (d.clamp_min(1e-3).log() - g.clamp_min(1e-3).log()).abs()
        else:
            raise ConfigError(f"loss.kind '{kind}' is not one of l1, log_l1")
        losses.append((err * m).sum() / m.sum().clamp_min(1))
    return torch.stack(losses).mean()


def train_loader(dataset, local_batch, cfg, rt, seed_offset):
    """(loader, sampler) of one training stream; run.stream turns it into batches forever, each
    pass a fresh permutation, positioned at the resumed step."""
    seed = cfg.train.seed + seed_offset
    sampler = EpochSampler(len(dataset), local_batch, rt.world, rt.rank, seed=seed)
    # own generator: creating an iterator must not draw from torch's global RNG (the flips'), or a
    # resumed run, which creates its iterators at other steps, would flip differently
    loader = DataLoader(dataset, batch_size=local_batch, sampler=sampler, drop_last=True,
                        num_workers=cfg.data.workers, pin_memory=rt.device.type == "cuda",
                        worker_init_fn=ignore_stop_signals, generator=torch.Generator().manual_seed(seed))
    return loader, sampler


def flip(batch, prob):
    """Horizontal flip of image (and depth) for a random subset of the batch (torch's RNG)."""
    if prob <= 0:
        return batch
    f = (torch.rand(batch["image"].shape[0]) < prob).view(-1, 1, 1, 1)   # drawn on the host
    return {k: torch.where(f.to(v.device, non_blocking=True), v.flip(-1), v) for k, v in batch.items()}


@torch.no_grad()
def evaluate(model, loader, device, cfg):
    model.eval()
    rows = []
    for b in loader:
        pred = model((b["image"].to(device) - MEAN) / STD)[0]
        rows.append(depth_metrics(pred.float().cpu(), b["depth"], cfg.eval.min_depth, cfg.eval.max_depth, cfg.eval.crop))
    model.train()
    per_image = dist.all_gather_variable(torch.cat(rows).to(device)).cpu()
    return summarize(per_image)


def reestimation_batches(dataset, local_batch, n_batches, cfg, rt, device):
    """The first n_batches training batches (inputs only, no flip) of a fixed permutation, seeded
    apart from the training streams: the same batches before every evaluation, so resumed runs
    evaluate the same; more batches than an epoch holds continue into the next permutation."""
    sampler = EpochSampler(len(dataset), local_batch, rt.world, rt.rank, seed=cfg.train.seed + 2)
    loader = DataLoader(dataset, batch_size=local_batch, sampler=sampler, drop_last=True, num_workers=0)
    done, epoch = 0, 0
    while done < n_batches:
        sampler.set_epoch(epoch)
        for b in loader:
            if done == n_batches:
                return
            yield (b["image"].to(device) - MEAN) / STD
            done += 1
        epoch += 1


def on_device(batch, device, channels_last=False):
    """A loader batch on the device (non-blocking copies), images channels-last if asked."""
    out = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
    if channels_last:
        out["image"] = out["image"].contiguous(memory_format=torch.channels_last)
    return out


def train_step(ddp, optimizer, scaler, batch, unlabeled, cfg, device, amp_dtype):
    """One Adam step on the multi-scale loss of the labeled batch. With UBN (`unlabeled` given),
    step 1 takes BN statistics of {x, y}, step 2 forwards x with them (models/ubn.py). Flips run
    on the device (drawn on the host); the loss is computed in float32 under autocast."""
    cl = cfg.train.channels_last
    batch = flip(on_device(batch, device, cl), cfg.data.flip_prob)
    x, gt = (batch["image"] - MEAN) / STD, batch["depth"]
    with precision.autocast(device, amp_dtype):
        if unlabeled is not None:
            y = (flip(on_device(unlabeled, device, cl), cfg.data.flip_prob)["image"] - MEAN) / STD
            depths = ubn.forward(ddp, x, y, cfg.ubn.grad_through_stats)
        else:
            depths = ddp(x)
    loss = multiscale_loss([precision.upcast(d) for d in depths], gt, cfg.loss.kind, cfg.loss.max_depth)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    return loss.detach()


def main(cfg):
    rt = run.setup(cfg.train)
    device = rt.device
    amp_dtype = precision.resolve(cfg.train, device, conv=True)   # train.amp=auto -> bf16 / none
    u_batch = cfg.ubn.unlabeled_batch_size or cfg.train.batch_size
    if cfg.ubn.enabled and u_batch % rt.world:
        raise ConfigError(f"ubn.unlabeled_batch_size={u_batch} is not divisible by the {rt.world} ranks")
    local_b, local_u = cfg.train.batch_size // rt.world, u_batch // rt.world

    # ---- data: labeled frames for the loss; with UBN, unlabeled batches from every training frame
    train_images, test_images = build_depth_images(cfg.data, cfg.train.seed)
    labeled = labeled_indices(train_images, cfg.data.labeled_fraction)
    if len(labeled) < cfg.train.batch_size:
        raise ConfigError(f"{len(labeled)} labeled frames (data.labeled_fraction={cfg.data.labeled_fraction}) "
                          f"are fewer than one batch (train.batch_size={cfg.train.batch_size})")
    loader, sampler = train_loader(DepthDataset(train_images, labeled), local_b, cfg, rt, 0)
    if cfg.ubn.enabled:
        u_loader, u_sampler = train_loader(DepthDataset(train_images, with_depth=False), local_u, cfg, rt, 1)
    if cfg.ubn.reestimate_batches:   # what step 1 (UBN) or the forward (BN) normalises over in training
        reest_ds = DepthDataset(train_images, None if cfg.ubn.enabled else labeled, with_depth=False)
        reest_batch = local_b + (local_u if cfg.ubn.enabled else 0)
    test_ds = DepthDataset(test_images)
    if rt.world > 1:
        test_ds = Subset(test_ds, range(rt.rank, len(test_ds), rt.world))
    test_loader = DataLoader(test_ds, batch_size=cfg.eval.batch_size, shuffle=False, num_workers=0)

    # ---- model and optimizer
    model = build_dispnet(cfg.model)
    if cfg.train.sync_bn and rt.world > 1:
        model = convert_sync_bn(model, device)
    model.to(device, memory_format=torch.channels_last if cfg.train.channels_last else torch.preserve_format)
    ddp = run.wrap_ddp(model, rt)
    compiled = run.Compiled(model, cfg.train, shapes=2)   # training and evaluation size
    # fused on CUDA (one kernel for all parameters), foreach elsewhere (common/optim.py)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.optim.lr, betas=tuple(cfg.optim.betas),
                                 weight_decay=cfg.optim.weight_decay, **optimizer_impl(device))
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype is torch.float16)
    length = RunLength.of_epochs(cfg.train.epochs, len(train_images) // cfg.train.batch_size)
    steps_per_epoch, total_steps = length.steps_per_epoch, length.total_steps
    if total_steps == 0:
        raise ConfigError(f"{len(train_images)} training images give no step of train.batch_size={cfg.train.batch_size}")

    # ---- resume
    ckpt = checkpoint.Checkpointer(cfg.output_dir, rt, cfg)
    state = ckpt.restore(model=model, optimizer=optimizer, scaler=scaler)
    step, best = state.get("step", 0), state.get("best_delta1", 0.0)
    logger = run.start(cfg, rt, ckpt, step,
                       f"DispNet width {cfg.model.width}, {'UBN' if cfg.ubn.enabled else 'BN'} on "
                       f"{train_images.description}: {len(labeled)} labeled frames (fraction "
                       f"{cfg.data.labeled_fraction:g}); {rt.world} rank(s) x {local_b} labeled"
                       f"{f' + {local_u} unlabeled' if cfg.ubn.enabled else ''}, {total_steps} steps; "
                       f"output {cfg.output_dir}")

    # ---- loop: steps of the labeled stream, which cycles through the labeled frames
    labeled_stream = run.stream(loader, sampler, step)
    unlabeled_stream = run.stream(u_loader, u_sampler, step) if cfg.ubn.enabled else None
    stop = run.StopFlag(device, cfg.train.check_every)
    def evaluate_now():
        if cfg.ubn.reestimate_batches:
            ubn.reestimate_running_stats(model, reestimation_batches(
                reest_ds, reest_batch, cfg.ubn.reestimate_batches, cfg, rt, device))
        return evaluate(model, test_loader, device, cfg)

    eval_every = max(1, int(round(cfg.train.eval_every_epochs * steps_per_epoch)))
    window, metrics, first = LossWindow(device), None, step
    model.train()
    while step < total_steps:
        done = step + 1
        logs = done % cfg.train.log_every == 0 or done == total_steps or done % eval_every == 0
        saves = done == cfg.train.stop_at_step or (cfg.train.ckpt_every_steps and done % cfg.train.ckpt_every_steps == 0)
        # a step that neither logs, evaluates, saves nor checks reads no device value
        quiet = not (logs or saves or stop.due(done)) and step > first
        with host_sync.forbid(device, cfg.train.forbid_sync and quiet):
            u = next(unlabeled_stream) if unlabeled_stream is not None else None
            loss = train_step(ddp, optimizer, scaler, next(labeled_stream), u, cfg, device, amp_dtype)
            stop_requested, diverged = stop.check(loss, done, force=logs or saves)
        if diverged:
            raise checkpoint.Diverged(diverged, ckpt.path)
        step = done
        window.add(loss)
        news = compiled.report(step)   # a line when this step compiled new graphs
        if news:
            logger.print(news)

        if step % cfg.train.log_every == 0 or step == total_steps:
            mean_loss, ips = window.flush(cfg.train.batch_size)
            logger.log({"epoch": step / steps_per_epoch, "loss": mean_loss, "images_per_s": ips,
                        **run.memory_metrics(device), **compiled.metrics()}, step)
        if step % eval_every == 0 or step == total_steps:
            metrics = evaluate_now()
            best = max(best, metrics["delta1"])
            logger.log({"epoch": step / steps_per_epoch, **metrics}, step)
            logger.print(f"step {step}/{total_steps}: " + "  ".join(f"{k} {metrics[k]:.4f}" for k in NAMES))
        stopping = stop_requested or step == cfg.train.stop_at_step
        if (stopping or step == total_steps
                or (cfg.train.ckpt_every_steps and step % cfg.train.ckpt_every_steps == 0)):
            ckpt.save(model=model, optimizer=optimizer, scaler=scaler, step=step, best_delta1=best)
        if stopping:
            logger.close()
            raise run.Stopped(step, stop.signum if stop_requested else None)

    if metrics is None:
        metrics = evaluate_now()
    logger.log({"final": True, "steps": step, "best_delta1": best, **metrics}, step)
    logger.print(f"final after {step} steps: delta<1.25 {metrics['delta1']:.4f}, AbsRel {metrics['abs_rel']:.4f}, "
                 f"RMSE {metrics['rmse']:.3f} m (best delta<1.25 {best:.4f})")
    logger.close()


def plan(cfg, config_file=None):
    """--plan (common/plan.py): steps of the labeled batch (an epoch is a pass's worth of steps over
    all training frames, whatever the labeled fraction) and training PFLOPs of the DispNet at
    data.height x data.width, UBN's statistics pass (the labeled + unlabeled batch, no gradient)
    included."""
    n = cfg.data.synthetic_train_size if cfg.data.name == "synthetic" else planning.dataset_size(cfg)[0]
    steps_per_epoch, b = n // cfg.train.batch_size, cfg.train.batch_size
    u = (cfg.ubn.unlabeled_batch_size or b) if cfg.ubn.enabled else 0
    total = RunLength.of_epochs(cfg.train.epochs, steps_per_epoch).total_steps
    h, w = cfg.data.height, cfg.data.width

    def setup(device):
        with torch.device(device):
            return build_dispnet(cfg.model), torch.zeros(2, 3, h, w, device=device)

    def step(model, x):
        model(x)[0].sum().backward()

    fb = planning.flops(("dispnet", str(cfg.model), h, w, "train"), step, setup) / 2
    fwd = planning.flops(("dispnet", str(cfg.model), h, w, "fwd"), lambda m, x: m(x), setup) / 2
    return {"file": config_file, "script": "train_depth_ubn.py", "dataset": n, "global_batch": b,
            "unlabeled_batch": u, "steps_per_epoch": steps_per_epoch, "steps": total, "epochs": float(cfg.train.epochs),
            "labeled_fraction": cfg.data.labeled_fraction,
            "train_pflops": total * (b * fb + (b + u) * fwd * bool(u)) / 1e15}


def cli(argv):
    if argv[:1] == ["--toy"]:   # the spiral study has its own command line (toys/spiral.py)
        if argv[1:2] != ["spiral"]:
            raise ConfigError("--toy takes 'spiral'")
        return spiral.main(argv[2:])
    cfg, args = parse_cli(argv, DEPTH_DEFAULTS, DEFAULT_CONFIG, __doc__, plan=True)
    if args.plan:
        return planning.print_plan(plan(cfg, args.config), args.json)
    return main(cfg)


if __name__ == "__main__":
    run.cli(lambda: cli(sys.argv[1:]))
