"""SwAV (Caron et al., NeurIPS 2020): swapped prediction of online cluster assignments.

Each view's normalised projection z is scored against K prototypes (p = z C^T); codes q of the
global views come from the Sinkhorn-Knopp algorithm on the scores (equal partition of the batch
over the prototypes), and every other view predicts them:
    loss = mean over global views i, other views v of  -sum_k q_i,k log softmax(p_v / tau)_k
Sinkhorn's sums run over the global batch (all ranks). Prototypes are re-normalised before
every step and frozen (gradients dropped) for the first freeze_prototypes_steps steps.

Queues (for small batches): as SwAV, one queue per crop used for assignment (the two global
crops): queue[i] holds crop i's projections of the last queue_length images, newest first,
identical on every rank (enqueued from all ranks in rank order); when computing crop i's codes,
each rank prepends its own 1/W slice of queue[i] to its batch in Sinkhorn, so the ranks together
use every entry exactly once and a W-rank run sees the same problem as a 1-rank run. (SwAV keeps
queue_length / W entries per crop on each rank; a shared queue makes the checkpoint hold all of
it.) Filling starts at queue_start_epoch, and the queues are used once full, as in SwAV; a queue
needs exactly two global views.

Defaults from the SwAV paper: 3000 prototypes, 128-d projection after a 2048 hidden layer,
tau = 0.1, epsilon = 0.05, 3 Sinkhorn iterations, prototypes frozen for the first epoch
(313 iterations at batch 4096); multi-crop 2 x 224 (0.14-1) + 6 x 96 (0.05-0.14) through
data.local_views; queue 3840 from epoch 15 for batches of 256 (yaml/methods/).

Pairs, for Hard Augment: pair_loss(a, b) of two global views is the swapped prediction of the
pair, (H(q_a, p_b) + H(q_b, p_a)) / 2 per sample, with codes from Sinkhorn on each view's
own batch of scores (no queue), all without touching the queue.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from common import dist
from common.precision import upcast
from selfsup.base import SSLMethod, backbone_forward, mlp, ordered_pairs, query_key
from selfsup.registry import register

DEFAULTS = {
    "proj_hidden": 2048,
    "proj_dim": 128,
    "num_prototypes": 3000,
    "temperature": 0.1,
    "epsilon": 0.05,
    "sinkhorn_iters": 3,
    "freeze_prototypes_epochs": 1.0,
    "queue_length": 0,          # 0: no queue
    "queue_start_epoch": 15.0,
}
QUEUED_CROPS = 2                # the global crops that get codes, each with its own queue (SwAV)


@torch.no_grad()
def sinkhorn(scores, epsilon, iters):
    """Codes for scores [B_local, K]: Q = exp(scores / eps) rescaled alternately so that each
    prototype receives 1/K of the global batch's mass and each sample 1/B (SwAV Eq. 3, sums over
    all ranks); returned per sample (rows sum to 1): [B_local, K]."""
    scores = upcast(scores)
    shift = dist.all_reduce_max(scores.max().clone())   # one shift for all ranks keeps exp finite
    q = torch.exp((scores - shift) / epsilon).T         # [K, B_local]
    k = q.shape[0]
    b = float(q.shape[1] * dist.world_size())   # every rank scores as many samples (equal local batches)
    q /= dist.all_reduce_sum(q.sum().clone())
    for _ in range(iters):
        q /= dist.all_reduce_sum(q.sum(1, keepdim=True)) * k   # rows: each prototype 1/K
        q /= q.sum(0, keepdim=True) * b                        # columns: each sample 1/B
    return (q * b).T


def swapped_prediction(codes, scores, temperature):
    """Per-sample H(q, softmax(p / tau)) = -sum_k q_k log softmax(p / tau)_k."""
    return -(codes * F.log_softmax(upcast(scores) / temperature, dim=1)).sum(1)


@register("swav", DEFAULTS)
class SwAV(SSLMethod):
    has_target = False

    def __init__(self, backbone, cfg):
        super().__init__(backbone)
        self.projector = mlp([backbone.num_features, cfg.proj_hidden, cfg.proj_dim], last_bn=False)
        self.prototypes = nn.Linear(cfg.proj_dim, cfg.num_prototypes, bias=False)
        self.cfg = cfg
        # one queue per global crop (SwAV's crops_for_assign = [0, 1]), newest entry first
        self.register_buffer("queue", torch.zeros(QUEUED_CROPS, cfg.queue_length, cfg.proj_dim))
        self.register_buffer("queue_count", torch.zeros((), dtype=torch.long))  # entries filled, per queue
        self.freeze_steps = self.queue_start_step = 0

    def prepare(self, total_steps, steps_per_epoch):
        self.freeze_steps = int(round(self.cfg.freeze_prototypes_epochs * steps_per_epoch))
        self.queue_start_step = int(round(self.cfg.queue_start_epoch * steps_per_epoch))

    def begin_step(self, step):
        super().begin_step(step)
        with torch.no_grad():  # SwAV normalises the prototypes before each step
            self.prototypes.weight.copy_(F.normalize(self.prototypes.weight, dim=1))

    def embed(self, views, compression=None):
        """Per view (z, p): normalised projection and prototype scores; every view with the query setting."""
        query, _ = query_key(compression)
        outs = []
        for v in views:
            z = F.normalize(self.projector(backbone_forward(self.backbone, v, query)), dim=1)
            outs.append((z, self.prototypes(z)))
        return outs

    def codes(self, crop, scores, use_queue):
        """Sinkhorn codes of global crop `crop`'s scores, with this rank's slice of that crop's queue."""
        if not use_queue:
            return sinkhorn(scores.detach(), self.cfg.epsilon, self.cfg.sinkhorn_iters)
        n, w = self.queue.shape[1], dist.world_size()
        mine = self.queue[crop, dist.rank() * n // w:(dist.rank() + 1) * n // w]
        with torch.no_grad():
            full = torch.cat([self.prototypes(mine.to(scores.dtype)), scores.detach()], 0)
        return sinkhorn(full, self.cfg.epsilon, self.cfg.sinkhorn_iters)[-scores.shape[0]:]

    def pair_loss(self, a, b):
        c = self.cfg
        qa, qb = sinkhorn(a[1].detach(), c.epsilon, c.sinkhorn_iters), sinkhorn(b[1].detach(), c.epsilon, c.sinkhorn_iters)
        return 0.5 * (swapped_prediction(qa, b[1], c.temperature) + swapped_prediction(qb, a[1], c.temperature))

    def forward(self, views, pairs=None, targets=None, local_views=None, compression=None):
        c = self.cfg
        outs = self.embed(views, compression)
        # local crops: never compressed (NeurIPS'24 sec. 6.4)
        scores = [p for _, p in outs] + [p for _, p in self.embed(local_views or [])]
        if c.queue_length > 0 and len(outs) != QUEUED_CROPS:
            raise ValueError(f"SwAV's queues are per global crop: {QUEUED_CROPS} global views, got {len(outs)}")
        use_queue = c.queue_length > 0 and bool(self.queue_count >= c.queue_length)
        ordered = ordered_pairs(len(outs), len(scores), pairs)
        q = {i: self.codes(i, outs[i][1], use_queue) for i in sorted({i for i, _ in ordered})}
        terms = [swapped_prediction(q[i], scores[v], c.temperature).mean() for i, v in ordered]
        return self.mean_loss(terms, outs, pairs, targets)

    @torch.no_grad()
    def update_state(self, outs, pairs):
        n = self.queue.shape[1]
        if n == 0 or self.step < self.queue_start_step:
            return
        added = 0
        for crop, (z, _) in enumerate(outs[:QUEUED_CROPS]):   # crop i's embeddings into queue i, all ranks
            z = dist.all_gather_no_grad(z.contiguous())[:n]    # rank order; more than fits: the first n
            self.queue[crop] = torch.cat([z.to(self.queue.dtype), self.queue[crop, :n - z.shape[0]]], 0)  # newest first
            added = z.shape[0]
        self.queue_count.add_(added).clamp_(max=n)

    def after_backward(self, step):
        if step < self.freeze_steps:
            self.prototypes.weight.grad = None
