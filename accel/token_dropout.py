"""Randomized token dropout and the compression setting of a ViT forward (NeurIPS'24 sec. 4.1, 4.3).

The mechanics (round((1 - d) N) patch tokens kept per sample, the class token always) live with
the ViT, models/token_drop.py, and flexible patch embedding's kernel resize in
models/flexi_patch.py. This file holds the technique's per-step setting.

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
"""
from dataclasses import dataclass

import torch


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
