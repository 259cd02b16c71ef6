"""Unsupervised Batch Normalization (thesis 2023 ch. 2, Fig. 2.1, Eq. 2.4).

Each training step has two passes through an unmodified network:

  step 1  forward the combined batch n = {labeled x, unlabeled y} without autograd; every BN
          layer in training mode records the mean and variance of its input over n and moves its
          running statistics toward them (Eq. 2.2-2.3, the usual momentum);
  step 2  forward the labeled batch x alone, with autograd; every such BN layer normalises with
          the statistics of step 1 (Eq. 2.4), not with x's own, and leaves the running
          statistics alone. The caller computes the loss on the output and calls backward().

    out = ubn.forward(model, labeled, unlabeled)   # = step 1 + step 2
    loss_fn(out, target).backward()

Works for any network built from `nn.modules.batchnorm._BatchNorm` layers (BatchNorm1d/2d/3d,
torch's SyncBatchNorm, models/batchnorm.GlobalBatchNorm), by swapping each layer's `forward`
for the duration of a pass and restoring it afterwards (also on exceptions). Global-batch
layers (SyncBatchNorm, GlobalBatchNorm) under an initialised process group take step 1's
statistics over the combined batches of all ranks. Layers in eval mode use their running
statistics as usual and are not touched; eval mode of the whole network is ordinary BN.

Which variance: Eq. 2.4 divides by sigma(n_c), the standard deviation of the combined batch
"computed across batch size and spatial dimensions", i.e. the same batch statistic BN uses in
training (Eq. 2.1): the biased (population) variance, divisor N*H*W. The running variance is
updated with the unbiased estimate (x N/(N-1)), as torch's BN does, so a UBN network's state dict
and eval mode are those of an ordinary BN network. (Eq. 2.3 writes the moving average of sigma;
like every BN implementation we keep it of sigma^2.)

Gradients: by default step 1's statistics are constants in step 2 (Fig. 2.1: statistics first,
then weights), so nothing flows into the unlabeled batch or through the statistics.
`grad_through_stats=True` instead lets the labeled samples' share of the combined mean and
variance carry gradient (the unlabeled share stays constant); its values are unchanged, and with
an empty unlabeled batch it is exactly standard BN, gradients included.
"""
import contextlib

import torch
import torch.distributed as tdist
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.modules.batchnorm import _BatchNorm

from common import dist
from models.batchnorm import GlobalBatchNorm


def _is_global(m):
    """Does this layer normalise over all ranks' batches? (SyncBatchNorm or our GlobalBatchNorm.)"""
    return isinstance(m, (nn.SyncBatchNorm, GlobalBatchNorm)) and dist.is_dist() and dist.world_size() > 1


def _bn_layers(model):
    return [m for m in model.modules() if isinstance(m, _BatchNorm) and m.training]


def _dims(x):
    return [0] + list(range(2, x.dim()))


def _shape(x):
    return [1, -1] + [1] * (x.dim() - 2)


def _acc(x):
    """x in at least float32 (statistics of bf16 / fp16 activations are accumulated in float32)."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def _normalize(m, x, mean, var):
    """gamma (x - mean) / sqrt(var + eps) + beta, in at least float32, returned in x's dtype."""
    if x.dtype == mean.dtype and not (mean.requires_grad or var.requires_grad):
        return F.batch_norm(x, mean, var, m.weight, m.bias, False, 0.0, m.eps)   # fused kernel
    xf = _acc(x)
    y = (xf - mean.view(_shape(x))) * torch.rsqrt(var.view(_shape(x)) + m.eps)
    if m.affine:
        y = y * m.weight.view(_shape(x)) + m.bias.view(_shape(x))
    return y.to(x.dtype)


@contextlib.contextmanager
def _swapped_forwards(layers, make_forward):
    """Temporarily replace each layer's forward by make_forward(layer); always restore."""
    saved = [(m, m.__dict__.get("forward")) for m in layers]
    try:
        for m in layers:
            m.forward = make_forward(m)
        yield
    finally:
        for m, old in saved:
            if old is None:
                m.__dict__.pop("forward", None)
            else:
                m.forward = old


@torch.no_grad()
def _batch_stats(m, x):
    """(mean, biased variance, count) of x per channel, over all ranks for a global-batch layer."""
    xf = _acc(x)
    count = torch.full((1,), x.numel() / x.shape[1], device=x.device, dtype=xf.dtype)
    if _is_global(m):
        s = torch.cat([xf.sum(_dims(x)), (xf * xf).sum(_dims(x)), count])
        tdist.all_reduce(s)
        c = x.shape[1]
        n = s[-1]
        mean = s[:c] / n
        var = (s[c:2 * c] / n - mean * mean).clamp_min(0)
        return mean, var, n
    var, mean = torch.var_mean(xf, _dims(x), correction=0)
    return mean, var, count[0]


@torch.no_grad()
def _update_running(m, mean, var, n):
    """Eq. 2.2-2.3 with torch's conventions: momentum = 1 - lambda; None = cumulative average;
    the running variance gets the unbiased estimate."""
    if not m.track_running_stats:
        return
    m.num_batches_tracked.add_(1)
    factor = 1.0 / float(m.num_batches_tracked) if m.momentum is None else m.momentum
    m.running_mean.lerp_(mean.to(m.running_mean.dtype), factor)
    unbiased = var * n / (n - 1).clamp_min(1)
    m.running_var.lerp_(unbiased.to(m.running_var.dtype), factor)


def collect_statistics(model, batch, update_running=True):
    """Step 1: forward `batch` (no autograd) with every training-mode BN layer normalising by its
    own batch statistics, as BN does. Returns {layer: [(mean, var, count), ...]} (one entry per
    call of the layer, in call order) and, if update_running, moves the running statistics."""
    layers = _bn_layers(model)
    stats = {m: [] for m in layers}

    def make(m):
        def fwd(x):
            mean, var, n = _batch_stats(m, x)
            stats[m].append((mean, var, n))
            if update_running:
                _update_running(m, mean, var, n)
            return _normalize(m, x, mean, var)
        return fwd

    with torch.no_grad(), _swapped_forwards(layers, make):
        model(batch)
    return stats


@contextlib.contextmanager
def normalize_with(model, stats, grad_through_stats=False):
    """Step 2 (as a context): inside it, each layer in `stats` normalises its k-th call with the
    k-th recorded (mean, var) (Eq. 2.4) and leaves its running statistics alone."""
    calls = {m: 0 for m in stats}

    def make(m):
        def fwd(x):
            k = calls[m]
            if k >= len(stats[m]):
                raise RuntimeError(f"{m.__class__.__name__} called more often in step 2 than in step 1; "
                                   f"UBN needs the same call sequence in both passes")
            calls[m] = k + 1
            mean, var, n = stats[m][k]
            if grad_through_stats and torch.is_grad_enabled():
                # same values; the labeled share of the combined sums carries gradient
                xf = _acc(x)
                s = torch.cat([xf.sum(_dims(x)), (xf * xf).sum(_dims(x))])
                if _is_global(m):
                    s = dist.all_reduce_sum_with_grad(s)
                delta = (s - s.detach()) / n          # zero in value
                c = x.shape[1]
                dm, de2 = delta[:c], delta[c:]
                mean = mean + dm
                var = var + de2 - (2 * mean.detach() * dm + dm * dm)
            return _normalize(m, x, mean, var)
        return fwd

    with _swapped_forwards(list(stats), make):
        yield


def forward(model, labeled, unlabeled=None, grad_through_stats=False):
    """UBN's two steps (Fig. 2.1); returns the model's output for `labeled` from step 2, ready
    for the loss and backward(). `unlabeled` may be None or empty (then the statistics are the
    labeled batch's own: BN's forward and running statistics). `model` may be DDP-wrapped."""
    if unlabeled is None or unlabeled.shape[0] == 0:
        combined = labeled
    else:
        combined = torch.cat([labeled, unlabeled.to(labeled.dtype)], 0)
    stats = collect_statistics(model, combined)
    with normalize_with(model, stats, grad_through_stats):
        return model(labeled)


@torch.no_grad()
def reestimate_running_stats(model, batches):
    """"Precise BN" (Wu & Johnson 2021): replace every training-mode BN layer's running mean and
    variance by the plain average, over `batches` (an iterable of inputs), of the batch mean and the
    unbiased batch variance that the layer sees in train mode (no autograd, the same convention
    as its running statistics). Fixes the lag of the EMA, which trails weights that move fast (UBN's
    running statistics, benchmarks/NOTES.md). Layers called k times per forward average all calls;
    global-batch layers take each batch's statistics over all ranks, other layers are averaged over
    ranks at the end (as DDP would broadcast one rank's). Returns the number of batches used."""
    layers = _bn_layers(model)
    sums = {m: [0.0, 0.0, 0] for m in layers if m.track_running_stats}
    used = 0
    for batch in batches:
        stats = collect_statistics(model, batch, update_running=False)
        for m, acc in sums.items():
            for mean, var, n in stats[m]:
                acc[0] = acc[0] + mean
                acc[1] = acc[1] + var * n / (n - 1).clamp_min(1)
                acc[2] += 1
        used += 1
    for m, (mean_sum, var_sum, calls) in sums.items():
        if calls == 0:
            continue
        mean, var = mean_sum / calls, var_sum / calls
        if dist.is_dist() and dist.world_size() > 1 and not _is_global(m):
            mean, var = dist.all_reduce_mean(mean.clone()), dist.all_reduce_mean(var.clone())
        m.running_mean.copy_(mean.to(m.running_mean.dtype))
        m.running_var.copy_(var.to(m.running_var.dtype))
    return used
