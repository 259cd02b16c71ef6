"""Global-batch BatchNorm for any backend.

torch.nn.SyncBatchNorm only runs on GPUs; this layer does the same job on the CPU (gloo), so a
2-rank run computes exactly the statistics of a 1-rank run on the same global batch. On CUDA,
`convert_sync_bn` hands over to torch's fused SyncBatchNorm.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from common import dist


class GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm whose training-mode mean and variance are those of the batch over all ranks.
    Parameter and buffer names equal nn.BatchNorm*'s, so state dicts stay interchangeable."""

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
        xf = x.float()
        count = torch.tensor([x.numel() / x.shape[1]], device=x.device, dtype=torch.float32)
        # One all-reduce of [sum, sum of squares, count]; it carries gradients because the
        # statistics depend on every rank's samples (as in SyncBatchNorm's backward).
        stats = torch.cat([xf.sum(dims), (xf * xf).sum(dims), count])
        stats = dist.all_reduce_sum_with_grad(stats)
        c = x.shape[1]
        n = stats[-1]
        mean = stats[:c] / n
        var = (stats[c:2 * c] / n - mean * mean).clamp_min(0)
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
