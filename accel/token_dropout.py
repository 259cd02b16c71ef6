"""Randomized token dropout and the compression setting of a ViT forward (NeurIPS'24 sec. 4.1, 4.3).

`drop_tokens` keeps, per sample, a random subset of round((1 - d) N) of the N patch tokens; the
tokens already carry their position embeddings, so the encoder still knows where each kept
patch was. Prefix tokens (the class token) are always kept. Each sample draws its own subset.

A compressed forward is an ordinary forward with arguments, as MAE passes `mask_ratio`:
`vit(x, patch_size=q, drop_ratio=d, generator=g)` (models/vit.py). `SeqCompression` holds those
arguments for one encoder; `QueryKey` holds them for the two encoders of a step, and the
training loop passes it to the method:

    loss = method(views, compression=QueryKey(SeqCompression(d_q, q_q, gen), SeqCompression(d_k, q_k, gen)))

The online backbone gets `query`, the momentum target (MoCo v3's key encoder, BYOL's target,
DINO's teacher) gets `key`, so the two sequences are configured independently (asymmetric
dropout for MoCo v3 / DINO: only the online encoder's sequence is compressed, Table 2a). Methods
without a target (SimCLR, SimSiam, SwAV) use `query` for every view (SimCLR has one encoder,
so both of its views are compressed alike, sec. 6.4). Local crops are never compressed (sec.
6.4: the small crops are already short sequences; compressing them further did not help).

This file imports only torch: models/vit.py imports `drop_tokens` from it.
"""
import math
from dataclasses import dataclass

import torch


def kept_count(n, drop_ratio):
    """round((1 - d) n) with halves rounded up (1e-9 absorbs float error: (1 - 0.9) 25 = 2.4999...),
    at least 1 token."""
    return max(1, int(math.floor((1.0 - drop_ratio) * n + 0.5 + 1e-9)))


def drop_tokens(tokens, drop_ratio, generator=None, num_prefix=0):
    """tokens [B, P + N, D] (P = num_prefix prefix tokens first) -> [B, P + round((1-d) N), D].
    The kept patch tokens stay in their original order. `generator` (a CPU torch.Generator)
    makes the choice reproducible."""
    if not 0.0 <= drop_ratio < 1.0:
        raise ValueError(f"token drop ratio must be in [0, 1), got {drop_ratio}")
    b, n_all, d = tokens.shape
    n = n_all - num_prefix
    keep = kept_count(n, drop_ratio)
    if drop_ratio == 0.0 or keep >= n:
        return tokens
    scores = torch.rand(b, n, generator=generator)          # CPU draw: same numbers on any device
    idx = scores.argsort(dim=1)[:, :keep].sort(dim=1).values.to(tokens.device, non_blocking=True)
    kept = tokens[:, num_prefix:].gather(1, idx[:, :, None].expand(-1, -1, d))
    return torch.cat([tokens[:, :num_prefix], kept], 1) if num_prefix else kept


@dataclass(frozen=True)
class SeqCompression:
    """Sequence compression of one encoder's forward (sec. 4): patch size q (0: the model's own;
    another size resizes the patch kernel by Eq. 3) and token drop ratio d, with the CPU
    generator that draws the kept tokens."""
    drop_ratio: float = 0.0
    patch_size: int = 0
    generator: torch.Generator | None = None

    def __post_init__(self):
        if not 0.0 <= self.drop_ratio < 1.0:
            raise ValueError(f"token drop ratio must be in [0, 1), got {self.drop_ratio}")
        if self.patch_size < 0:
            raise ValueError(f"patch size must be 0 (the model's) or positive, got {self.patch_size}")

    def active(self, model_patch_size):
        """Whether a forward under this setting differs from a plain one of a model with this patch size."""
        return self.drop_ratio > 0 or (self.patch_size not in (0, model_patch_size))

    def vit_kwargs(self):
        """The keyword arguments of ViT.forward (models/vit.py) for this setting."""
        return {"patch_size": int(self.patch_size), "drop_ratio": float(self.drop_ratio), "generator": self.generator}


@dataclass(frozen=True)
class QueryKey:
    """The compression of a step's two encoders (sec. 4.3, Table 2a): `query` for the online
    backbone, `key` for the momentum target; a method without a target uses `query` for every
    view. None for either: that encoder runs a plain forward."""
    query: SeqCompression | None = None
    key: SeqCompression | None = None
