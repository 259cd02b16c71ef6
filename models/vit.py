"""Vision Transformer with a convolutional patch encoder and fixed 2D sin-cos position
embeddings computed for the input's own grid (MoCo v3, Chen et al. 2021), so one network takes
any resolution divisible by the patch size: a 96 px selection pass and a 224 px training pass
(thesis ch. 4, Table 4.2's ViT-S/16). Returns the final class-token feature.

The forward is split in two so that sequence compression (NeurIPS'24) can act between them:
`tokens(x)` embeds patches and adds position embeddings ([B, N, D], any N), `encode(tokens)`
prepends the class token and runs the blocks, so the encoder accepts any number of tokens.

Sequence compression (NeurIPS'24 sec. 4, accel/token_dropout.py) is a forward argument, as MAE
passes `mask_ratio`: `forward(x, patch_size, drop_ratio, generator)` embeds patches of size
`patch_size` with the stored kernel resized by the pseudo-inverse of Eq. 3 (accel/flexi_patch.py),
then drops a random fraction `drop_ratio` of the patch tokens after the position embeddings are
added; the class token is prepended afterwards, so it is always kept. Position embeddings need
no resampling: they are the fixed sin-cos table computed for whatever grid the patch size gives
(a learned table would have to be interpolated to the new grid; this one is simply evaluated on it).
"""
import functools

import torch
import torch.nn as nn
import torch.nn.functional as F

from accel.flexi_patch import resize_patch_embed
from accel.token_dropout import drop_tokens
from common.config import ConfigError

SIZES = {"vit_t16": (192, 12, 3), "vit_s16": (384, 12, 6), "vit_b16": (768, 12, 12)}  # dim, depth, heads


@functools.lru_cache(maxsize=16)
def sincos_2d(h, w, dim, temperature=10000.0):
    """[1, h*w, dim] fixed embedding: sin/cos of the x and y grid coordinates at dim/4 frequencies."""
    if dim % 4:
        raise ValueError(f"sin-cos position embedding needs dim divisible by 4, got {dim}")
    gy, gx = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    omega = 1.0 / temperature ** (torch.arange(dim // 4, dtype=torch.float32) / (dim // 4))
    ox, oy = gx.flatten()[:, None] * omega, gy.flatten()[:, None] * omega
    return torch.cat([ox.sin(), ox.cos(), oy.sin(), oy.cos()], 1)[None]


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

    def tokens(self, x, patch_size=0):
        """Patch tokens with position embeddings for this input's grid: [B, N, dim]. patch_size
        other than the model's: the kernel is resized by Eq. 3's pseudo-inverse (flexi_patch)."""
        if patch_size and patch_size != self.patch_size:
            weight = resize_patch_embed(self.patch_embed.weight, patch_size)
            x = F.conv2d(x, weight, self.patch_embed.bias, stride=patch_size)
        else:
            x = self.patch_embed(x)
        b, d, h, w = x.shape
        return x.flatten(2).transpose(1, 2) + sincos_2d(h, w, d).to(x)

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
