"""Monocular depth metrics (Eigen et al. 2014), as used with KITTI and in thesis ch. 2:
accuracy delta < 1.25 (the thesis's, Fig. 2.6), < 1.25^2, < 1.25^3, AbsRel, SqRel, RMSE,
RMSE log. Only pixels with ground truth in (min_depth, max_depth) count (the usual 80 m cap);
predictions are clamped to the same range. Each metric is computed per image and averaged over
images, the usual KITTI protocol. `crop`: garg (the crop of Garg et al. 2016 used for the Eigen
split) | eigen | none, as fractions of the image.
"""
import torch

NAMES = ("delta1", "delta2", "delta3", "abs_rel", "sq_rel", "rmse", "rmse_log")
CROPS = {"garg": (0.40810811, 0.99189189, 0.03594771, 0.96405229),
         "eigen": (0.3324324, 0.91351351, 0.0359477, 0.96405229)}


def valid_mask(gt, min_depth=1e-3, max_depth=80.0, crop="none"):
    mask = (gt > min_depth) & (gt < max_depth)
    if crop != "none":
        if crop not in CROPS:
            raise ValueError(f"crop '{crop}' is not one of none, {', '.join(CROPS)}")
        h, w = gt.shape[-2:]
        t, b, l, r = CROPS[crop]
        box = torch.zeros_like(mask)
        box[..., int(t * h):int(b * h), int(l * w):int(r * w)] = True
        mask &= box
    return mask


@torch.no_grad()
def depth_metrics(pred, gt, min_depth=1e-3, max_depth=80.0, crop="none"):
    """pred, gt: [B, 1, H, W] (gt 0 = no ground truth). -> [B, 7] per-image metrics in NAMES
    order (rows of images without any valid pixel are NaN)."""
    pred, gt = pred.double(), gt.double()
    mask = valid_mask(gt, min_depth, max_depth, crop)
    out = torch.full((pred.shape[0], len(NAMES)), float("nan"), dtype=torch.float64)
    for i in range(pred.shape[0]):
        m = mask[i]
        if not m.any():
            continue
        p, g = pred[i][m].clamp(min_depth, max_depth), gt[i][m]
        ratio = torch.maximum(p / g, g / p)
        out[i] = torch.stack([(ratio < 1.25).double().mean(), (ratio < 1.25 ** 2).double().mean(),
                              (ratio < 1.25 ** 3).double().mean(), ((p - g).abs() / g).mean(),
                              ((p - g) ** 2 / g).mean(), ((p - g) ** 2).mean().sqrt(),
                              ((p.log() - g.log()) ** 2).mean().sqrt()])
    return out


def summarize(per_image):
    """[N, 7] per-image metrics -> {name: mean over images with ground truth}."""
    keep = per_image[~per_image.isnan().any(1)]
    return {k: float(v) for k, v in zip(NAMES, keep.mean(0))}
