"""SimSiam (Chen & He, CVPR 2021): projector, predictor, symmetric negative cosine loss with a
stop-gradient on the target branch. Defaults from the SimSiam paper (ImageNet: 3-layer
projector of 2048, predictor bottleneck 512, predictor at a fixed learning rate; CIFAR: a
2-layer projector)."""
import torch.nn.functional as F

from common.precision import upcast
from selfsup.base import SSLMethod, backbone_forward, mlp, query_key
from selfsup.registry import register

DEFAULTS = {
    "proj_dim": 2048,
    "proj_layers": 3,
    "pred_hidden": 512,
    "fix_pred_lr": True,
    # Learning-rate multiplier of the predictor. 1 is the paper's setting. A faster predictor
    # (Tian et al., ICML 2021, on non-contrastive dynamics) shortens SimSiam's slow start, where
    # kNN accuracy first falls below the random-init value; the CPU-sized configs use 10.
    "pred_lr_mult": 1.0,
}


def negative_cosine(p, z):
    """Per-sample D(p, z) = -cos(p, stopgrad(z)), SimSiam Eq. 1 with the stop-gradient of Eq. 3;
    in float32 under bf16 / fp16 autocast (CPU autocast would compute it in bf16)."""
    return -F.cosine_similarity(upcast(p), upcast(z.detach()), dim=-1)


def simsiam_loss(p1, p2, z1, z2):
    """Per-sample symmetric loss L = D(p1, z2)/2 + D(p2, z1)/2 (SimSiam Eq. 2); shape [B]."""
    return 0.5 * negative_cosine(p1, z2) + 0.5 * negative_cosine(p2, z1)


@register("simsiam", DEFAULTS)
class SimSiam(SSLMethod):
    has_target = False

    def __init__(self, backbone, cfg):
        super().__init__(backbone)
        d, h = backbone.num_features, cfg.proj_dim
        self.projector = mlp([d] + [h] * cfg.proj_layers)
        self.predictor = mlp([h, cfg.pred_hidden, h], last_bn=False)
        self.fix_pred_lr, self.pred_lr_mult = cfg.fix_pred_lr, cfg.pred_lr_mult

    def embed(self, views, compression=None):
        """Per view (z, p): projection and prediction; every view with the query setting."""
        query, _ = query_key(compression)
        outs = []
        for v in views:
            z = self.projector(backbone_forward(self.backbone, v, query))
            outs.append((z, self.predictor(z)))
        return outs

    def pair_loss(self, a, b):
        (z1, p1), (z2, p2) = a, b
        return simsiam_loss(p1, p2, z1, z2)

    def param_groups(self):
        pred = list(self.predictor.parameters())
        rest = [p for n, p in self.named_parameters() if not n.startswith("predictor.")]
        return [{"params": rest}, {"params": pred, "fix_lr": self.fix_pred_lr, "lr_mult": self.pred_lr_mult}]
