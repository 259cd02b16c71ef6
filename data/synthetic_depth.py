"""Procedural depth scenes: a road-like ground plane seen from a camera 1.65 m above it (the
KITTI camera height), a sky without ground truth, and upright box fronts ("cars", "poles",
"walls") standing on the ground at known depths. Image and depth are a deterministic function of
(seed, split, index); no files. Depth cues are the ones a monocular network uses on KITTI: the
row where an object meets the ground, its image size, and the perspective of the ground texture.

Geometry (pinhole, focal f = 0.58 W as KITTI's 721 px at 1242 px, horizon row v0):
ground pixel (u, v > v0) has depth Z = f h / (v - v0); a box at depth Z_o, lateral offset X_o,
width W_o and height H_o covers columns u0 + f (X_o -+ W_o/2) / Z_o and rows from
v0 + f h / Z_o up by f H_o / Z_o; boxes are drawn far to near. Ground farther than
`max_depth` and the sky get depth 0 (no ground truth, as a lidar's range and the sky).
"""
import numpy as np
import torch

CAMERA_HEIGHT = 1.65


def make_scene(index, seed=0, split=0, height=64, width=192, max_depth=80.0):
    """-> (uint8 image [H, W, 3], float32 depth [H, W], 0 = no ground truth)."""
    rng = np.random.default_rng([seed, split, index])
    f = 0.58 * width * rng.uniform(0.95, 1.05)
    u0, v0 = width / 2 + rng.uniform(-2, 2), height * rng.uniform(0.38, 0.48)
    vv, uu = np.mgrid[0:height, 0:width].astype(np.float64) + 0.5
    below = vv > v0 + 1e-3
    z = np.where(below, f * CAMERA_HEIGHT / np.maximum(vv - v0, 1e-3), 0.0)   # 0 above the horizon
    x = (uu - u0) * z / f
    # ground: asphalt with 2 m tiles, lane marks every 3.5 m, texture fading with distance
    base = rng.uniform(70, 120)
    tiles = ((np.floor(x / 2) + np.floor(z / 2)) % 2) * rng.uniform(10, 30)
    lanes = (np.abs(((x + rng.uniform(0, 3.5)) % 3.5) - 1.75) > 1.6) * 90.0
    fade = np.exp(-z / 40.0)
    ground = base + (tiles + lanes) * fade
    tint = rng.uniform(0.85, 1.15, 3)
    img = np.empty((height, width, 3))
    for c in range(3):
        sky = 150 + 80 * (vv / max(v0, 1)) * [0.6, 0.8, 1.0][c]
        img[..., c] = np.where(below, ground * tint[c], sky)
    depth = np.where(below, z, 0.0)
    # objects, drawn far to near
    n_obj = rng.integers(2, 8)
    objs = sorted(((rng.uniform(4, 60), rng.uniform(-12, 12), rng.uniform(0.4, 4.5), rng.uniform(0.8, 4.0),
                    rng.uniform(30, 230, 3)) for _ in range(n_obj)), key=lambda o: -o[0])
    for zo, xo, wo, ho, colour in objs:
        bottom = v0 + f * CAMERA_HEIGHT / zo
        top = bottom - f * ho / zo
        left, right = u0 + f * (xo - wo / 2) / zo, u0 + f * (xo + wo / 2) / zo
        m = (vv >= top) & (vv < bottom) & (uu >= left) & (uu < right)
        if not m.any():
            continue
        shade = 0.75 + 0.25 * (vv - top) / max(bottom - top, 1e-3)   # lit from above
        for c in range(3):
            img[..., c] = np.where(m, colour[c] * shade, img[..., c])
        depth = np.where(m, zo, depth)
    img = img * rng.uniform(0.7, 1.2) + rng.normal(0, 4, img.shape)
    depth = np.where(depth > max_depth, 0.0, depth)
    return np.clip(img, 0, 255).astype(np.uint8), depth.astype(np.float32)


class SyntheticDepth:
    """`load(i)` -> (image float [3, H, W] in [0, 1], depth float [1, H, W], 0 = none)."""

    def __init__(self, size, split=0, seed=0, height=64, width=192, max_depth=80.0):
        self.n, self.split, self.seed = size, split, seed
        self.height, self.width, self.max_depth = height, width, max_depth
        self.description = f"synthetic depth split {split} ({size} scenes, {height}x{width})"

    def __len__(self):
        return self.n

    def sequence_positions(self):
        return [("synthetic", i) for i in range(self.n)]

    def load(self, i, with_depth=True):
        img, depth = make_scene(i, self.seed, self.split, self.height, self.width, self.max_depth)
        image = torch.from_numpy(img).permute(2, 0, 1).float().div_(255)
        return image, torch.from_numpy(depth)[None] if with_depth else None
