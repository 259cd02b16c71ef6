"""Global-batch BatchNorm for any backend.

torch.nn.SyncBatchNorm only runs on GPUs; this layer does the same job on the CPU (gloo), so a
2-rank run computes exactly the statistics of a 1-rank run on the same global batch. On CUDA,
`convert_sync_bn` hands over to torch's fused SyncBatchNorm.
"""
import contextlib

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.modules.batchnorm import _BatchNorm

from common import dist


class GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm whose training-mode mean and variance are those of the batch over all ranks.
    Parameter and buffer names equal nn.BatchNorm*'s, so state dicts stay interchangeable."""

    global_stats = True   # common/run.py's wrap_ddp warns about BatchNorm layers without it

    def _check_input_dim(self, x):
        if x.dim() < 2:
            raise ValueError(f"expected at least 2D input, got {x.dim()}D")

    def forward(self, x):
        if not (self.training and dist.is_dist()):
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                                self.training or not self.track_running_stats, self.momentum or 0.0,
                                self.eps)
        dims = [0] + list(range(2, x.dim()))
        shape = [1, -1] + [1] * (x.dim() - 2)
        xf = x if x.dtype == torch.float64 else x.float()   # statistics in at least float32
        c = x.shape[1]
        # Each rank's count, mean and centred sum of squares, combined over ranks by Chan et al.'s
        # pairwise formula: M2 = sum_r M2_r + sum_r n_r (mean_r - mean)^2. (E[x^2] - E[x]^2 in
        # float32 cancels catastrophically when |mean| >> std, which made 2-rank updates differ
        # from 1-rank ones by up to 1e-4.) The gather carries gradients: the statistics depend on
        # every rank's samples, as in SyncBatchNorm's backward.
        n_r = torch.full((1,), x.numel() / c, device=x.device, dtype=xf.dtype)
        mean_r = xf.mean(dims)
        m2_r = (xf - mean_r.view(shape)).square().sum(dims)
        stats = dist.all_gather_with_grad(torch.cat([n_r, mean_r, m2_r])[None])   # [W, 1 + 2C]
        counts, means = stats[:, :1], stats[:, 1:1 + c]
        n = counts.sum()
        mean = (counts * means).sum(0) / n
        var = (stats[:, 1 + c:].sum(0) + (counts * (means - mean).square()).sum(0)) / n
        if self.track_running_stats:
            with torch.no_grad():
                m = self.momentum if self.momentum is not None else 0.1
                self.running_mean.mul_(1 - m).add_(m * mean.detach())
                self.running_var.mul_(1 - m).add_(m * var.detach() * n / (n - 1).clamp_min(1))
                self.num_batches_tracked.add_(1)
        y = (xf - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y.to(x.dtype)


def convert_sync_bn(module, device):
    """Replace every BatchNorm layer with a global-batch one (torch's SyncBatchNorm on CUDA)."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    out = module
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, GlobalBatchNorm):
        out = GlobalBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                              module.track_running_stats)
        out.load_state_dict(module.state_dict())
        if module.affine:  # keep the Parameter objects: requires_grad=False (momentum targets) survives
            out.weight, out.bias = module.weight, module.bias
        out.train(module.training)
    for name, child in module.named_children():
        out.add_module(name, convert_sync_bn(child, device))
    return out


@contextlib.contextmanager
def frozen_bn_statistics(module):
    """Within the block, training-mode BN layers normalise with batch statistics but leave their
    running statistics (and num_batches_tracked) untouched: selection passes (Hard Augment, Fast
    Online Minibatch Selection, block-wise hard pairs) and the LR range test's validation loss."""
    saved = []
    for m in module.modules():
        if isinstance(m, _BatchNorm) and m.track_running_stats:
            saved.append((m, m.momentum, m.num_batches_tracked.clone()))
            m.momentum = 0.0  # running = (1 - 0) running + 0 batch
    try:
        yield
    finally:
        for m, momentum, tracked in saved:
            m.momentum = momentum
            m.num_batches_tracked.copy_(tracked)
