#!/usr/bin/env python
"""Gradient estimation error of ViT sequence compression at saved checkpoints (NeurIPS'24 sec. 5,
Fig. 4): squared bias, cost-adjusted variance and CA-MSE (Eq. 8-10) over a grid of token-dropout
ratios x patch sizes, and from checkpoints at several points of training the CA-MSE-optimal
compression schedule (sec. 6.3) that `train_ssl.py accel.compression.schedule=FILE` follows.

    python grad_error.py --checkpoint RUN/ckpt_0025.pt                     # grid of one checkpoint
    python grad_error.py --checkpoint RUN/ckpt_0000.pt RUN/ckpt_0025.pt ... --schedule-out sched.yaml
    python grad_error.py --checkpoint C.pt --config yaml/vit/cifar10_vit_tiny_cpu.yaml --samples 256 data.root=...

The checkpoint's own config is the base; --config and key=value overrides change it (the data
root, say). For every checkpoint it prints the three grids, writes OUT/grad_error_<name>.json and
OUT/grad_error_<name>.png (CA-MSE, squared bias, cost-adjusted variance; the best cell outlined).
With several checkpoints it also writes OUT/grad_error_camse.png, their CA-MSE grids side by side.
The key (momentum target) follows accel.compression's key settings: key_drop_ratio (default 0,
a full key) and key_patch_size (0: the query's patch size). Paper scale: --samples 16384.
"""
import argparse
import json
import os
import sys

import selfsup
from accel import ca_mse, compression, cost, hard_augment
from common import checkpoint, dist, run
from common.config import ConfigError, load_config
from common.run_length import RunLength
from common.plot import heatmap
from data import DataError, build_images, build_train_loader, device_batch
from data.augment import DeviceAugment, train_resolution
from models import build_backbone
from models.vit import ViT
from selfsup.config import ssl_defaults


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", nargs="+", required=True, help="one or more ckpt_XXXX.pt / checkpoint.pt")
    p.add_argument("--config", default=None, help="YAML applied over each checkpoint's stored config")
    p.add_argument("--drop-ratios", default="0,0.25,0.5,0.75,0.9", help="token dropout ratios (Fig. 4)")
    p.add_argument("--patch-sizes", default="", help="patch sizes; default: the divisors of the crop in "
                   "{16,20,24,30,40,48} (Fig. 4 at 240 px) scaled to the model's patch size")
    p.add_argument("--samples", type=int, default=16384, help="N samples per strategy (default: the paper's 16k; CPU scale: 128-512)")
    p.add_argument("--sub-batch", type=int, default=32, help="K: variance from sub-batches of K samples")
    p.add_argument("--batch", type=int, default=0, help="training batch defining Budget (0: train.batch_size)")
    p.add_argument("--fractions", default="", help="fraction of training of each checkpoint (default: "
                   "from its step, or budget spent)")
    p.add_argument("--out", default="", help="output folder (default: the first checkpoint's folder)")
    p.add_argument("--schedule-out", default="", help="write the CA-MSE-optimal schedule YAML here")
    p.add_argument("overrides", nargs="*", metavar="key.sub=value")
    return p.parse_intermixed_args(argv)


def fraction_of(state, cfg, steps_per_epoch):
    if cfg.train.budget:   # the last step may overshoot the budget: that run is at its end
        # the ledger in a checkpoint is rank 0's; every rank spends the same (equal local batches)
        spent = float(state["ledger"]["local"].get("budget_units", 0.0)) * state.get("world_size", 1)
        return min(1.0, spent / cfg.train.budget)
    return RunLength.of_epochs(cfg.train.epochs, steps_per_epoch).fraction_done(state["step"])


def analyse(path, args, device):
    state = checkpoint.load_checkpoint(path)   # weights_only: a checkpoint is data, never code
    cfg = load_config(ssl_defaults(), args.config, args.overrides, base=state["config"])
    method = selfsup.build_method(cfg.method, build_backbone(cfg.model))
    method.load_state_dict(state["model"])
    method.to(device).train()   # gradients as in training: BN with batch statistics
    if not isinstance(method.backbone, ViT):
        raise ConfigError(f"grad_error.py needs a ViT backbone, the checkpoint has model.arch={cfg.model.arch}")
    res, p0 = train_resolution(cfg), cfg.model.patch_size
    drops = [float(x) for x in args.drop_ratios.split(",")]
    patches = [int(x) for x in args.patch_sizes.split(",")] if args.patch_sizes else compression.default_patch_sizes(p0, res)
    bad = [p for p in patches if res % p]
    if bad:
        raise ConfigError(f"--patch-sizes {bad} do not divide the crop size {res}")
    k = args.sub_batch
    n_sub = max(2, args.samples // k)
    train_images, _, _ = build_images(cfg.data, cfg.train.seed)
    ha = cfg.accel.hard_augment
    loader, sampler = build_train_loader(train_images, cfg, k, device, num_views=2 if ha.enabled else None)
    augment = DeviceAugment(cfg.augment)

    def batches():
        sampler.set_epoch(0)
        for j, batch in enumerate(loader):
            if j == n_sub:
                break
            batch = device_batch(batch, device)   # (JPEG decode and crops here with data.decode=device)
            views = augment(batch["views"], batch["rand"], cfg.augment.magnitude, res)
            local = None
            if "local_views" in batch:
                local = augment(batch["local_views"], batch["local_rand"], cfg.augment.magnitude, 0, local=True)
            yield views, local

    if n_sub > len(loader):
        raise DataError(f"--samples {args.samples} needs {n_sub} sub-batches of {k}; the data has {len(loader)}")
    plan_cfg = cfg.accel.compression
    n_views, L_small = hard_augment.views_trained(cfg), 1 + cost.sequence_length(cfg.data.local_crop_size, p0)

    def image_cost(st):
        return compression.image_cost(res, st, method.encoded_views(n_views, cfg.data.local_views),
                                      cfg.data.local_views, L_small)

    def stage_of(d, p):   # the key follows accel.compression's key settings; SimCLR: every view alike
        return compression.candidate_stage(plan_cfg, method.has_target, d, p)

    base_stage = (0.0, p0, 0.0, p0)
    budget = (args.batch or cfg.train.batch_size) * image_cost(base_stage)
    print(f"{path}: {n_sub} sub-batches of {k} at {res} px; Budget = {budget:.1f} units "
          f"(one full-sequence batch of {args.batch or cfg.train.batch_size})", flush=True)
    G_m = ca_mse.strategy_moments(method, batches, base_stage, k, cfg.train.seed)
    grid = []
    for p in patches:
        row = []
        for d in drops:
            st = stage_of(d, p)
            m = G_m if st == base_stage else ca_mse.strategy_moments(method, batches, st, k, cfg.train.seed)
            row.append(ca_mse.error_profile(G_m, m, image_cost(st), budget))
        grid.append(row)
        print(f"  patch {p}: done", flush=True)
    # the training run's steps per epoch (global batch train.batch_size), not this loader's (sub-batches of k)
    return cfg, state, max(len(train_images) // cfg.train.batch_size, 1), drops, patches, grid


def show(name, key, grid, drops, patches):
    lines = [f"{name} (rows: patch size, columns: drop ratio)",
             "patch " + "".join(f"{d:>10g}" for d in drops)]
    for p, row in zip(patches, grid):
        lines.append(f"{p:>5} " + "".join(f"{c[key]:>10.4g}" for c in row))
    return "\n".join(lines)


def camse_figure(path, json_paths):
    """One PNG with the CA-MSE grid of every checkpoint side by side (Fig. 4's top row), from the
    grad_error_<name>.json files; the lowest cell of each is outlined."""
    runs = [json.load(open(p)) for p in json_paths]
    patches, drops = runs[0]["patch_sizes"], runs[0]["drop_ratios"]
    if any(r["patch_sizes"] != patches or r["drop_ratios"] != drops for r in runs):
        raise ConfigError("camse_figure: the checkpoints were analysed on different grids")
    panels = [(f"CA-MSE ({100 * r['fraction']:.0f}%)", [[c["ca_mse"] for c in row] for row in r["grid"]])
              for r in sorted(runs, key=lambda r: r["fraction"])]
    heatmap(path, panels, patches, [f"{x:g}" for x in drops], xlabel="token drop ratio", ylabel="patch")


def main(argv):
    args = parse_args(argv)
    device = dist.init_distributed("auto")
    out = args.out or os.path.dirname(os.path.abspath(args.checkpoint[0]))
    os.makedirs(out, exist_ok=True)
    fractions, best, jsons = [], [], []
    given = [float(x) for x in args.fractions.split(",")] if args.fractions else None
    if given is not None and len(given) != len(args.checkpoint):
        raise ConfigError(f"--fractions has {len(given)} values for {len(args.checkpoint)} checkpoints")
    for i, path in enumerate(args.checkpoint):
        cfg, state, spe, drops, patches, grid = analyse(path, args, device)
        f = given[i] if given is not None else fraction_of(state, cfg, spe)
        name = os.path.splitext(os.path.basename(path))[0]
        for key, title in (("ca_mse", "CA-MSE / ||G||^2"), ("bias2", "squared bias (unbiased) / ||G||^2"),
                           ("bias2_se", "its standard error / ||G||^2"),
                           ("bias2_plugin", "plug-in squared bias (biased up by the noise) / ||G||^2"),
                           ("ca_var", "cost-adjusted variance / ||G||^2")):
            print(show(f"{name} at {100 * f:.0f}% of training: {title}", key, grid, drops, patches))
        d, p = ca_mse.best_strategy(grid, drops, patches)
        print(f"{name}: lowest CA-MSE at drop ratio {d:g}, patch size {p}", flush=True)
        fractions.append(f)
        best.append((d, p))
        jsons.append(os.path.join(out, f"grad_error_{name}.json"))
        with open(jsons[-1], "w") as fh:
            json.dump({"checkpoint": os.path.abspath(path), "step": state["step"], "fraction": f,
                       "drop_ratios": drops, "patch_sizes": patches, "samples": args.samples,
                       "sub_batch": args.sub_batch, "grid": grid, "best": {"drop_ratio": d, "patch_size": p}},
                      fh, indent=1)
        heatmap(os.path.join(out, f"grad_error_{name}.png"),
                [(f"CA-MSE ({100 * f:.0f}%)", [[c["ca_mse"] for c in r] for r in grid]),
                 ("squared bias", [[c["bias2"] for c in r] for r in grid]),
                 ("cost-adjusted variance", [[c["ca_var"] for c in r] for r in grid])],
                patches, [f"{x:g}" for x in drops], xlabel="token drop ratio", ylabel="patch")
    if len(jsons) > 1:   # the CA-MSE grids of all checkpoints in one figure
        camse_figure(os.path.join(out, "grad_error_camse.png"), jsons)
        print(f"wrote {os.path.join(out, 'grad_error_camse.png')}")
    if args.schedule_out:
        entries = ca_mse.schedule_from_profiles(fractions, best)
        note = ("CA-MSE-optimal compression schedule (NeurIPS'24 sec. 6.3), written by grad_error.py from\n"
                + "\n".join(f"  {c} at {100 * f:.0f}%: drop {b[0]:g}, patch {b[1]}"
                            for c, f, b in zip(args.checkpoint, fractions, best))
                + f"\n{args.samples} samples, sub-batches of {args.sub_batch}.")
        compression.save_schedule(args.schedule_out, entries, note)
        print(f"wrote {args.schedule_out}")


if __name__ == "__main__":
    run.cli(lambda: main(sys.argv[1:]))
