"""SimCLR (Chen et al., ICML 2020): a projector and the NT-Xent loss with in-batch negatives.

Defaults from the SimCLR paper's ImageNet setting: a 2-layer MLP projector (2048 hidden, 128
out) with BN after every layer, the output layer included, as in its released code
(model_util.projection_head: every `linear_layer` has use_bn=True; the last one has no bias and
its BN no beta, center=False, but a learned scale gamma), temperature 0.1 (the paper's best at batch 4096;
0.5 for CIFAR-10 in its appendix B.9), LARS with lr 0.3 x batch/256, weight decay 1e-6, 10 warm-up
epochs (yaml/methods/).

Negatives come from the global batch: both views' embeddings are gathered from every rank
WITH gradient (`all_gather_with_grad`), so a loss term of rank r back-propagates into the
samples of rank s too, and a 2-rank run computes the gradient of the 1-rank run on the same
global batch (tests/test_training.py).
"""
import torch
import torch.nn.functional as F

from common import dist
from common.precision import upcast
from selfsup.base import SSLMethod, backbone_forward, mlp, query_key
from selfsup.registry import register

DEFAULTS = {
    "proj_hidden": 2048,
    "proj_dim": 128,
    "temperature": 0.1,
}


def nt_xent(a, b, temperature):
    """Per-sample NT-Xent of the pair of views (a, b) (SimCLR Eq. 1, symmetrised over the two
    anchors): for local sample i, l(a_i) = -log exp(s(a_i, b_i)/t) / sum_{k != a_i} exp(s(a_i, k)/t)
    over the 2N - 1 other embeddings of the global batch (both views, all ranks), likewise
    l(b_i); returns (l(a_i) + l(b_i)) / 2, shape [B_local]. a, b: [B_local, D], any norm.
    The gather carries gradients."""
    a, b = F.normalize(a, dim=1), F.normalize(b, dim=1)
    all_a, all_b = dist.all_gather_with_grad(a), dist.all_gather_with_grad(b)
    n, bsz = all_a.shape[0], a.shape[0]
    idx = dist.rank() * bsz + torch.arange(bsz, device=a.device)   # global index of each local sample
    keys = torch.cat([all_a, all_b], 0)                              # [2N, D]
    losses = []
    for anchor, pos, own in ((a, idx + n, idx), (b, idx, idx + n)):
        logits = anchor @ keys.T / temperature
        logits = logits.masked_fill(F.one_hot(own, 2 * n).bool(), float("-inf"))
        losses.append(F.cross_entropy(upcast(logits), pos, reduction="none"))
    return 0.5 * (losses[0] + losses[1])


@register("simclr", DEFAULTS)
class SimCLR(SSLMethod):
    has_target = False

    def __init__(self, backbone, cfg):
        super().__init__(backbone)
        self.projector = mlp([backbone.num_features, cfg.proj_hidden, cfg.proj_dim], last_bn=True, last_bn_affine=True)
        out_bn = self.projector[-1]
        out_bn.bias.requires_grad_(False)      # center=False: beta stays 0 (never optimised), gamma learns
        self.temperature = cfg.temperature

    def embed(self, views, compression=None):
        """Per view the projection; one encoder, so every view gets the query setting (NeurIPS'24 sec. 6.4)."""
        query, _ = query_key(compression)
        return [self.projector(backbone_forward(self.backbone, v, query)) for v in views]

    def pair_loss(self, a, b):
        return nt_xent(a, b, self.temperature)
