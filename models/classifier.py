"""Image classifiers for train_supervised.py: a backbone of this repo plus a linear `fc`, or a
torchvision model with its own head (Table 4.2 of the thesis: ResNet-50/152, DenseNet-161,
RegNetX-3.2GF, ViT-S/16)."""
import torch.nn as nn

from common.config import ConfigError
from common.run import load_checkpoint
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


def load_pretrained_backbone(model, path):
    """Fine-tuning: load the "backbone" entry of a train_ssl.py checkpoint into model.backbone;
    every backbone weight must be there (a clear error names the file and the first mismatch)."""
    if not hasattr(model, "backbone"):
        raise ConfigError(f"model.pretrained needs one of this repo's backbones, not a torchvision {type(model).__name__}")
    state = load_checkpoint(path)  # one-line error naming the file if it is missing or unreadable
    if "backbone" not in state:
        raise ConfigError(f"model.pretrained: {path} has no 'backbone' entry (not a train_ssl.py checkpoint)")
    where = f"model.pretrained: {path} does not fit the model (model.arch, model.width, model.patch_size)"
    try:
        missing, unexpected = model.backbone.load_state_dict(state["backbone"], strict=False)
    except RuntimeError as e:   # shape mismatches
        raise ConfigError(f"{where}: {str(e).splitlines()[1].strip() if len(str(e).splitlines()) > 1 else e}") from None
    if missing or unexpected:
        raise ConfigError(f"{where}: missing {missing[:3]}, unexpected {unexpected[:3]}")
    return model


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
