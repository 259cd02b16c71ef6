"""Networks: ResNet backbones with torchvision names and a stage-wise forward; ViTs with
resolution-following position embeddings; global-batch BatchNorm; image classifiers."""
from common.config import ConfigError
from models.resnet import ARCHS, ResNet
from models.vit import SIZES, ViT


def build_backbone(model_cfg):
    """The SSL backbone named by model.arch: a ResNet (models/resnet.py) or a ViT (models/vit.py),
    returning pooled / class-token features of size `.num_features`."""
    if model_cfg.arch in ARCHS:
        return ResNet(model_cfg.arch, model_cfg.width, model_cfg.cifar_stem, model_cfg.zero_init_residual)
    if model_cfg.arch in SIZES:
        return ViT(model_cfg.arch, model_cfg.patch_size, freeze_patch_embed=model_cfg.freeze_patch_embed)
    raise ConfigError(f"model.arch '{model_cfg.arch}' is not one of {sorted(ARCHS) + sorted(SIZES)}")
