"""Image classifiers for train_supervised.py: a backbone of this repo plus a linear `fc`, or a
torchvision model with its own head (Table 4.2 of the thesis: ResNet-50/152, DenseNet-161,
RegNetX-3.2GF, ViT-S/16)."""
import torch.nn as nn

from common.config import ConfigError
from common.checkpoint import load_checkpoint
from models import interchange
from models.resnet import ARCHS as RESNETS
from models.resnet import ResNet
from models.vit import SIZES as VITS
from models.vit import ViT

TORCHVISION = ("densenet161", "regnet_x_3_2gf")


class Classifier(nn.Module):
    def __init__(self, backbone, num_classes):
        super().__init__()
        self.backbone = backbone
        self.fc = nn.Linear(backbone.num_features, num_classes)

    def forward(self, x):
        return self.fc(self.backbone(x))


def load_pretrained_backbone(model, path, model_cfg):
    """Fine-tuning: load the "backbone" entry of a train_ssl.py checkpoint into model.backbone;
    every backbone weight must be there (a clear error names the file and the first mismatch)."""
    if not hasattr(model, "backbone"):
        raise ConfigError(f"model.pretrained needs one of this repo's backbones, not a torchvision {type(model).__name__}")
    if interchange.is_external(path):   # torchvision / timm weights (.safetensors / .pth)
        interchange.load_external(model.backbone, path)
        return model
    state = load_checkpoint(path)  # one-line error naming the file if it is missing or unreadable
    if "backbone" not in state:
        raise ConfigError(f"model.pretrained: {path} has no 'backbone' entry (not a train_ssl.py checkpoint)")
    load_backbone(model.backbone, state, path, model_cfg, "model.pretrained: ")
    return model


BACKBONE_KEYS = ("arch", "width", "cifar_stem", "patch_size")


def load_backbone(backbone, state, path, model_cfg, what=""):
    """Load a checkpoint's "backbone" entry (strictly); a backbone of another architecture is one
    line naming both: the checkpoint's model.arch / width / ... (its config) and this run's."""
    try:
        missing, unexpected = backbone.load_state_dict(state["backbone"], strict=False)
        error = f"missing {missing[:3]}, unexpected {unexpected[:3]}" if missing or unexpected else None
    except RuntimeError as e:   # shape mismatches: the first one
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        error = lines[1] if len(lines) > 1 else lines[0]
    if error is None:
        return
    saved = (state.get("config") or {}).get("model") or {}
    differ = [f"model.{k}={saved[k]!r} there, {model_cfg.get(k)!r} here" for k in BACKBONE_KEYS
              if k in saved and saved[k] != model_cfg.get(k)]
    raise ConfigError(f"{what}{path} holds another backbone: " + ("; ".join(differ) or error))


def build_classifier(model_cfg, num_classes):
    arch = model_cfg.arch
    if arch in RESNETS:
        return Classifier(ResNet(arch, model_cfg.width, model_cfg.cifar_stem, model_cfg.zero_init_residual), num_classes)
    if arch in VITS:
        return Classifier(ViT(arch, model_cfg.patch_size), num_classes)
    if arch in TORCHVISION:
        # imported here, for these architectures only: torchvision's import costs every other run
        # over a second (models/resnet.py)
        import torchvision
        return torchvision.models.get_model(arch, num_classes=num_classes)
    raise ConfigError(f"model.arch '{arch}' is not one of {sorted(RESNETS) + sorted(VITS) + list(TORCHVISION)}")
