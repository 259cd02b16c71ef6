"""The model train_ssl.py trains (and lr_finder.py sweeps): the configured method on its backbone."""
import selfsup
from models import build_backbone
from selfsup.blockwise import BlockwiseMethod


def build_model(cfg):
    """The configured method on its backbone; with intermediate losses (any of interloss.aux_losses,
    partial_backprop, hard_pairs) a head per block around it (selfsup/blockwise.py).
    Returns (model, blockwise)."""
    il = cfg.interloss
    if il.aux_losses or il.partial_backprop or il.hard_pairs:
        return BlockwiseMethod(cfg.method, build_backbone(cfg.model), il, cfg.train.seed), True
    method = selfsup.build_method(cfg.method, build_backbone(cfg.model))
    method.seed = cfg.train.seed
    return method, False
