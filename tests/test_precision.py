"""train.amp=auto and train.channels_last=auto resolve to what the hardware and backbone run best
(common/precision.py), once, and the resolved values are what the run records."""
import pytest
import torch

from common import precision
from common.config import ConfigError
from train_ssl import parse_config

CPU = torch.device("cpu")


@pytest.mark.parametrize("native", [True, False])
def test_auto_is_bf16_only_on_gpus_that_have_it(monkeypatch, native):
    monkeypatch.setattr(precision, "native_bf16", lambda device: native)
    gpu = parse_config([])
    assert (gpu.train.amp, gpu.train.channels_last) == ("auto", "auto")
    dtype = precision.resolve(gpu.train, torch.device("cuda"), conv=True)
    assert dtype is (torch.bfloat16 if native else None)
    assert gpu.train.amp == ("bf16" if native else "none")          # written back: config.yaml records it
    assert gpu.train.channels_last is native                         # NHWC for convolutions under autocast
    cfg = parse_config([])
    assert precision.resolve(cfg.train, CPU, conv=True) is None      # CPUs: float32 even with native bf16
    assert cfg.train.amp == "none" and cfg.train.channels_last is True   # NHWC for convolutions on the CPU
    vit = parse_config(["model.arch=vit_t16"])
    precision.resolve(vit.train, CPU, conv=False)
    assert vit.train.channels_last is False                          # nothing to reorder in a ViT
    exact = parse_config(["train.float64=true"])
    assert precision.resolve(exact.train, CPU, conv=True) is None and exact.train.amp == "none"


def test_explicit_values_are_kept_and_checked(monkeypatch):
    monkeypatch.setattr(precision, "native_bf16", lambda device: True)
    cfg = parse_config(["train.amp=none", "train.channels_last=true"])
    assert precision.resolve(cfg.train, CPU, conv=False) is None and cfg.train.channels_last is True
    with pytest.raises(ConfigError, match="needs CUDA"):
        precision.resolve(parse_config(["train.amp=fp16"]).train, CPU, conv=True)
    with pytest.raises(ConfigError, match="channels_last 'sometimes'"):
        precision.resolve(parse_config(["train.channels_last=sometimes"]).train, CPU, conv=True)
    with pytest.raises(ConfigError, match="expects a string"):
        parse_config(["train.channels_last=3"])


def test_the_native_check_reads_the_cpu_flags():
    flags = (torch.cpu._is_avx512_bf16_supported(), torch.cpu._is_amx_tile_supported())
    assert precision.native_bf16(CPU) is any(flags)


@pytest.mark.parametrize("name", sorted(__import__("test_methods").SMALL))
def test_every_method_loss_is_float32_under_bf16_autocast(name):
    """Autocast computes the network in bf16; each method's loss (softmax, log, cosine) is float32,
    whatever the device's autocast lists say (CPU autocast keeps cosine_similarity in bf16)."""
    from test_methods import build
    torch.manual_seed(0)
    model = build(name)
    model.prepare(10, 5)
    views = [torch.rand(4, 3, 16, 16) for _ in range(2)]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(views)["loss"]
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
