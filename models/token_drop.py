"""Token dropout's mechanics in the ViT (NeurIPS'24 sec. 4.1): how many patch tokens a drop ratio
keeps, and which. `drop_tokens` keeps, per sample, a random subset of round((1 - d) N) of the N
patch tokens; the tokens already carry their position embeddings, so the encoder still knows where
each kept patch was. Prefix tokens (the class token) are always kept. Each sample draws its own
subset. The technique's per-step setting (which encoder drops how much) is accel/token_dropout.py.
"""
import math

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
