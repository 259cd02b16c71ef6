"""MoCo v3 (Chen, Xie & He, ICCV 2021): query encoder (backbone, projector, predictor), momentum
key encoder (backbone, projector), InfoNCE against the keys of the global batch; no queue.

    ctr(q, k) = CrossEntropy(q k_all^T / tau, own index) x 2 tau      (MoCo v3 Algorithm 1)
    loss = ctr(q1, k2) + ctr(q2, k1)          symmetric: true (the default, MoCo v3's loss)
    loss = ctr(q1, k2)                        symmetric: false (NeurIPS'24 sec. 6.1)

Non-symmetric (`method.mocov3.symmetric=false`): NeurIPS'24's one stated change to MoCo v3 ("the
only modification was the use of a non-symmetric loss", sec. 6.1): one pair per image, one view
only as the query, the other only as the key, and only those two encoder passes run (the query
view is not keyed, the key view not queried), which is what Table 1's MoCo v3 cost
(3 L_q + L_k) / 197 counts (`encoded_views`). The paper calls it equivalent to the symmetric loss
at twice the batch and epochs, which needs each view in either role: which of an image's two views
is the query is drawn per image and step (common.rng.Stream.MOCO_ROLES, over the global batch, so
ranks split the 1-rank draw), at the same cost. Otherwise the asymmetric recipes (blur 1.0 on the
first view, solarisation 0.2 on the second) would always query the blurred view. With more than
two global views every pair (i < j) is ctr(q_i, k_j), roles fixed.
With Hard Augment's extra targets or local crops it falls back to the generic forward (every view
encoded both ways; the loss is still one-directional).

Keys are gathered from all ranks without gradient (they come from the momentum encoder), so
a 2-rank run computes the loss and update of the 1-rank run on the same global batch when BN
uses global-batch statistics (train.sync_bn=true, as MoCo v3 does); tests/test_training.py.

Defaults from the MoCo v3 paper/code: projector (2 layers for ResNet, 3 for ViT) and 2-layer predictor
with BN, 4096 hidden units, 256 outputs (the projector's last BN without affine); key momentum 0.99 rising to
1 on a cosine. Temperature 1.0 for ResNet-50 (LARS, lr 0.6 x batch/256 for 100 epochs, wd 1e-6)
and 0.2 for ViT (AdamW, lr 1.5e-4 x batch/256, wd 0.1, 40 warm-up epochs, frozen random patch
projection: model.freeze_patch_embed=true), set in yaml/methods/.
"""
import itertools

import torch
import torch.nn.functional as F

from common import dist, rng
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
    "symmetric": True,          # false: NeurIPS'24's non-symmetric loss, ctr(q1, k2) only
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
        self.symmetric = bool(cfg.symmetric)
        self.ema_base, self.ema_kind, self.ema = cfg.ema, cfg.ema_schedule, None

    def prepare(self, total_steps, steps_per_epoch):
        self.ema = momentum_schedule(self.ema_kind, self.ema_base, total_steps)

    def embed(self, views, compression=None, queries=None, keys=None):
        """Per view (q, k): predicted query (query setting) and momentum key (key setting: NeurIPS'24
        Table 2a compresses only the query). queries / keys: the view indices that need each
        (default all); the others get None."""
        query, key = query_key(compression)
        every = range(len(views))
        queries, keys = set(every if queries is None else queries), set(every if keys is None else keys)
        return [(self.predictor(self.projector(backbone_forward(self.backbone, v, query))) if i in queries else None,
                 self.target(v, key) if i in keys else None) for i, v in enumerate(views)]

    def pair_loss(self, a, b):
        loss = contrastive(a[0], b[1], self.temperature)
        return loss + contrastive(b[0], a[1], self.temperature) if self.symmetric else loss

    def forward(self, views, pairs=None, targets=None, local_views=None, compression=None):
        """Non-symmetric without extra targets or local crops: only the passes the pairs use run
        (view i as the query, view j as the key of pair (i, j)); otherwise the generic forward."""
        if self.symmetric or targets or local_views:
            return super().forward(views, pairs, targets, local_views, compression)
        if len(views) == 2 and pairs is None:   # one pair: the query view drawn per image
            swap = self.roles(views[0].shape[0], views[0].device)
            views = [torch.where(swap, views[1], views[0]), torch.where(swap, views[0], views[1])]
        pairs = list(itertools.combinations(range(len(views)), 2)) if pairs is None else pairs
        outs = self.embed(views, compression, queries={i for i, _ in pairs}, keys={j for _, j in pairs})
        return {"loss": torch.stack([self.pair_loss(outs[i], outs[j]).mean() for i, j in pairs]).mean()}

    def roles(self, local_batch, device):
        """[B, 1, 1, 1] bool: true where an image's second view is this step's query. Drawn for the
        global batch and sliced by rank, so 2 ranks draw what 1 rank draws."""
        g = rng.generator(self.seed, rng.Stream.MOCO_ROLES, self.step)
        swap = torch.rand(local_batch * dist.world_size(), generator=g) < 0.5
        mine = swap[dist.rank() * local_batch:(dist.rank() + 1) * local_batch]
        return mine.view(-1, 1, 1, 1).to(device, non_blocking=True)

    def encoded_views(self, n_views, n_local=0):
        """Non-symmetric, no local crops: views 0..n-2 are queries, 1..n-1 keys (one of each for
        2 views: Table 1's MoCo v3 cost); otherwise every view both ways."""
        if self.symmetric or n_local:
            return n_views, n_views
        return n_views - 1, n_views - 1

    def on_step(self, step):
        self.target.update([self.backbone, self.projector], self.ema[step])
