#!/usr/bin/env python
"""Linear evaluation of a pretrained backbone: a linear classifier trained on frozen features.

    python linear_eval.py --checkpoint RUN_DIR/checkpoint.pt [--config yaml/...] [key=value ...]
    torchrun --nproc_per_node=8 linear_eval.py --checkpoint RUN_DIR/checkpoint.pt data.root=/data/imagenet

The checkpoint's own config is the starting point (same data and model); --config and
key=value override it (eval.* holds the protocol). Writes RUN_DIR/linear_eval.json with top1,
top5 and knn_top1, and fails if the frozen backbone (BatchNorm statistics included) changed.
"""
import argparse
import json
import os
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader

from common import checkpoint, dist, run, schedules
from common.config import ConfigError, load_config
from common.optim import build_optimizer
from common.run_length import RunLength
from data import build_eval_loader, build_images, device_batch, loader_kwargs
from data.augment import DeviceAugment
from data.decode import collate
from data.multiview import MultiViewDataset
from data.sampler import EpochSampler
from evaluation.knn import extract_features, knn_scores, topk_accuracy
from models import build_backbone, interchange
from models.classifier import load_backbone
from selfsup.config import linear_eval_defaults

FEATURES = ("block1", "block2", "block3", "block4", "final")


class FrozenFeatures(nn.Module):
    """Pooled output of one stage of a frozen backbone (eval.feature); `final` = block4."""

    def __init__(self, backbone, feature):
        super().__init__()
        if feature not in FEATURES:
            raise ConfigError(f"eval.feature '{feature}' is not one of {', '.join(FEATURES)}")
        if feature != "final" and not hasattr(backbone, "forward_stages"):
            raise ConfigError(f"eval.feature={feature} needs a ResNet backbone; use final for a ViT")
        self.backbone, self.upto = backbone, 4 if feature == "final" else int(feature[-1])
        self.num_features = backbone.num_features if feature == "final" else backbone.stage_channels[self.upto - 1]

    def forward(self, x):
        if self.upto == 4:
            return self.backbone(x)  # pooled block-4 output for a ResNet, class token for a ViT
        return F.adaptive_avg_pool2d(self.backbone.forward_stages(x, self.upto)[-1], 1).flatten(1)


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="checkpoint.pt written by train_ssl.py, or torchvision / "
                   "timm weights (.safetensors / .pth; model.* from export.py's config.json beside it, or given)")
    p.add_argument("--config", default=None, help="YAML file overriding the checkpoint's config")
    p.add_argument("overrides", nargs="*", metavar="key.sub=value")
    args = p.parse_intermixed_args(argv)
    if interchange.is_external(args.checkpoint):   # torchvision / timm weights: model.* from export.py's
        base = {"model": interchange.exported_model_config(args.checkpoint)}   # config.json, or the overrides
        return args.checkpoint, None, load_config(linear_eval_defaults(), args.config, args.overrides, base=base)
    state = checkpoint.load_checkpoint(args.checkpoint)
    if "backbone" not in state or "config" not in state:
        raise checkpoint.CheckpointError(f"{args.checkpoint} is not a train_ssl.py checkpoint (no backbone or config entry)")
    cfg = load_config(linear_eval_defaults(), args.config, args.overrides, base=state["config"])
    return args.checkpoint, state, cfg


def main(ckpt_path, state, cfg):
    device = dist.init_distributed(cfg.train.device)
    world, is_main = dist.world_size(), dist.is_main()
    ev = cfg.eval
    if ev.batch_size % world:
        raise ConfigError(f"eval.batch_size={ev.batch_size} is not divisible by the {world} ranks")
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    torch.manual_seed(cfg.train.seed)

    backbone = build_backbone(cfg.model)
    if state is None:
        interchange.load_external(backbone, ckpt_path)
    else:
        load_backbone(backbone, state, ckpt_path, cfg.model)   # another arch / width: one line naming both
    backbone.to(device).eval().requires_grad_(False)
    frozen = {k: v.clone() for k, v in backbone.state_dict().items()}
    features = FrozenFeatures(backbone, ev.feature).eval()  # eval mode: BN uses running statistics

    train_images, val_images, num_classes = build_images(cfg.data, cfg.train.seed)
    augment = DeviceAugment(cfg.augment)
    eval_train = build_eval_loader(train_images, cfg, cfg.knn.batch_size, device)
    eval_val = build_eval_loader(val_images, cfg, cfg.knn.batch_size, device)
    tr_f, tr_y = extract_features(features, eval_train, augment, device)
    va_f, va_y = extract_features(features, eval_val, augment, device)
    knn = topk_accuracy(knn_scores(tr_f, tr_y, va_f, num_classes, cfg.knn.k, cfg.knn.temperature), va_y)[0]
    if is_main:
        print(f"kNN top-1 ({ev.feature}): {knn:.2f}%", flush=True)

    # ---- the linear classifier (MoCo v3 / SimSiam protocol: N(0, 0.01) weights, zero bias)
    head = nn.Linear(features.num_features, num_classes).to(device)
    nn.init.normal_(head.weight, std=0.01)
    nn.init.zeros_(head.bias)
    head_ddp = DDP(head, device_ids=[device.index] if device.type == "cuda" else None) if world > 1 else head
    local_batch = ev.batch_size // world
    n_train = len(train_images)
    steps_per_epoch = max(1, n_train // ev.batch_size)
    if n_train < ev.batch_size:
        raise ConfigError(f"eval.batch_size={ev.batch_size} exceeds the {n_train} training images")
    total = RunLength.of_epochs(ev.epochs, steps_per_epoch).total_steps
    lr = ev.lr * ev.batch_size / 256
    opt = build_optimizer(ev.optimizer, [{"params": head.parameters()}], lr, ev.momentum, ev.weight_decay,
                          device=device)
    lr_schedule = schedules.cosine(total, lr)

    if ev.augment:  # fresh random crops each epoch, through the frozen backbone
        ds = MultiViewDataset(train_images, 1, cfg.data.eval_crop, ev.crop_scale, cfg.augment.flip_prob,
                              seed=cfg.train.seed, decode=cfg.data.decode)
        sampler = EpochSampler(n_train, local_batch, world, dist.rank(), seed=cfg.train.seed)
        loader = DataLoader(ds, batch_size=local_batch, sampler=sampler, drop_last=True,
                            collate_fn=collate, **loader_kwargs(cfg.data, device))
    step = 0
    for epoch in range(ev.epochs):
        if ev.augment:
            sampler.set_epoch(epoch)
            batches = ((augment.eval_batch(b["views"][:, 0]), b["label"])
                       for b in (device_batch(b, device) for b in loader))   # (decodes here with data.decode=device)
        else:  # the features were computed once; rank r takes its slice of each global batch
            perm = torch.randperm(n_train, generator=torch.Generator().manual_seed(cfg.train.seed * 1000 + epoch))
            perm = perm[: steps_per_epoch * ev.batch_size].view(steps_per_epoch, world, local_batch)[:, dist.rank()]
            batches = ((tr_f[i.to(tr_f.device)], tr_y[i.to(tr_y.device)]) for i in perm)
        for x, y in batches:
            if ev.augment:
                with torch.no_grad():
                    x = features(x)
            for g in opt.param_groups:
                g["lr"] = float(lr_schedule[step])
            loss = F.cross_entropy(head_ddp(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
        if is_main and (epoch + 1) % max(1, ev.epochs // 10) == 0:
            print(f"epoch {epoch + 1}/{ev.epochs} loss {loss.item():.4f}", flush=True)

    with torch.no_grad():
        top1, top5 = topk_accuracy(head(va_f), va_y, ks=(1, min(5, num_classes)))
    changed = [k for k, v in backbone.state_dict().items() if not torch.equal(v, frozen[k])]
    if changed:
        raise RuntimeError(f"the frozen backbone changed during linear evaluation: {changed[:5]}")
    result = {"top1": top1, "top5": top5, "knn_top1": knn, "feature": ev.feature, "epochs": ev.epochs,
              "checkpoint_step": state["step"] if state else None, "git_commit": checkpoint.git_commit(), "eval": dict(ev)}
    if is_main:
        out = os.path.join(os.path.dirname(os.path.abspath(ckpt_path)), "linear_eval.json")
        tmp = out + ".tmp"
        with open(tmp, "w") as f:
            json.dump(result, f, indent=1)
        os.replace(tmp, out)
        print(f"linear top-1 {top1:.2f}%  top-5 {top5:.2f}%  kNN top-1 {knn:.2f}%  -> {out}", flush=True)
    return result


if __name__ == "__main__":
    run.cli(lambda: main(*parse(sys.argv[1:])))
