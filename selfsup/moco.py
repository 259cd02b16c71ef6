"""MoCo v1 / v2 / v2+ (He et al., CVPR 2020; Chen et al., arXiv 2003.04297): a query encoder, a
momentum key encoder and a queue of negative keys; InfoNCE with temperature.

Three registered names share this file, each with its paper's defaults:
  moco        MoCo v1: linear 128-d head, temperature 0.07, queue 65536, key momentum 0.999
  mocov2      MoCo v2: 2-layer MLP head (2048 hidden), temperature 0.2 (v2 augmentations and
              cosine lr live in the YAML files); asymmetric: queries of view i, keys of view j
  mocov2plus  MoCo v2+ as benchmarked in the SimSiam paper (Table 4) and WACV'23 Table 2: the
              v2 recipe with the symmetrised loss ctr(q1, k2) + ctr(q2, k1)

Keys of all ranks are enqueued (all_gather without gradient: keys never carry gradients), so
the queue is identical on every rank. Shuffling BN (MoCo sec. 3.3): with more than one rank,
the key encoder sees the global batch in a random order split across ranks, so a sample's key
and query are normalised with different batch statistics; the permutation is a function of
the step, the same on every rank. With one process there is nothing to shuffle across (the
key encoder's BN sees the whole local batch, as MoCo's single-GPU case would); use
train.sync_bn=true to give both encoders global-batch statistics instead.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F

from common import dist
from common.precision import upcast
from selfsup.base import SSLMethod, backbone_forward, mlp, query_key
from selfsup.momentum import MomentumTarget, momentum_schedule
from selfsup.registry import register

DEFAULTS_V2 = {
    "proj_hidden": 2048,        # 0: linear head (MoCo v1)
    "proj_dim": 128,
    "temperature": 0.2,
    "queue_size": 65536,
    "ema": 0.999,
    "ema_schedule": "constant",
    "symmetric": False,
    "shuffle_bn": True,
}
DEFAULTS_V1 = dict(DEFAULTS_V2, proj_hidden=0, temperature=0.07)
DEFAULTS_V2PLUS = dict(DEFAULTS_V2, symmetric=True)


def info_nce(q, k, queue, temperature):
    """Per-sample InfoNCE (MoCo Eq. 1): -log exp(q.k+/t) / (exp(q.k+/t) + sum_queue exp(q.k-/t)),
    q and k: [B, D] L2-normalised, queue: [K, D] L2-normalised negatives; shape [B]."""
    pos = (q * k.detach()).sum(1, keepdim=True)
    neg = q @ queue.detach().clone().T   # a copy: the queue is updated in place before backward
    logits = torch.cat([pos, neg], 1) / temperature
    return F.cross_entropy(upcast(logits), torch.zeros(q.shape[0], dtype=torch.long, device=q.device),
                           reduction="none")


def shuffled_forward(encoder, x, step, compression=None):
    """encoder(x, compression) with the global batch permuted across ranks (shuffling BN); no gradient."""
    world = dist.world_size()
    if world == 1:
        return encoder(x, compression)
    bsz = x.shape[0]
    x_all = dist.all_gather_no_grad(x)
    perm = torch.randperm(x_all.shape[0], generator=torch.Generator().manual_seed(int(step)))
    perm = perm.to(x.device, non_blocking=True)   # drawn on the host: no device value is read
    mine = slice(dist.rank() * bsz, (dist.rank() + 1) * bsz)
    k_all = dist.all_gather_no_grad(encoder(x_all[perm[mine]], compression))    # k_all[j] = key of image perm[j]
    return k_all[torch.argsort(perm)[mine]]


class MoCo(SSLMethod):
    has_target = True

    def __init__(self, backbone, cfg):
        super().__init__(backbone)
        d = backbone.num_features
        self.projector = (mlp([d, cfg.proj_hidden, cfg.proj_dim], last_bn=False, bn=False) if cfg.proj_hidden
                          else nn.Linear(d, cfg.proj_dim))
        self.target = MomentumTarget(self.backbone, self.projector)
        self.temperature, self.symmetric, self.shuffle_bn = cfg.temperature, cfg.symmetric, cfg.shuffle_bn
        self.ema_base, self.ema_kind, self.ema = cfg.ema, cfg.ema_schedule, None
        self.register_buffer("queue", F.normalize(torch.randn(cfg.queue_size, cfg.proj_dim), dim=1))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))

    def prepare(self, total_steps, steps_per_epoch):
        self.ema = momentum_schedule(self.ema_kind, self.ema_base, total_steps)

    def keys(self, x, compression=None):
        """Momentum keys; `compression`: the key setting (token_dropout.SeqCompression or None)."""
        if self.shuffle_bn:
            return F.normalize(shuffled_forward(self.target, x, self.step, compression), dim=1)
        return F.normalize(self.target(x, compression), dim=1)

    def query(self, x, compression=None):
        """Queries; `compression`: the query setting (token_dropout.SeqCompression or None)."""
        return F.normalize(self.projector(backbone_forward(self.backbone, x, compression)), dim=1)

    def embed(self, views, compression=None):
        """Per view (q, k): query (with gradient) and momentum key, both L2-normalised."""
        q_setting, k_setting = query_key(compression)
        return [(self.query(v, q_setting), self.keys(v, k_setting)) for v in views]

    def forward(self, views, pairs=None, targets=None, local_views=None, compression=None):
        if self.symmetric or targets or local_views:
            return super().forward(views, pairs, targets, local_views, compression)
        # asymmetric MoCo computes only what ctr(q_i, k_j) needs: queries of the views i,
        # keys of the views j (MoCo's own step: one query and one key forward, not two each)
        if pairs is None:
            pairs = [(i, j) for i in range(len(views)) for j in range(i + 1, len(views))]
        q_setting, k_setting = query_key(compression)
        q = {i: self.query(views[i], q_setting) for i in sorted({i for i, _ in pairs})}
        k = {j: self.keys(views[j], k_setting) for j in sorted({j for _, j in pairs})}
        loss = torch.stack([info_nce(q[i], k[j], self.queue, self.temperature).mean() for i, j in pairs]).mean()
        if torch.is_grad_enabled():
            self.enqueue(torch.cat([dist.all_gather_no_grad(k[j].contiguous()) for j in sorted(k)], 0))
        return {"loss": loss}

    def pair_loss(self, a, b):
        """ctr(q_a, k_b) against the queue; + ctr(q_b, k_a) for the symmetric v2+."""
        loss = info_nce(a[0], b[1], self.queue, self.temperature)
        if self.symmetric:
            loss = loss + info_nce(b[0], a[1], self.queue, self.temperature)
        return loss

    def update_state(self, outs, pairs):
        """Enqueue every key that served as a positive this step (view j of each pair (i, j);
        both views for the symmetric loss), from all ranks, replacing the oldest entries."""
        used = sorted({j for _, j in pairs} | ({i for i, _ in pairs} if self.symmetric else set()))
        # gathered view by view, so the queue holds the global batch's keys in the order a single
        # process would enqueue them (view 1 of all images, then view 2), whatever the ranks
        self.enqueue(torch.cat([dist.all_gather_no_grad(outs[j][1].contiguous()) for j in used], 0))

    @torch.no_grad()
    def enqueue(self, keys):
        """keys: the global batch's keys (already gathered from all ranks)."""
        idx = (self.queue_ptr + torch.arange(keys.shape[0], device=keys.device)) % self.queue.shape[0]
        self.queue[idx] = keys.to(self.queue.dtype)
        self.queue_ptr.copy_((self.queue_ptr + keys.shape[0]) % self.queue.shape[0])

    def on_step(self, step):
        self.target.update([self.backbone, self.projector], self.ema[step])


register("moco", DEFAULTS_V1)(MoCo)
register("mocov2", DEFAULTS_V2)(MoCo)
register("mocov2plus", DEFAULTS_V2PLUS)(MoCo)
