"""Image classifiers for train_supervised.py: a backbone of this repo plus a linear `fc`, or a
torchvision model with its own head (Table 4.2 of the thesis: ResNet-50/152, DenseNet-161,
RegNetX-3.2GF, ViT-S/16)."""
import torch.nn as nn
import torchvision

from common.config import ConfigError
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


def build_classifier(model_cfg, num_classes):
    arch = model_cfg.arch
    if arch in RESNETS:
        return Classifier(ResNet(arch, model_cfg.width, model_cfg.cifar_stem, model_cfg.zero_init_residual), num_classes)
    if arch in VITS:
        return Classifier(ViT(arch), num_classes)
    if arch in TORCHVISION:
        return torchvision.models.get_model(arch, num_classes=num_classes)
    raise ConfigError(f"model.arch '{arch}' is not one of {sorted(RESNETS) + sorted(VITS) + list(TORCHVISION)}")
