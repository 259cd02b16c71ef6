"""Numeric precision of a run: mixed precision (train.amp) and the float64 mode that exactness
checks use (train.float64: a 2-rank run then equals a 1-rank run to ~1e-12, not float32 noise).

Losses do their softmax / log arithmetic in at least float32: `upcast` lifts float16 / bfloat16
values under autocast and leaves float32 and float64 alone (a bare .float() would silently drop
a float64 run to float32)."""
import torch

from common.config import ConfigError

AMP_DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def amp_dtype(train_cfg, device):
    """The autocast dtype of train.amp (None: off), checked against the device and float64."""
    if train_cfg.amp not in AMP_DTYPES:
        raise ConfigError(f"train.amp '{train_cfg.amp}' is not one of {', '.join(AMP_DTYPES)}")
    if train_cfg.amp == "fp16" and device.type != "cuda":
        raise ConfigError("train.amp=fp16 needs CUDA; use bf16 or none on the CPU")
    if train_cfg.amp != "none" and train_cfg.get("float64", False):
        raise ConfigError(f"train.float64=true and train.amp={train_cfg.amp} exclude each other")
    return AMP_DTYPES[train_cfg.amp]


def autocast(device, dtype):
    """torch.autocast for `dtype` (a no-op context when dtype is None)."""
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


def upcast(t):
    """float16 / bfloat16 -> float32; float32 and float64 unchanged."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t
