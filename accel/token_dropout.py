"""Randomized token dropout and the compression setting of a ViT forward (NeurIPS'24 sec. 4.1, 4.3).

`drop_tokens` keeps, per sample, a random subset of round((1 - d) N) of the N patch tokens; the
tokens already carry their position embeddings, so the encoder still knows where each kept
patch was. Prefix tokens (the class token) are always kept. Each sample draws its own subset.

A ViT (models/vit.py) reads its `compression` attribute at every forward: a `Compression`
(drop ratio, patch size, generator) or None (plain forward). The training loop sets it with

    with compressed(model.backbone, d_q, q_q, gen), compressed(target_backbone, d_k, q_k, gen):
        loss = method(views)

so query (online) and key (momentum target) sequences are configured independently
(asymmetric dropout for MoCo v3 / DINO: only the online encoder's sequence is compressed, Table 2a;
SimCLR has one encoder, so both of its views are compressed alike, sec. 6.4). `uncompressed`
switches compression off inside a region: DINO runs its local crops that way (sec. 6.4: the
small crops are already short sequences; compressing them further did not help).
"""
import contextlib
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
    idx = scores.argsort(dim=1)[:, :keep].sort(dim=1).values.to(tokens.device)
    kept = tokens[:, num_prefix:].gather(1, idx[:, :, None].expand(-1, -1, d))
    return torch.cat([tokens[:, :num_prefix], kept], 1) if num_prefix else kept


@dataclass
class Compression:
    drop_ratio: float = 0.0
    patch_size: int = 0                 # 0: the model's own patch size
    generator: torch.Generator = None

    def active(self, model_patch_size):
        return self.drop_ratio > 0 or (self.patch_size and self.patch_size != model_patch_size)


def _vits(module):
    from models.vit import ViT
    return [m for m in module.modules() if isinstance(m, ViT)] if module is not None else []


@contextlib.contextmanager
def compressed(module, drop_ratio=0.0, patch_size=0, generator=None):
    """Every ViT inside `module` compresses its input sequence within the block."""
    vits = _vits(module)
    previous = [v.compression for v in vits]
    for v in vits:
        v.compression = Compression(float(drop_ratio), int(patch_size or 0), generator)
    try:
        yield
    finally:
        for v, c in zip(vits, previous):
            v.compression = c


@contextlib.contextmanager
def uncompressed(module):
    """Plain forwards for every ViT inside `module` within the block (DINO's local crops)."""
    vits = _vits(module)
    previous = [v.compression for v in vits]
    for v in vits:
        v.compression = None
    try:
        yield
    finally:
        for v, c in zip(vits, previous):
            v.compression = c


def online_and_target_backbones(method):
    """(online backbone, [other ViTs in the method: momentum-target copies]). The key setting of
    accel.compression applies to the second list."""
    online = method.backbone
    inside = set(id(m) for m in _vits(online))
    targets = [m for m in _vits(method) if id(m) not in inside]
    return online, targets


@contextlib.contextmanager
def compressed_method(method, query, key):
    """query / key: (drop_ratio, patch_size) for the online backbone / the target backbones."""
    online, targets = online_and_target_backbones(method)
    with contextlib.ExitStack() as stack:
        stack.enter_context(compressed(online, *query))
        for t in targets:
            stack.enter_context(compressed(t, *key))
        yield
