"""BYOL (Grill et al., NeurIPS 2020): online network (backbone, projector, predictor) regressing
the projection of a momentum target network; no negatives.

Defaults from the BYOL paper: projector and predictor MLPs of 4096 hidden units and 256
outputs, target momentum rising from 0.996 to 1 on a cosine (sec. 3.2), LARS with base lr
0.2 x batch/256 and weight decay 1.5e-6 (yaml/methods/).
"""
import torch.nn.functional as F

from common.precision import upcast
from selfsup.base import SSLMethod, backbone_forward, mlp, query_key
from selfsup.momentum import MomentumTarget, momentum_schedule
from selfsup.registry import register

DEFAULTS = {
    "proj_hidden": 4096,
    "proj_dim": 256,
    "pred_hidden": 4096,
    "ema": 0.996,               # base target momentum tau_base
    "ema_schedule": "cosine",   # cosine (tau_base -> 1) | constant
}


def regression_loss(p, z):
    """Per-sample ||p/|p| - z/|z|||^2 = 2 - 2 cos(p, z) (BYOL Eq. 2), z without gradient; in
    float32 under bf16 / fp16 autocast."""
    return 2 - 2 * F.cosine_similarity(upcast(p), upcast(z.detach()), dim=-1)


def byol_loss(p1, p2, z1, z2):
    """Symmetrised per-sample loss L + L~ (BYOL Eq. 2-3): online predictions p of each view
    against the target projections z of the other view; shape [B]."""
    return regression_loss(p1, z2) + regression_loss(p2, z1)


@register("byol", DEFAULTS)
class BYOL(SSLMethod):
    has_target = True

    def __init__(self, backbone, cfg):
        super().__init__(backbone)
        self.projector = mlp([backbone.num_features, cfg.proj_hidden, cfg.proj_dim], last_bn=False)
        self.predictor = mlp([cfg.proj_dim, cfg.pred_hidden, cfg.proj_dim], last_bn=False)
        self.target = MomentumTarget(self.backbone, self.projector)
        self.ema_base, self.ema_kind = cfg.ema, cfg.ema_schedule
        self.ema = None

    def prepare(self, total_steps, steps_per_epoch):
        self.ema = momentum_schedule(self.ema_kind, self.ema_base, total_steps)

    def embed(self, views, compression=None):
        """Per view (p, z): online prediction (query setting), target projection (key setting, no gradient)."""
        query, key = query_key(compression)
        return [(self.predictor(self.projector(backbone_forward(self.backbone, v, query))), self.target(v, key))
                for v in views]

    def pair_loss(self, a, b):
        (p1, z1), (p2, z2) = a, b
        return byol_loss(p1, p2, z1, z2)

    def on_step(self, step):
        self.target.update([self.backbone, self.projector], self.ema[step])
