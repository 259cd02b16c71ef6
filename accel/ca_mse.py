"""Gradient estimation error of sequence-compression strategies (NeurIPS'24 sec. 5, Eq. 8-10).

For a strategy c (drop ratio, patch size) at parameters theta:
    MSE(g^c, G) = ||G - g_bar^c||^2 + E||g^c - g_bar^c||^2 = Bias^2 + Var          (Eq. 8-9)
    CA-MSE(g^c) = Bias^2 + Cost(c) / Budget * Var                                    (Eq. 10)
G (the full-sequence mean gradient) and g_bar^c are sample means over the same N samples. Autograd
only gives the gradient of a whole batch, so the per-sample variance is estimated from the means
of sub-batches of K samples: Var(per sample) = K Var(sub-batch mean) (sec. 5.1). Budget is
the cost (in sample-cost units) of one training batch without compression, so the variance term
of the full-sequence strategy is Var / batch: the variance of the gradient actually used in a
step; a strategy of cost Cost(c) fits Budget / Cost(c) samples into the same budget. Every
figure is divided by ||G||^2 (Fig. 4 is normalised by the magnitude of the ground-truth gradient).

Memory: the accumulators keep the running sum of sub-batch gradients (one flat vector per
strategy, and only one strategy is accumulated at a time) and a scalar sum of squared norms:
O(params), never O(samples x params).
"""
import torch

from accel import token_dropout
from common import rng


class GradientMoments:
    """Streaming mean and total variance of sub-batch mean gradients (flat vectors)."""

    def __init__(self, sub_batch):
        self.k = int(sub_batch)
        self.sum = None
        self.sq = 0.0
        self.n = 0

    def add(self, g):
        g = g.detach().reshape(-1).to(torch.float64)
        self.sum = g.clone() if self.sum is None else self.sum.add_(g)
        self.sq += float(g.dot(g))
        self.n += 1

    @property
    def mean(self):
        return self.sum / self.n

    def variance(self):
        """Trace of the per-sample gradient covariance: K x the unbiased variance of the
        sub-batch means, sum_j ||g_j - g_bar||^2 / (n - 1)."""
        if self.n < 2:
            raise ValueError("the variance needs at least two sub-batches")
        m = self.mean
        between = (self.sq - self.n * float(m.dot(m))) / (self.n - 1)
        return self.k * max(between, 0.0)


def error_profile(G, moments, cost, budget):
    """Eq. 8-10 for one strategy, each term divided by ||G||^2: bias2, var (per sample),
    ca_var = cost / budget x var, ca_mse = bias2 + ca_var, mse1 = bias2 + var (one sample)."""
    norm = float(G.dot(G))
    diff = G - moments.mean
    bias2 = float(diff.dot(diff)) / norm
    var = moments.variance() / norm
    ca_var = cost / budget * var
    return {"bias2": bias2, "var": var, "ca_var": ca_var, "ca_mse": bias2 + ca_var, "mse1": bias2 + var,
            "cost": cost, "grad_norm2": norm}


def flat_grad(params):
    return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).to(torch.float64)
                      for p in params])


def strategy_moments(method, batches, stage, sub_batch, seed=0):
    """Accumulate the gradients of `method`'s loss under `stage` = (d_q, p_q, d_k, p_k) over the
    sub-batches that `batches()` yields (an iterable of (views, local_views); called afresh, it
    must yield the same data). Buffers that a forward changes (BN statistics, DINO's centre,
    queues) are restored after every sub-batch, so every strategy sees the same model."""
    params = [p for p in method.parameters() if p.requires_grad]
    buffers = {k: v.clone() for k, v in method.state_dict().items() if not any(v is p for p in params)}
    moments = GradientMoments(sub_batch)
    d_q, p_q, d_k, p_k = stage
    for j, (views, local_views) in enumerate(batches()):
        gen = rng.generator(seed, rng.Stream.CA_MSE, j)
        method.zero_grad(set_to_none=True)
        setting = token_dropout.QueryKey(token_dropout.SeqCompression(d_q, p_q, gen),
                                         token_dropout.SeqCompression(d_k, p_k, gen))
        loss = method(views, local_views=local_views, compression=setting)["loss"]
        loss.backward()
        moments.add(flat_grad(params))
        method.load_state_dict(buffers, strict=False)
    method.zero_grad(set_to_none=True)
    return moments


def best_strategy(grid, drop_ratios, patch_sizes, key="ca_mse"):
    """(drop ratio, patch size) minimising `key` over grid[i_patch][i_drop] (dicts)."""
    best = min(((grid[i][j][key], d, p) for i, p in enumerate(patch_sizes) for j, d in enumerate(drop_ratios)))
    return best[1], best[2]


def schedule_from_profiles(fractions, best):
    """Stages for accel.compression.schedule from the optimal strategy at several fractions of
    training: each checkpoint's strategy holds from the midpoint with the previous checkpoint to
    the midpoint with the next (the first from 0)."""
    order = sorted(range(len(fractions)), key=lambda i: fractions[i])
    out = []
    for n, i in enumerate(order):
        start = 0.0 if n == 0 else 0.5 * (fractions[order[n - 1]] + fractions[i])
        d, p = best[i]
        if out and out[-1][1] == {"drop_ratio": d, "patch_size": p}:
            continue
        out.append((start, {"drop_ratio": d, "patch_size": p}))
    return out
