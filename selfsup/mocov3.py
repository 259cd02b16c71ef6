"""MoCo v3 (Chen, Xie & He, ICCV 2021): query encoder (backbone, projector, predictor), momentum
key encoder (backbone, projector), InfoNCE against the keys of the global batch; no queue.

    ctr(q, k) = CrossEntropy(q k_all^T / tau, own index) x 2 tau      (MoCo v3 Algorithm 1)
    loss = ctr(q1, k2) + ctr(q2, k1)

Keys are gathered from all ranks without gradient (they come from the momentum encoder), so
a 2-rank run computes the loss and update of the 1-rank run on the same global batch when BN
uses global-batch statistics (train.sync_bn=true, as MoCo v3 does); tests/test_training.py.

Defaults from the MoCo v3 paper/code: projector (2 layers for ResNet, 3 for ViT) and 2-layer predictor
with BN, 4096 hidden units, 256 outputs (the projector's last BN without affine); key momentum 0.99 rising to
1 on a cosine. Temperature 1.0 for ResNet-50 (LARS, lr 0.6 x batch/256 for 100 epochs, wd 1e-6)
and 0.2 for ViT (AdamW, lr 1.5e-4 x batch/256, wd 0.1, 40 warm-up epochs, frozen random patch
projection: model.freeze_patch_embed=true), set in yaml/methods/.
"""
import torch
import torch.nn.functional as F

from common import dist
from common.precision import upcast
from selfsup.base import SSLMethod, backbone_forward, mlp, query_key
from selfsup.momentum import MomentumTarget, momentum_schedule
from selfsup.registry import register

DEFAULTS = {
    "proj_hidden": 4096,
    "proj_dim": 256,
    "proj_layers": 2,           # ResNet: 2, ViT: 3 (the paper's code)
    "pred_hidden": 4096,
    "temperature": 1.0,
    "ema": 0.99,
    "ema_schedule": "cosine",
}


def contrastive(q, k, temperature):
    """Per-sample ctr(q, k): q [B_local, D] with gradient, k [B_local, D] keys of the same images;
    negatives are the keys of every rank (gathered without gradient). Shape [B_local]."""
    q, k = F.normalize(q, dim=1), F.normalize(k.detach(), dim=1)
    keys = dist.all_gather_no_grad(k)
    labels = dist.rank() * q.shape[0] + torch.arange(q.shape[0], device=q.device)
    logits = upcast(q @ keys.T / temperature)
    return F.cross_entropy(logits, labels, reduction="none") * (2 * temperature)


@register("mocov3", DEFAULTS)
class MoCoV3(SSLMethod):
    has_target = True

    def __init__(self, backbone, cfg):
        super().__init__(backbone)
        dims = [backbone.num_features] + [cfg.proj_hidden] * (cfg.proj_layers - 1) + [cfg.proj_dim]
        self.projector = mlp(dims, last_bn=True, last_bn_affine=False)
        self.predictor = mlp([cfg.proj_dim, cfg.pred_hidden, cfg.proj_dim], last_bn=False)
        self.target = MomentumTarget(self.backbone, self.projector)
        self.temperature = cfg.temperature
        self.ema_base, self.ema_kind, self.ema = cfg.ema, cfg.ema_schedule, None

    def prepare(self, total_steps, steps_per_epoch):
        self.ema = momentum_schedule(self.ema_kind, self.ema_base, total_steps)

    def embed(self, views, compression=None):
        """Per view (q, k): predicted query (query setting) and momentum key (key setting: NeurIPS'24
        Table 2a compresses only the query)."""
        query, key = query_key(compression)
        return [(self.predictor(self.projector(backbone_forward(self.backbone, v, query))), self.target(v, key))
                for v in views]

    def pair_loss(self, a, b):
        return contrastive(a[0], b[1], self.temperature) + contrastive(b[0], a[1], self.temperature)

    def on_step(self, step):
        self.target.update([self.backbone, self.projector], self.ema[step])
