"""Gradient estimation error of sequence-compression strategies (NeurIPS'24 sec. 5, Eq. 8-10).

For a strategy c (drop ratio, patch size) at parameters theta:
    MSE(g^c, G) = ||G - g_bar^c||^2 + E||g^c - g_bar^c||^2 = Bias^2 + Var          (Eq. 8-9)
    CA-MSE(g^c) = Bias^2 + Cost(c) / Budget * Var                                    (Eq. 10)
G (the full-sequence mean gradient) and g_bar^c are sample means over the same N samples; the squared
bias is estimated without the sampling noise of their difference (`squared_bias`). Autograd
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
from common import dist, rng


class GradientMoments:
    """Streaming mean and total variance of sub-batch mean gradients (flat vectors), kept as the
    sums of `folds` interleaved groups of sub-batches (sub-batch j in group j mod folds), which
    the unbiased squared bias of `error_profile` needs: memory folds x params."""

    def __init__(self, sub_batch, folds=4):
        self.k, self.folds = int(sub_batch), int(folds)
        self.fold_sums, self.fold_n = [None] * self.folds, [0] * self.folds
        self.sq = 0.0
        self.n = 0

    def add(self, g):
        g = g.detach().reshape(-1).to(torch.float64)
        f = self.n % self.folds
        self.fold_sums[f] = g.clone() if self.fold_sums[f] is None else self.fold_sums[f].add_(g)
        self.fold_n[f] += 1
        self.sq += float(g.dot(g))
        self.n += 1

    @property
    def sum(self):
        return sum(s for s in self.fold_sums if s is not None)

    @property
    def mean(self):
        return self.sum / self.n

    def fold_means(self):
        return [s / c for s, c in zip(self.fold_sums, self.fold_n) if c]

    def variance(self):
        """Trace of the per-sample gradient covariance: K x the unbiased variance of the
        sub-batch means, sum_j ||g_j - g_bar||^2 / (n - 1)."""
        if self.n < 2:
            raise ValueError("the variance needs at least two sub-batches")
        m = self.mean
        between = (self.sq - self.n * float(m.dot(m))) / (self.n - 1)
        return self.k * max(between, 0.0)


def squared_bias(base, moments):
    """Unbiased ||E[g^c] - E[G]||^2 and its jackknife standard error (over folds), from the same
    sub-batches seen by both strategies. The plug-in ||G_bar - g_bar^c||^2 adds the sampling
    variance of the mean difference, tr Cov(d_bar) > 0, to every compressed strategy and nothing
    to the uncompressed one (whose difference is 0), which biases small-sample schedules toward
    no compression. With d_a the difference of the two strategies' means over fold a (folds are
    disjoint sub-batches, so independent), E[d_a . d_b] = ||mu||^2 for a != b: the U-statistic
    (||sum_a d_a||^2 - sum_a ||d_a||^2) / (m (m - 1)) is unbiased (it can fall below 0 when the
    bias is under the noise)."""
    if moments is base:
        return 0.0, 0.0
    if base.fold_n != moments.fold_n:
        raise ValueError("squared_bias: the two strategies must be accumulated over the same sub-batches")
    d = [a - b for a, b in zip(base.fold_means(), moments.fold_means())]
    m = len(d)
    if m < 2:
        raise ValueError("the unbiased squared bias needs at least two sub-batches")
    total = sum(d)
    sq = [float(x.dot(x)) for x in d]
    u = (float(total.dot(total)) - sum(sq)) / (m * (m - 1))
    if m < 3:
        return u, float("nan")
    loo = [(float((total - x).dot(total - x)) - (sum(sq) - q)) / ((m - 1) * (m - 2)) for x, q in zip(d, sq)]
    mean_loo = sum(loo) / m
    return u, ((m - 1) / m * sum((v - mean_loo) ** 2 for v in loo)) ** 0.5


def error_profile(base, moments, cost, budget):
    """Eq. 8-10 for one strategy against the uncompressed one (`base`, accumulated over the same
    sub-batches), each term divided by ||G||^2: bias2 (unbiased, `squared_bias`) with its standard
    error bias2_se, bias2_plugin (the biased ||G_bar - g_bar^c||^2, for comparison), var (per
    sample), ca_var = cost / budget x var, ca_mse = bias2 + ca_var, mse1 = bias2 + var (one sample)."""
    G = base.mean
    norm = float(G.dot(G))
    diff = G - moments.mean
    bias2, se = squared_bias(base, moments)
    var = moments.variance() / norm
    ca_var = cost / budget * var
    return {"bias2": bias2 / norm, "bias2_se": se / norm, "bias2_plugin": float(diff.dot(diff)) / norm,
            "var": var, "ca_var": ca_var, "ca_mse": bias2 / norm + ca_var, "mse1": bias2 / norm + var,
            "cost": cost, "grad_norm2": norm}


def flat_grad(params):
    return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).to(torch.float64)
                      for p in params])


def strategy_moments(method, batches, stage, sub_batch, seed=0, across_ranks=False):
    """Accumulate the gradients of `method`'s loss under `stage` = (d_q, p_q, d_k, p_k) over the
    sub-batches that `batches()` yields (an iterable of (views, local_views); called afresh, it
    must yield the same data). Buffers that a forward changes (BN statistics, DINO's centre,
    queues) are restored after every sub-batch, so every strategy sees the same model.
    across_ranks: every rank yields its share of each sub-batch and the gradients are averaged over
    ranks (as DDP does), so the moments are those of the global sub-batches of sub_batch x ranks
    images, the same on every rank."""
    params = [p for p in method.parameters() if p.requires_grad]
    buffers = {k: v.clone() for k, v in method.state_dict().items() if not any(v is p for p in params)}
    world = dist.world_size() if across_ranks else 1
    moments = GradientMoments(sub_batch * world)
    d_q, p_q, d_k, p_k = stage
    for j, (views, local_views) in enumerate(batches()):
        gen = rng.generator(seed, rng.Stream.CA_MSE, j, *((dist.rank(),) if world > 1 else ()))
        method.zero_grad(set_to_none=True)
        setting = token_dropout.QueryKey(token_dropout.SeqCompression(d_q, p_q, gen),
                                         token_dropout.SeqCompression(d_k, p_k, gen))
        loss = method(views, local_views=local_views, compression=setting)["loss"]
        loss.backward()
        g = flat_grad(params)
        moments.add(dist.all_reduce_mean(g) if world > 1 else g)
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
