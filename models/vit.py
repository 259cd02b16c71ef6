"""Vision Transformer with a convolutional patch encoder and fixed 2D sin-cos position
embeddings computed for the input's own grid (MoCo v3, Chen et al. 2021), so one network takes
any resolution divisible by the patch size: a 96 px selection pass and a 224 px training pass
(thesis ch. 4, Table 4.2's ViT-S/16). Returns the final class-token feature.

The forward is split in two so that sequence compression (NeurIPS'24) can act between them:
`tokens(x)` embeds patches and adds position embeddings ([B, N, D], any N), `encode(tokens)`
prepends the class token and runs the blocks, so the encoder accepts any number of tokens.

Sequence compression (NeurIPS'24 sec. 4; the per-step setting in accel/token_dropout.py) is a
forward argument, as MAE passes `mask_ratio`: `forward(x, patch_size, drop_ratio, generator)`
embeds patches of size `patch_size` with the stored kernel resized by the pseudo-inverse of Eq. 3
(models/flexi_patch.py), then drops a random fraction `drop_ratio` of the patch tokens
(models/token_drop.py) after the position embeddings are added; the class token is prepended
afterwards, so it is always kept.

Position embeddings follow the image, not the grid index. The fixed sin-cos code is evaluated at
the centre of each patch, in units of the model's own patch size p: a token of a q x q patch at
grid index i has coordinate (i + 0.5) q / p - 0.5 (per axis). At q = p this is i, today's table;
at any other q a token gets the code of the place its patch covers (at 240 px, the bottom-right
patch of 30 px sits at 13.56, next to the bottom-right patch of 16 px at 14, not at the centre of
the image as integer indices would put it). The same holds for any resolution: coordinates are
image positions in pixels / p. There are no learned position embeddings in this ViT; a learned
table would have to be resampled at the same coordinates (e.g. bilinearly at (i + 0.5) q / p - 0.5).
"""
import functools

import torch
import torch.nn as nn
import torch.nn.functional as F

from common.config import ConfigError
from models.flexi_patch import resize_patch_embed
from models.token_drop import drop_tokens

SIZES = {"vit_t16": (192, 12, 3), "vit_s16": (384, 12, 6), "vit_b16": (768, 12, 12)}  # dim, depth, heads


def patch_coordinates(n, scale=1.0):
    """Centres of n patches along one axis in units of the model's patch size p, for patches of
    size q = scale x p: (i + 0.5) q / p - 0.5, so index i at q = p (exactly: no float round-off)."""
    i = torch.arange(n, dtype=torch.float64)
    return (i if scale == 1.0 else (i + 0.5) * scale - 0.5).to(torch.float32)


@functools.lru_cache(maxsize=32)
def sincos_2d(h, w, dim, scale=1.0, temperature=10000.0):
    """[1, h*w, dim] fixed embedding: sin/cos of the x and y patch-centre coordinates at dim/4
    frequencies; scale = (patch size in use) / (model's patch size), see patch_coordinates."""
    if dim % 4:
        raise ValueError(f"sin-cos position embedding needs dim divisible by 4, got {dim}")
    gy, gx = torch.meshgrid(patch_coordinates(h, scale), patch_coordinates(w, scale), indexing="ij")
    omega = 1.0 / temperature ** (torch.arange(dim // 4, dtype=torch.float32) / (dim // 4))
    ox, oy = gx.flatten()[:, None] * omega, gy.flatten()[:, None] * omega
    return torch.cat([ox.sin(), ox.cos(), oy.sin(), oy.cos()], 1)[None]


@functools.lru_cache(maxsize=64)
def sincos_on(h, w, dim, scale, device, dtype):
    """sincos_2d on `device` in `dtype`, copied once per grid (no host-to-device copy per step)."""
    return sincos_2d(h, w, dim, scale).to(device=device, dtype=dtype, non_blocking=True)


class Block(nn.Module):
    def __init__(self, dim, heads, mlp_ratio=4.0):
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(dim, eps=1e-6), nn.LayerNorm(dim, eps=1e-6)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, int(dim * mlp_ratio)), nn.GELU(), nn.Linear(int(dim * mlp_ratio), dim))

    def forward(self, x):
        b, n, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        x = x + self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, d))
        return x + self.mlp(self.norm2(x))


class ViT(nn.Module):
    is_vit = True   # takes the compression arguments of forward (selfsup.base.backbone_forward)

    def __init__(self, arch="vit_s16", patch_size=16, freeze_patch_embed=False):
        super().__init__()
        if arch not in SIZES:
            raise ConfigError(f"model.arch '{arch}' is not one of {sorted(SIZES)}")
        dim, depth, heads = SIZES[arch]
        self.patch_size, self.num_features = patch_size, dim
        self.patch_embed = nn.Conv2d(3, dim, patch_size, patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.blocks = nn.ModuleList(Block(dim, heads) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        nn.init.normal_(self.cls_token, std=1e-6)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        # Xavier-uniform on the patch projection seen as a linear map of 3 p^2 pixels (MoCo v3)
        bound = (6.0 / (3 * patch_size * patch_size + dim)) ** 0.5
        nn.init.uniform_(self.patch_embed.weight, -bound, bound)
        nn.init.zeros_(self.patch_embed.bias)
        if freeze_patch_embed:
            # MoCo v3 sec. 4.2: a fixed random patch projection avoids the training instability
            # (loss spikes) that starts in the first layer
            self.patch_embed.requires_grad_(False)

    def compile_units(self):
        """What train.compile compiles (common/run.py): the blocks, one graph per token count;
        patch embedding, token dropout and the class token stay eager between them."""
        return list(self.blocks)

    def tokens(self, x, patch_size=0):
        """Patch tokens with position embeddings for this input's grid: [B, N, dim]. patch_size
        other than the model's: the kernel is resized by Eq. 3's pseudo-inverse (flexi_patch), and
        the positions are those of the patch centres in units of the model's patch size."""
        q = patch_size or self.patch_size
        if q != self.patch_size:
            weight = resize_patch_embed(self.patch_embed.weight, patch_size)
            x = F.conv2d(x, weight, self.patch_embed.bias, stride=patch_size)
        else:
            x = self.patch_embed(x)
        b, d, h, w = x.shape
        return x.flatten(2).transpose(1, 2) + sincos_on(h, w, d, q / self.patch_size, x.device, x.dtype)

    def encode(self, x):
        """Class-token feature of a token sequence [B, N, dim] (N free)."""
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], 1)
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x)[:, 0]

    def forward(self, x, patch_size=0, drop_ratio=0.0, generator=None):
        """Class-token feature of images x. patch_size: 0 = the model's; drop_ratio: the fraction
        of patch tokens dropped, drawn with `generator` (NeurIPS'24 sec. 4.1)."""
        t = self.tokens(x, patch_size)
        if drop_ratio > 0:  # after the position embeddings, before the class token (sec. 4.1)
            t = drop_tokens(t, drop_ratio, generator)
        return self.encode(t)
