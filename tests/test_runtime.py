"""FLOP ledger, LARS, checkpoints and the global-batch BatchNorm (single-process behaviour;
the 2-rank behaviour is tested in test_training.py)."""
import copy
import os

import pytest
import torch
import torch.nn as nn

from common import checkpoint
from common.flops import FlopLedger
from common.optim import LARS, build_optimizer, set_weight_decay
from models.batchnorm import GlobalBatchNorm, convert_sync_bn


def test_flop_ledger_measures_once_per_key_and_accumulates():
    lin = nn.Linear(8, 16, bias=False)
    x = torch.randn(4, 8, requires_grad=True)
    ledger = FlopLedger()
    for _ in range(3):
        with ledger.count(("lin", 4)):
            lin(x).sum().backward()
    # forward 2*4*8*16; backward: grad of the input and of the weight, each 2*4*8*16
    assert ledger.flops_of(("lin", 4)) == 3 * 2 * 4 * 8 * 16
    assert ledger.global_total("train") == 3 * 3 * 2 * 4 * 8 * 16
    with ledger.count(("sel",), kind="selection"):
        with torch.no_grad():
            lin(x)
    assert ledger.global_total("selection") == 2 * 4 * 8 * 16
    restored = FlopLedger()
    restored.load_state_dict(ledger.state_dict())
    assert restored.global_total("train") == ledger.global_total("train")


def test_lars_step_against_hand_computation():
    w = nn.Parameter(torch.tensor([[3.0, 4.0]]))      # ||w|| = 5
    b = nn.Parameter(torch.tensor([1.0]))
    w.grad, b.grad = torch.tensor([[0.0, 1.0]]), torch.tensor([2.0])
    opt = build_optimizer("lars", [{"params": [w, b]}], lr=0.5, momentum=0.9, weight_decay=0.1)
    assert isinstance(opt, LARS)
    opt.step()
    d = torch.tensor([[0.3, 1.4]])                      # g + wd w
    trust = 0.001 * 5.0 / d.norm()
    assert torch.allclose(w.detach(), torch.tensor([[3.0, 4.0]]) - 0.5 * trust * d)
    assert torch.allclose(b.detach(), torch.tensor([1.0 - 0.5 * 2.0]))  # bias: no decay, no trust ratio


def test_adamw_decay_is_decoupled_and_scaled_by_lr_and_skips_biases():
    w = nn.Parameter(torch.tensor([[1.0, -2.0]]))
    b = nn.Parameter(torch.tensor([3.0]))
    w.grad, b.grad = torch.zeros(1, 2), torch.zeros(1)
    opt = build_optimizer("adamw", [{"params": [w, b]}], lr=0.1, momentum=0.9, weight_decay=0.5)
    opt.step()   # zero gradient: only the decay acts, w <- w (1 - lr wd)
    assert torch.allclose(w.detach(), torch.tensor([[0.95, -1.9]]))
    assert torch.equal(b.detach(), torch.tensor([3.0]))       # biases / norm parameters: no decay (DINO)
    set_weight_decay(opt, 0.2)                                  # a weight-decay schedule's step
    assert [g["weight_decay"] for g in opt.param_groups] == [0.2, 0.0]


def test_checkpoint_is_atomic_and_loads_weights_only(tmp_path):
    path = str(tmp_path / "checkpoint.pt")
    state = {"w": torch.randn(3), "rng": checkpoint.rng_state(), "step": 7, "config": {"a": [1, 2.0, "x"]}}
    checkpoint.save_atomic(state, path)
    assert os.listdir(tmp_path) == ["checkpoint.pt"]
    loaded = checkpoint.load(path)
    assert torch.equal(loaded["w"], state["w"]) and loaded["step"] == 7
    torch.manual_seed(123)
    checkpoint.set_rng_state(loaded["rng"])
    a = torch.rand(3)
    checkpoint.set_rng_state(loaded["rng"])
    assert torch.equal(a, torch.rand(3))
    torch.save({"obj": Arbitrary()}, str(tmp_path / "other.pt"))
    with pytest.raises(Exception, match="Weights only load failed"):  # arbitrary pickles are refused
        checkpoint.load(str(tmp_path / "other.pt"))


class Arbitrary:
    pass


def test_global_batchnorm_is_plain_batchnorm_on_one_process():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 36, 5), nn.BatchNorm1d(5))
    conv = convert_sync_bn(copy.deepcopy(net), torch.device("cpu"))
    assert isinstance(conv[1], GlobalBatchNorm) and isinstance(conv[4], GlobalBatchNorm)
    assert list(conv.state_dict()) == list(net.state_dict())     # same keys: checkpoints interchangeable
    x = torch.randn(6, 3, 8, 8)
    assert torch.allclose(conv(x), net(x), atol=1e-6)
