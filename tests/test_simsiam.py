import math

import torch

from common.config import Config
from models.resnet import ResNet
from selfsup import build_method, method_defaults
from selfsup.simsiam import simsiam_loss


def test_loss_against_hand_computation():
    p1, z2 = torch.tensor([[1.0, 0.0], [3.0, 4.0]]), torch.tensor([[0.0, 2.0], [3.0, 4.0]])
    p2, z1 = torch.tensor([[1.0, 1.0], [-1.0, 0.0]]), torch.tensor([[5.0, 0.0], [1.0, 0.0]])
    # sample 0: D(p1,z2) = -cos(90 deg) = 0;  D(p2,z1) = -cos(45 deg) = -1/sqrt(2)
    # sample 1: D(p1,z2) = -1 (same direction); D(p2,z1) = +1 (opposite)
    expected = torch.tensor([0.5 * 0 + 0.5 * (-1 / math.sqrt(2)), 0.5 * (-1) + 0.5 * 1])
    assert torch.allclose(simsiam_loss(p1, p2, z1, z2), expected, atol=1e-6)


def test_stop_gradient_on_the_target_branch():
    p1, p2 = torch.randn(4, 6, requires_grad=True), torch.randn(4, 6, requires_grad=True)
    z1, z2 = torch.randn(4, 6, requires_grad=True), torch.randn(4, 6, requires_grad=True)
    simsiam_loss(p1, p2, z1, z2).mean().backward()
    assert z1.grad is None and z2.grad is None      # z only enters as stopgrad(z)
    assert p1.grad.abs().sum() > 0 and p2.grad.abs().sum() > 0


def test_method_forward_and_pairwise_losses():
    cfg = Config(method_defaults()["simsiam"])
    cfg.update(proj_dim=16, pred_hidden=8, proj_layers=2)
    torch.manual_seed(0)
    m = build_method(Config(name="simsiam", simsiam=cfg), ResNet("resnet18", width=8, cifar_stem=True))
    views = [torch.randn(4, 3, 16, 16) for _ in range(3)]
    outs = m.embed(views)
    pair = m.pair_loss(outs[0], outs[2])
    assert pair.shape == (4,)                        # per sample, for Hard Augment's ranking
    total = m(views)["loss"]
    pairs = [m.pair_loss(outs[i], outs[j]).mean() for i, j in ((0, 1), (0, 2), (1, 2))]
    assert torch.allclose(total, torch.stack(pairs).mean(), atol=1e-6)
    assert torch.allclose(m(views, pairs=[(0, 2)])["loss"], pair.mean(), atol=1e-6)
    groups = m.param_groups()
    assert sum(len(g["params"]) for g in groups) == len(list(m.parameters()))
    assert [g.get("fix_lr", False) for g in groups] == [False, True]  # SimSiam's fixed predictor lr
