#!/usr/bin/env python
"""Export a run's pretrained backbone for torchvision or timm: model.safetensors + config.json.

    python export.py runs/wacv/imagenet_efficient --format torchvision          # ResNets
    python export.py runs/vit/in1k_mocov3_accel --format timm                   # ViTs (and ResNets)
    python export.py RUN_DIR --format timm --push-to-hub USER/NAME               # pip install huggingface_hub

The backbone is the checkpoint's "backbone" entry, the network kNN and linear evaluation use:
the online encoder for SimSiam, SimCLR, SwAV and BYOL, the query encoder for MoCo v1 / v2 / v2+ /
v3, the teacher for DINO. Projection and prediction heads are left out; so is the classifier,
which these backbones never had: torchvision's `fc` is replaced by nn.Identity() before loading,
timm's models are built with num_classes=0. Then

    torchvision: m = torchvision.models.resnet50(); m.fc = torch.nn.Identity()
                 m.load_state_dict(safetensors.torch.load_file("model.safetensors"), strict=True)
    timm:        m = timm.create_model("local-dir:OUT", pretrained=True)     # or "hf-hub:USER/NAME"

give the features the project's backbone gives (tests/test_export.py). What maps, and what is
refused with one line:
- ResNets of width 64 (torchvision's and timm's only width): to both. A CIFAR stem (3x3 stride-1
  conv, no max-pool) exists in neither constructor; for torchvision, config.json lists the two
  modules to replace before loading (`conv1`, `maxpool`); timm is refused.
- ViTs (vit_t16 / vit_s16 / vit_b16, any patch size): to timm's vit_{tiny,small,base}_patch16_224
  with model_args patch_size and img_size (the run's training resolution). This ViT has fixed
  sin-cos position embeddings on the patch tokens and none on the class token; timm's learned
  pos_embed is set to exactly that (zero for the class token). torchvision is refused (its ViT
  needs another layout; use timm).
"""
import argparse
import json
import os
import sys

from common import checkpoint
from common.config import ConfigError, InputError
from models.resnet import ARCHS
from models.interchange import vit_to_timm
from models.vit import SIZES

TIMM_VIT = {"vit_t16": "vit_tiny_patch16_224", "vit_s16": "vit_small_patch16_224", "vit_b16": "vit_base_patch16_224"}


def resolution(cfg):
    return cfg["augment"].get("resolution") or cfg["data"]["crop_size"]


def resnet_weights(state, model_cfg, fmt):
    """torchvision and timm name ResNet weights as models/resnet.py does: the entry as it is."""
    arch, width = model_cfg["arch"], model_cfg.get("width", 64)
    if width != 64:
        raise ConfigError(f"model.width={width}: torchvision's and timm's {arch} have 64 base channels, so no "
                          f"constructor of theirs builds this backbone; export a width-64 run")
    then = ["model.fc = torch.nn.Identity()"] if fmt == "torchvision" else []
    if model_cfg.get("cifar_stem"):
        if fmt == "timm":
            raise ConfigError("model.cifar_stem=true: timm's ResNets have no 3x3 stride-1 stem without max-pool; "
                              "use --format torchvision, whose config.json names the two modules to replace")
        then += ["model.conv1 = torch.nn.Conv2d(3, 64, 3, 1, 1, bias=False)", "model.maxpool = torch.nn.Identity()"]
    return dict(state), then


def vit_weights(state, model_cfg, image_size):
    p = model_cfg["patch_size"]
    if image_size % p:
        raise ConfigError(f"image size {image_size} is not a multiple of model.patch_size={p}")
    return vit_to_timm(state, image_size, p)


def export(source, fmt, out=None):
    """Write OUT/model.safetensors and OUT/config.json for `source` (a run directory or a
    checkpoint file) in `fmt`; returns OUT."""
    from safetensors.torch import save_file
    path = os.path.join(source, "checkpoint.pt") if os.path.isdir(source) else source
    state = checkpoint.load_checkpoint(path)
    if "backbone" not in state or "config" not in state:
        raise checkpoint.CheckpointError(f"{path} has no backbone to export (not a train_ssl.py checkpoint)")
    cfg, model_cfg = state["config"], state["config"]["model"]
    arch, size = model_cfg["arch"], resolution(state["config"])
    if fmt not in ("torchvision", "timm"):
        raise ConfigError(f"--format {fmt}: one of torchvision, timm")
    info = {"image_size": size, "mean": cfg["augment"]["mean"], "std": cfg["augment"]["std"]}
    if arch in ARCHS:
        weights, then = resnet_weights(state["backbone"], model_cfg, fmt)
        num_features = 512 if arch in ("resnet18", "resnet34") else 2048
        timm_name, model_args = arch, {}
    elif arch in SIZES:
        if fmt == "torchvision":
            raise ConfigError(f"model.arch={arch}: torchvision's ViT has another layout; use --format timm")
        weights, then = vit_weights(state["backbone"], model_cfg, size), []
        num_features = SIZES[arch][0]
        timm_name, model_args = TIMM_VIT[arch], {"patch_size": model_cfg["patch_size"], "img_size": size}
    else:
        raise ConfigError(f"model.arch={arch} cannot be exported")
    paper = cfg.get("paper") or {}
    origin = {"method": cfg.get("method", {}).get("name"), "epochs": cfg["train"]["epochs"], "step": state.get("step"),
              "paper": {k: paper.get(k) for k in ("name", "where", "row") if paper.get(k) is not None},
              "git_commit": state.get("git_commit"), "checkpoint": os.path.abspath(path), "arch": arch,
              "model": model_cfg}
    if fmt == "torchvision":
        config = {"format": "torchvision", "constructor": f"torchvision.models.{arch}(weights=None)", "then": then,
                  "load": "model.load_state_dict(safetensors.torch.load_file('model.safetensors'), strict=True)",
                  "num_features": num_features, **info, "pretraining": origin}
    else:   # timm's Hub / local-dir layout: architecture, model_args, pretrained_cfg
        config = {"architecture": timm_name, "num_classes": 0, "num_features": num_features,
                  "model_args": dict(model_args, num_classes=0),
                  "pretrained_cfg": {"input_size": [3, size, size], "fixed_input_size": arch in SIZES,
                                     "mean": info["mean"], "std": info["std"], "num_classes": 0,
                                     "interpolation": "bicubic", "crop_pct": 1.0},
                  "pretraining": origin}
    out = out or os.path.join(os.path.dirname(path), f"export_{fmt}")
    os.makedirs(out, exist_ok=True)
    save_file({k: v.detach().contiguous() for k, v in weights.items()}, os.path.join(out, "model.safetensors"),
              metadata={"format": "pt"})
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(config, f, indent=1, default=str)
    return out


def push(folder, repo):
    try:
        from huggingface_hub import HfApi
    except ImportError:
        raise ConfigError("--push-to-hub needs huggingface_hub: pip install huggingface_hub") from None
    api = HfApi()
    api.create_repo(repo, exist_ok=True)
    api.upload_folder(folder_path=folder, repo_id=repo)
    return f"https://huggingface.co/{repo}"


def main(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", help="a run directory (its checkpoint.pt) or a checkpoint file")
    p.add_argument("--format", required=True, help="torchvision | timm")
    p.add_argument("--out", default=None, help="output folder (default: export_FORMAT next to the checkpoint)")
    p.add_argument("--push-to-hub", default=None, metavar="REPO", help="upload the folder to this Hugging Face repo")
    args = p.parse_args(argv)
    try:
        out = export(args.source, args.format, args.out)
        print(f"wrote {out}/model.safetensors and config.json ({args.format})")
        if args.push_to_hub:
            print(f"pushed to {push(out, args.push_to_hub)}")
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main(sys.argv[1:])
