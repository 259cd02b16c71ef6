"""Backbone weights to and from torchvision / timm names (export.py, and external weights given to
linear_eval.py --checkpoint or train_supervised.py model.pretrained).

ResNets: models/resnet.py uses torchvision's names, which timm's ResNets share; only the classifier
(`fc`) is not part of a backbone. ViTs: timm's VisionTransformer nests the patch projection and
attention (`patch_embed.proj`, `attn.qkv`, `attn.proj`, `mlp.fc1`) and learns `pos_embed` over
[class token, patches]; this ViT has fixed sin-cos embeddings on the patches and none on the class
token, so the export writes that table (zeros for the class token) and the import folds the class
token's embedding into the token (the same sum) and accepts patch embeddings equal to the table.
"""
import json
import os

import torch

from common.config import ConfigError
from models.vit import sincos_2d

_TO_TIMM = ((".qkv.", ".attn.qkv."), (".proj.", ".attn.proj."), (".mlp.0.", ".mlp.fc1."), (".mlp.2.", ".mlp.fc2."))
CLASSIFIERS = ("fc.", "head.", "classifier.")


def _renamed(state, to_timm):
    """This ViT's weight names -> timm's (to_timm) or back."""
    embed = ("patch_embed.", "patch_embed.proj.")
    old, new = embed if to_timm else embed[::-1]
    pairs = _TO_TIMM if to_timm else [(b, a) for a, b in _TO_TIMM]
    out = {}
    for k, v in state.items():
        if k.startswith(old):
            k = new + k[len(old):]
        elif k.startswith("blocks."):
            for a, b in pairs:
                k = k.replace(a, b)
        out[k] = v
    return out


def vit_to_timm(state, image_size, patch_size):
    out = _renamed(state, to_timm=True)
    dim, n = state["cls_token"].shape[-1], image_size // patch_size
    out["pos_embed"] = torch.cat([torch.zeros(1, 1, dim), sincos_2d(n, n, dim)], 1).to(state["cls_token"].dtype)
    return out


def vit_from_timm(state, where):
    out = _renamed(state, to_timm=False)
    pos = out.pop("pos_embed", None)
    if pos is not None:
        dim, n = pos.shape[-1], int(round((pos.shape[1] - 1) ** 0.5))
        table = sincos_2d(n, n, dim).to(pos.dtype)
        if pos.shape[1] != n * n + 1 or not torch.allclose(pos[:, 1:], table, atol=1e-5):
            raise ConfigError(f"{where}: its ViT has learned position embeddings; this ViT's are fixed sin-cos "
                              f"(NeurIPS'24 resizes them with the patch grid), so they cannot be loaded")
        out["cls_token"] = out["cls_token"] + pos[:, :1]   # timm adds pos_embed[:, 0] to the class token
    return out


def read_weights(path):
    """A torchvision / timm weights file (.safetensors, or .pth / .pt holding a state dict, maybe
    under "state_dict" / "model"), without its classifier."""
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file
            state = load_file(path)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
            for key in ("state_dict", "model"):
                if isinstance(state, dict) and isinstance(state.get(key), dict):
                    state = state[key]
    except Exception as e:   # safetensors / torch raise several types for a bad file
        raise ConfigError(f"{path} is not a readable weights file ({type(e).__name__})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConfigError(f"{path} does not hold a state dict of tensors")
    return {k: v for k, v in state.items() if not k.startswith(CLASSIFIERS)}


def is_external(path):
    """torchvision / timm weights (.safetensors, .pth), not one of this project's checkpoints (.pt)."""
    return str(path).endswith((".safetensors", ".pth"))


def exported_model_config(path):
    """The model.* keys export.py recorded next to `path` (its config.json), or {}."""
    cfg = os.path.join(os.path.dirname(os.path.abspath(path)), "config.json")
    if not os.path.isfile(cfg):
        return {}
    with open(cfg) as f:
        return (json.load(f).get("pretraining") or {}).get("model") or {}


def load_external(backbone, path):
    """Load torchvision / timm weights into one of this project's backbones, strictly; one line
    naming the file and the first mismatch otherwise."""
    state = read_weights(path)
    if getattr(backbone, "is_vit", False):
        state = vit_from_timm(state, path)
    try:
        backbone.load_state_dict(state, strict=True)
    except RuntimeError as e:
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        raise ConfigError(f"{path} does not fit model.arch / width / cifar_stem / patch_size: "
                          f"{(lines[1] if len(lines) > 1 else lines[0])[:200]}") from None
