"""Flexible patch embedding (NeurIPS'24 sec. 4.2, after FlexiViT): the patch projection of a ViT
trained at patch size p, applied at another size q without retraining.

Let B be the linear map that resizes a p x p patch to q x q (bicubic, as the images are resized):
x_{p->q} = B x_p, B of shape [q^2, p^2]. Eq. 3 asks for w_q = P w_p minimising
E[(<x_p, w_p> - <B x_p, w_q>)^2]. For patches spanning all of R^{p^2} this is the least-squares
problem  B^T w_q = w_p, solved by the pseudo-inverse:  w_q = pinv(B^T) w_p. For q >= p, B^T has
full row rank, so the solution is exact: <B x, w_q> = <x, w_p> for every patch x (the
minimum-norm one of many); for q < p it is the least-squares approximation. One P serves every
(output dimension, input channel) row of the kernel, and P is cached per (p, q, interpolation).
"""
import functools

import torch
import torch.nn.functional as F


def resize_patch(x, new_size, interpolation="bicubic", antialias=True):
    """Resize patches / images [..., h, w] to new_size (int or (h, w)) as the data would be."""
    size = (new_size, new_size) if isinstance(new_size, int) else tuple(new_size)
    shape = x.shape
    x = x.reshape(-1, 1, *shape[-2:])
    kwargs = {} if interpolation in ("nearest", "area") else {"align_corners": False, "antialias": antialias}
    out = F.interpolate(x, size=size, mode=interpolation, **kwargs)
    return out.reshape(*shape[:-2], *size)


@functools.lru_cache(maxsize=32)
def _projection(old, new, interpolation, antialias):
    """P = pinv(B^T), [new_h*new_w, old_h*old_w], float64 on the CPU."""
    n_old = old[0] * old[1]
    basis = torch.eye(n_old, dtype=torch.float64).reshape(n_old, *old)
    resized = resize_patch(basis, new, interpolation, antialias)            # row i: B e_i
    b = resized.reshape(n_old, -1).T                                         # B: [q^2, p^2]
    return torch.linalg.pinv(b.T)                                            # [q^2, p^2]


@functools.lru_cache(maxsize=32)
def _projection_on(old, new, interpolation, antialias, device, dtype):
    """_projection on `device` in `dtype`, copied once (no host-to-device copy per step)."""
    return _projection(old, new, interpolation, antialias).to(device=device, dtype=dtype, non_blocking=True)


def resize_patch_embed(weight, new_size, interpolation="bicubic", antialias=True):
    """Map a patch-embedding kernel [D, C, p, p] to [D, C, q, q] by the pseudo-inverse solution of
    Eq. 3 (module docstring). Differentiable in `weight`, so a model trained through resized
    kernels updates the stored p x p kernel."""
    size = (new_size, new_size) if isinstance(new_size, int) else tuple(int(s) for s in new_size)
    old = tuple(weight.shape[-2:])
    if size == old:
        return weight
    p = _projection_on(old, size, interpolation, antialias, weight.device, weight.dtype)
    flat = weight.reshape(-1, old[0] * old[1])
    return (flat @ p.T).reshape(*weight.shape[:-2], *size)
