"""Device-side half of the augmentation: batched photometric operations with a magnitude m,
and the resize to the current step's resolution.

The loader ships uint8 crops plus, per view, uniform random numbers (data/multiview.py); this
module turns them into jitter factors for the current magnitude, so one loader serves any
magnitude and resolution schedule (WACV'23 Super Progressive Learning changes both per step)
and any number of views, without starving a GPU with per-view CPU work.

Colour strength is linear in m (WACV'23 sec. 4, standard strength m = 5): at magnitude m the
jitter strengths are `jitter * m / 5` and the grayscale probability `grayscale_prob * m / 5`,
so m = 0 is the identity on colour. Crop, flip, blur and solarisation do not depend on m.
Operation order is fixed (brightness, contrast, saturation, hue), where torchvision's
ColorJitter shuffles it; hue is a rotation of the chroma plane in YIQ space.
"""
import math

import torch
import torch.nn.functional as F

STANDARD_MAGNITUDE = 5.0
# Slots of the per-view random vector (data/multiview.N_RAND entries).
R_JITTER, R_BRIGHT, R_CONTRAST, R_SAT, R_HUE, R_GRAY, R_BLUR, R_SOLAR = range(8)

_GRAY = torch.tensor([0.299, 0.587, 0.114])
_RGB2YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
_YIQ2RGB = torch.linalg.inv(_RGB2YIQ)


def _gray(x):
    return torch.einsum("nchw,c->nhw", x, _GRAY.to(x)).unsqueeze(1)


def _blend(x, other, factor):
    return (factor.view(-1, 1, 1, 1) * x + (1 - factor.view(-1, 1, 1, 1)) * other).clamp_(0, 1)


def _hue_rotate(x, turns):
    """Rotate chroma by `turns` of a full circle (per sample) in YIQ space."""
    theta = turns * 2 * math.pi
    cos, sin = torch.cos(theta), torch.sin(theta)
    n = x.shape[0]
    rot = torch.zeros(n, 3, 3, dtype=x.dtype, device=x.device)
    rot[:, 0, 0] = 1
    rot[:, 1, 1], rot[:, 1, 2], rot[:, 2, 1], rot[:, 2, 2] = cos, -sin, sin, cos
    m = _YIQ2RGB.to(x) @ rot @ _RGB2YIQ.to(x)  # [n, 3, 3]
    return torch.einsum("nij,njhw->nihw", m, x).clamp_(0, 1)


def _gaussian_blur(x, sigma):
    """Per-sample separable Gaussian blur; kernel ~10% of the image side (SimCLR)."""
    n, c, h, w = x.shape
    k = max(3, int(0.1 * h) // 2 * 2 + 1)
    r = torch.arange(k, dtype=x.dtype, device=x.device) - k // 2
    kern = torch.exp(-(r[None] ** 2) / (2 * sigma[:, None] ** 2))
    kern = (kern / kern.sum(1, keepdim=True)).repeat_interleave(c, 0)  # [n*c, k]
    y = x.reshape(1, n * c, h, w)
    y = F.conv2d(F.pad(y, (k // 2, k // 2, 0, 0), mode="reflect"), kern.view(n * c, 1, 1, k), groups=n * c)
    y = F.conv2d(F.pad(y, (0, 0, k // 2, k // 2), mode="reflect"), kern.view(n * c, 1, k, 1), groups=n * c)
    return y.view(n, c, h, w)


class DeviceAugment:
    def __init__(self, aug_cfg):
        self.jitter = [float(v) for v in aug_cfg.jitter]
        self.jitter_prob, self.gray_prob = aug_cfg.jitter_prob, aug_cfg.grayscale_prob
        self.blur_prob, self.blur_sigma = [float(p) for p in aug_cfg.blur_prob], list(aug_cfg.blur_sigma)
        self.solarize_prob = [float(p) for p in aug_cfg.solarize_prob]
        self.local_blur_prob, self.local_solarize_prob = aug_cfg.local_blur_prob, aug_cfg.local_solarize_prob
        self.mean = torch.tensor(aug_cfg.mean).view(1, 3, 1, 1)
        self.std = torch.tensor(aug_cfg.std).view(1, 3, 1, 1)

    def normalize(self, x):
        return (x - self.mean.to(x)) / self.std.to(x)

    def resize(self, x, resolution):
        if resolution and resolution != x.shape[-1]:
            x = F.interpolate(x, size=(resolution, resolution), mode="bilinear", antialias=True,
                              align_corners=False)
        return x

    def colour(self, x, rand, magnitude, blur_prob=0.0, solarize_prob=0.0):
        """Photometric operations on float images in [0, 1]; `rand` [N, N_RAND] uniform;
        blur_prob and solarize_prob: numbers or per-image [N] tensors."""
        s = magnitude / STANDARD_MAGNITUDE
        if s > 0:
            b, c, sat, hue = (j * s for j in self.jitter)
            on = (rand[:, R_JITTER] < self.jitter_prob).to(x)
            u = lambda slot: (2 * rand[:, slot] - 1) * on  # noqa: E731  (0 where jitter is off)
            x = (x * (1 + b * u(R_BRIGHT)).clamp_min(0).view(-1, 1, 1, 1)).clamp_(0, 1)
            x = _blend(x, _gray(x).mean((1, 2, 3), keepdim=True), (1 + c * u(R_CONTRAST)).clamp_min(0))
            x = _blend(x, _gray(x), (1 + sat * u(R_SAT)).clamp_min(0))
            if hue > 0:
                x = _hue_rotate(x, hue * u(R_HUE))
            gray = rand[:, R_GRAY] < min(1.0, self.gray_prob * s)
            if gray.any():
                x = torch.where(gray.view(-1, 1, 1, 1), _gray(x).expand_as(x), x)
        blur_prob = torch.as_tensor(blur_prob, dtype=rand.dtype, device=rand.device).expand(rand.shape[0])
        solarize_prob = torch.as_tensor(solarize_prob, dtype=rand.dtype, device=rand.device).expand(rand.shape[0])
        if blur_prob.max() > 0:
            sel = (rand[:, R_BLUR] < blur_prob).nonzero().flatten()
            if len(sel):
                # the blur's sigma reuses the slot's value, rescaled within the chosen fraction
                frac = rand[sel, R_BLUR] / blur_prob[sel]
                sigma = self.blur_sigma[0] + frac * (self.blur_sigma[1] - self.blur_sigma[0])
                x = x.index_copy(0, sel, _gaussian_blur(x[sel], sigma.to(x)))
        if solarize_prob.max() > 0:
            sol = (rand[:, R_SOLAR] < solarize_prob).view(-1, 1, 1, 1)
            x = torch.where(sol & (x >= 0.5), 1 - x, x)
        return x

    def view_probs(self, probs, bsz, nv, device):
        """Per-image probabilities for a [B, V] batch: view v takes probs[min(v, len - 1)]."""
        p = torch.tensor([probs[min(v, len(probs) - 1)] for v in range(nv)], device=device)
        return p[None].expand(bsz, nv).flatten()

    def __call__(self, views, rand, magnitude, resolution=0, channels_last=False, dtype=torch.float32, local=False):
        """views uint8 [B, V, 3, S, S] (on the device), rand [B, V, N_RAND] -> list of V
        normalised float tensors [B, 3, r, r]. local=True: multi-crop's small views (their own
        blur / solarisation probabilities)."""
        bsz, nv = views.shape[:2]
        x = views.flatten(0, 1).to(torch.float32).div_(255)
        x = self.resize(x, resolution)
        if local:
            blur, solar = self.local_blur_prob, self.local_solarize_prob
        else:
            blur = self.view_probs(self.blur_prob, bsz, nv, x.device)
            solar = self.view_probs(self.solarize_prob, bsz, nv, x.device)
        x = self.normalize(self.colour(x, rand.flatten(0, 1).to(x.device), magnitude, blur, solar))
        x = x.to(dtype).view(bsz, nv, *x.shape[1:])
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        return [x[:, v].contiguous(memory_format=fmt) for v in range(nv)]

    def eval_batch(self, images, channels_last=False):
        x = self.normalize(images.to(torch.float32).div_(255))
        return x.contiguous(memory_format=torch.channels_last) if channels_last else x
