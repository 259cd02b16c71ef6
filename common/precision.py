"""Numeric precision of a run: mixed precision (train.amp), channels-last activations
(train.channels_last) and the float64 mode that exactness checks use (train.float64: a 2-rank run
then equals a 1-rank run to ~1e-12, not float32 noise).

`resolve` turns train.amp=auto and train.channels_last=auto into the values used, once per run,
and writes them back into the config (so config.yaml and checkpoints say what ran):
  amp auto            -> bf16 on CUDA devices that compute it natively (Ampere and newer); none
                         elsewhere and with train.float64. Not on CPUs, even with native bf16
                         (AVX512-BF16 / AMX, `native_bf16`), where it runs the quickstart's step
                         2.1x faster: there, bf16 autocast trained the quickstart to a lower kNN
                         top-1 than float32 on every seed tried (benchmarks/NOTES.md), so the
                         speed is not free; train.amp=bf16 asks for it.
  channels_last auto  -> on for convolutional backbones on the CPU (oneDNN's convolutions run
                         NHWC natively: the quickstart's SimSiam step, 1 thread, 147 -> 183
                         images/s in float32, 242-275 -> 306-323 in bf16; benchmarks/NOTES.md)
                         and under bf16 / fp16 autocast on CUDA (cuDNN's tensor-core kernels
                         want NHWC); off for ViTs, whose only convolution is the patch embedding.

What stays in float32 under autocast: weights, gradients and optimizer state (autocast casts
copies for matmuls and convolutions); every loss upcasts its logits / similarities with `upcast`
before softmax, log and cross-entropy (selfsup/*.py); autocast itself runs normalisation layers,
softmax and reductions in float32; EMA targets are updated in float32 (selfsup/momentum.py) and
queues / centres are float32 buffers (selfsup/moco.py, selfsup/dino.py). Losses do their
softmax / log arithmetic in at least float32: `upcast` lifts float16 / bfloat16 values and leaves
float32 and float64 alone (a bare .float() would silently drop a float64 run to float32)."""
import torch

from common.config import ConfigError

AMP_DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def native_bf16(device):
    """Whether `device` computes bf16 natively (not by emulation through float32)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type == "cpu":
        cpu = getattr(torch, "cpu", None)
        return bool(getattr(cpu, "_is_avx512_bf16_supported", lambda: False)()
                    or getattr(cpu, "_is_amx_tile_supported", lambda: False)())
    return False


def resolve(train_cfg, device, conv):
    """Resolve train.amp and train.channels_last (`auto` -> what this device and backbone run
    best) in place, check them, and return the autocast dtype (None: float32 / float64).
    conv: the backbone is convolutional (ResNet, DispNet), where channels-last applies."""
    if train_cfg.amp == "auto":
        gpu_bf16 = device.type == "cuda" and native_bf16(device)
        train_cfg.amp = "bf16" if gpu_bf16 and not train_cfg.get("float64", False) else "none"
    dtype = amp_dtype(train_cfg, device)
    cl = train_cfg.channels_last
    if cl == "auto":
        cl = conv and (device.type == "cpu" or dtype is not None)
    if not isinstance(cl, bool):
        raise ConfigError(f"train.channels_last '{cl}' is not one of auto, true, false")
    train_cfg.channels_last = cl
    return dtype


def amp_dtype(train_cfg, device):
    """The autocast dtype of a resolved train.amp (None: off), checked against the device and float64."""
    if train_cfg.amp not in AMP_DTYPES:
        raise ConfigError(f"train.amp '{train_cfg.amp}' is not one of auto, {', '.join(AMP_DTYPES)}")
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
