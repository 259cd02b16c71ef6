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
import functools
import math

import torch
import torch.nn.functional as F

from common.config import ConfigError

STANDARD_MAGNITUDE = 5.0
# Slots of the per-view random vector (data/multiview.N_RAND entries).
R_JITTER, R_BRIGHT, R_CONTRAST, R_SAT, R_HUE, R_GRAY, R_BLUR, R_SOLAR = range(8)

_GRAY = torch.tensor([0.299, 0.587, 0.114])
_RGB2YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
_YIQ2RGB = torch.linalg.inv(_RGB2YIQ)


def train_resolution(cfg):
    """The full training resolution: augment.resolution, or data.crop_size when it is 0. Progressive
    schedules (accel/progressive.py) run up to it; the loader crops at data.crop_size."""
    res = cfg.augment.resolution or cfg.data.crop_size
    if not (isinstance(res, int) and res > 0):
        raise ConfigError(f"the training resolution (augment.resolution, else data.crop_size) must be a positive "
                          f"integer, got {res!r}")
    return res


def _on(const, like):
    """A module constant on `like`'s device and dtype, copied once (no host-to-device copy per step)."""
    return _on_device(const, like.device, like.dtype)


@functools.lru_cache(maxsize=64)
def _on_device(const, device, dtype):
    return const.to(device=device, dtype=dtype, non_blocking=True)


def _gray(x):
    return torch.einsum("nchw,c->nhw", x, _on(_GRAY, x)).unsqueeze(1)


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
    m = _on(_YIQ2RGB, x) @ rot @ _on(_RGB2YIQ, x)  # [n, 3, 3]
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


@functools.lru_cache(maxsize=64)
def _view_probs(per_view, bsz, device):
    """[B * V] probabilities (view-major within each image, as views.flatten(0, 1)) on the device."""
    return torch.tensor(per_view).to(device, non_blocking=True)[None].expand(bsz, len(per_view)).flatten()


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
        return (x - _on(self.mean, x)) / _on(self.std, x)

    def resize(self, x, resolution):
        if resolution and resolution != x.shape[-1]:
            x = F.interpolate(x, size=(resolution, resolution), mode="bilinear", antialias=True,
                              align_corners=False)
        return x

    def colour(self, x, rand, magnitude, blur_prob=0.0, solarize_prob=0.0):
        """Photometric operations on float images in [0, 1]; `rand` [N, N_RAND] uniform;
        blur_prob and solarize_prob: numbers or per-image [N] tensors on x's device.

        No data-dependent branch or shape (common/host_sync.py): grayscale, blur and solarisation
        are computed for the whole batch and applied by mask; whether each runs at all follows
        from the config (a probability > 0), never from a tensor. The blur of a whole batch costs
        a few depthwise 1-D convolutions, small against the network's step."""
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
            if self.gray_prob > 0:
                gray = rand[:, R_GRAY] < min(1.0, self.gray_prob * s)
                x = torch.where(gray.view(-1, 1, 1, 1), _gray(x).expand_as(x), x)
        if self._any(blur_prob):
            blur = rand[:, R_BLUR] < blur_prob
            # the blur's sigma reuses the slot's value, rescaled within the chosen fraction (images
            # not blurred get some sigma in range too: their blur is computed and discarded)
            frac = (rand[:, R_BLUR] / (blur_prob.clamp_min(1e-12) if torch.is_tensor(blur_prob)
                                       else max(blur_prob, 1e-12))).clamp(max=1.0)
            sigma = self.blur_sigma[0] + frac * (self.blur_sigma[1] - self.blur_sigma[0])
            x = torch.where(blur.view(-1, 1, 1, 1), _gaussian_blur(x, sigma.to(x)), x)
        if self._any(solarize_prob):
            sol = (rand[:, R_SOLAR] < solarize_prob).view(-1, 1, 1, 1)
            x = torch.where(sol & (x >= 0.5), 1 - x, x)
        return x

    @staticmethod
    def _any(prob):
        """Whether an operation can run at all: a float from the config (> 0), or the per-image
        tensor view_probs builds only when some view's probability is > 0."""
        return torch.is_tensor(prob) or prob > 0

    def view_probs(self, probs, bsz, nv, device):
        """Per-image probabilities for a [B, V] batch: view v takes probs[min(v, len - 1)]; 0.0
        when every one is 0 (the operation is then skipped). Cached on the device."""
        per_view = tuple(float(probs[min(v, len(probs) - 1)]) for v in range(nv))
        if not any(p > 0 for p in per_view):
            return 0.0
        return _view_probs(per_view, bsz, device)

    def __call__(self, views, rand, magnitude, resolution=0, channels_last=False, dtype=torch.float32, local=False):
        """views uint8 [B, V, 3, S, S] (on the device), rand [B, V, N_RAND] -> list of V
        normalised float tensors [B, 3, r, r]. local=True: multi-crop's small views (their own
        blur / solarisation probabilities)."""
        bsz, nv = views.shape[:2]
        x = views.flatten(0, 1).to(torch.float32).div_(255)
        x = self.resize(x, resolution)
        if local:
            blur, solar = float(self.local_blur_prob), float(self.local_solarize_prob)
        else:
            blur = self.view_probs(self.blur_prob, bsz, nv, x.device)
            solar = self.view_probs(self.solarize_prob, bsz, nv, x.device)
        x = self.normalize(self.colour(x, rand.flatten(0, 1).to(x.device, non_blocking=True), magnitude, blur, solar))
        x = x.to(dtype).view(bsz, nv, *x.shape[1:])
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        return [x[:, v].contiguous(memory_format=fmt) for v in range(nv)]

    def eval_batch(self, images, channels_last=False):
        x = self.normalize(images.to(torch.float32).div_(255))
        return x.contiguous(memory_format=torch.channels_last) if channels_last else x
