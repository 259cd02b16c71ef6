"""Unsupervised Batch Normalization (models/ubn.py; thesis ch. 2, Eq. 2.4) and the spiral study."""
import copy
import json
import os
import signal

import numpy as np
import pytest
import torch
import torch.nn as nn

from common import checkpoint
from common.run import STOP_SIGNALS
from common.config import load_config
from conftest import read_metrics, run
from data.depth import build_depth_images
from data.sampler import EpochSampler
from models import ubn
from models.dispnet import build_dispnet
import train_depth_ubn
from train_depth_ubn import DEPTH_DEFAULTS, MEAN, STD
from models.batchnorm import GlobalBatchNorm, convert_sync_bn


def two_layer_net(seed=0):
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 2), nn.BatchNorm1d(2))
    with torch.no_grad():  # non-trivial affine parameters and running statistics
        for bn in (net[1], net[4]):
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.5, 0.5)
            bn.running_mean.uniform_(-1, 1)
            bn.running_var.uniform_(0.5, 2)
    return net.double()


def test_step2_normalises_the_labeled_batch_with_the_combined_batch_statistics():
    net = two_layer_net()
    x, y = torch.randn(5, 3, dtype=torch.float64), torch.randn(11, 3, dtype=torch.float64) * 2 + 1
    lin1, bn1, lin2, bn2 = net[0], net[1], net[3], net[4]
    seen = []
    for bn in (bn1, bn2):
        bn.register_forward_hook(lambda m, a, out: seen.append(out.detach().clone()))
    out = ubn.forward(net, x, y)

    # by hand, Eq. 2.4: mean and biased (divisor N) variance of the combined batch n = {x, y}
    def bn_by_hand(bn, h_all, h):
        mu = h_all.sum(0) / h_all.shape[0]
        var = ((h_all - mu) ** 2).sum(0) / h_all.shape[0]
        return bn.weight * (h - mu) / torch.sqrt(var + bn.eps) + bn.bias

    with torch.no_grad():
        n = torch.cat([x, y])
        h1 = lin1(n)
        z1 = bn_by_hand(bn1, h1, h1)
        h2 = lin2(torch.relu(z1))
        z1_l = bn_by_hand(bn1, h1, lin1(x))
        z2_l = bn_by_hand(bn2, h2, lin2(torch.relu(z1_l)))
    # calls: step 1 bn1, bn2 (combined batch), step 2 bn1, bn2 (labeled batch)
    assert [t.shape[0] for t in seen] == [16, 16, 5, 5]
    torch.testing.assert_close(seen[0], z1)
    torch.testing.assert_close(seen[1], bn_by_hand(bn2, h2, h2))
    torch.testing.assert_close(seen[2], z1_l)
    torch.testing.assert_close(seen[3], z2_l)
    torch.testing.assert_close(out.detach(), z2_l)
    # not the labeled batch's own statistics (what plain BN would use)
    own = bn_by_hand(bn1, lin1(x), lin1(x)).detach()
    assert (seen[2] - own).abs().max() > 1e-2
    assert out.requires_grad and not seen[0].requires_grad


def test_running_statistics_move_toward_the_combined_batch_like_bn_on_it():
    net = two_layer_net()
    x, y = torch.randn(6, 3, dtype=torch.float64), torch.randn(30, 3, dtype=torch.float64) + 3
    ref = copy.deepcopy(net)
    ubn.forward(net, x, y)
    ref(torch.cat([x, y]))               # torch's BN in training mode on the combined batch
    for a, b in zip(net.modules(), ref.modules()):
        if isinstance(a, nn.BatchNorm1d):
            torch.testing.assert_close(a.running_mean, b.running_mean)
            torch.testing.assert_close(a.running_var, b.running_var)   # unbiased, momentum 0.1
            assert a.num_batches_tracked.item() == b.num_batches_tracked.item() == 1
    # step 2 left them alone: one UBN step moves them exactly once
    bn = two_layer_net()[1]
    with torch.no_grad():
        h = two_layer_net()[0](torch.cat([x, y]))
    torch.testing.assert_close(net[1].running_mean, 0.9 * bn.running_mean + 0.1 * h.mean(0))
    # momentum=None: cumulative average, as torch
    net2, ref2 = two_layer_net(), two_layer_net()
    for m in list(net2.modules()) + list(ref2.modules()):
        if isinstance(m, nn.BatchNorm1d):
            m.momentum = None
    for _ in range(3):
        ubn.forward(net2, x, y)
        ref2(torch.cat([x, y]))
    torch.testing.assert_close(net2[4].running_var, ref2[4].running_var)


def test_no_gradient_flows_into_the_unlabeled_batch_and_modules_are_restored():
    net = two_layer_net()
    x = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    y = torch.randn(8, 3, dtype=torch.float64, requires_grad=True)
    for flag in (False, True):
        ubn.forward(net, x, y, grad_through_stats=flag).pow(2).sum().backward()
        assert y.grad is None and x.grad is not None and net[0].weight.grad is not None
    assert all("forward" not in m.__dict__ for m in net.modules())
    # restored after an exception inside step 2 as well
    with pytest.raises(RuntimeError):
        stats = ubn.collect_statistics(net, torch.cat([x, y]).detach())
        with ubn.normalize_with(net, stats):
            raise RuntimeError("boom")
    assert all("forward" not in m.__dict__ for m in net.modules())
    # eval mode: running statistics as usual, step 1 changes nothing
    net.eval()
    before = copy.deepcopy(net.state_dict())
    torch.testing.assert_close(ubn.forward(net, x, y), net(x))
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


def test_ubn_equals_bn_when_the_unlabeled_batch_is_empty():
    x = torch.randn(7, 3, dtype=torch.float64)
    for empty in (None, torch.zeros(0, 3, dtype=torch.float64)):
        bn_net, ubn_net, ubn_grad = two_layer_net(), two_layer_net(), two_layer_net()
        out_bn = bn_net(x)
        out_bn.pow(2).sum().backward()
        out_c = ubn.forward(ubn_net, x, empty)
        out_c.pow(2).sum().backward()
        out_g = ubn.forward(ubn_grad, x, empty, grad_through_stats=True)
        out_g.pow(2).sum().backward()
        torch.testing.assert_close(out_c, out_bn)
        torch.testing.assert_close(out_g, out_bn)
        for a, b, c in zip(bn_net.state_dict().values(), ubn_net.state_dict().values(), ubn_grad.state_dict().values()):
            torch.testing.assert_close(a, b)
            torch.testing.assert_close(a, c)
        # gradients through the batch statistics: exactly BN's; as constants: BN's with detached statistics
        for p, q in zip(bn_net.parameters(), ubn_grad.parameters()):
            torch.testing.assert_close(p.grad, q.grad)
        assert (bn_net[0].weight.grad - ubn_net[0].weight.grad).abs().max() > 1e-6


def test_global_batchnorm_and_conv_nets_work_single_process():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 2, 1))
    ref = copy.deepcopy(net)
    gnet = convert_sync_bn(copy.deepcopy(net), torch.device("cpu"))
    assert isinstance(gnet[1], GlobalBatchNorm)
    x, y = torch.randn(2, 3, 5, 6), torch.randn(3, 3, 5, 6)
    out, gout = ubn.forward(net, x, y), ubn.forward(gnet, x, y)
    torch.testing.assert_close(out, gout)
    full = ref(torch.cat([x, y]))   # one-pass check: step 2 output = labeled rows of BN on the combined batch
    torch.testing.assert_close(out, full[:2], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(gnet[1].running_var, ref[1].running_var)


def test_two_rank_ubn_uses_the_global_combined_batch(tmp_path):
    out = str(tmp_path / "ranks.json")
    run(["tests/ubn_worker.py", out], nproc=2)
    with open(out) as f:
        res = json.load(f)
    assert res["max_out_diff"] < 1e-5 and res["max_running_diff"] < 1e-5 and res["max_grad_diff"] < 1e-5


def test_spiral_study_runs_and_writes_its_outputs(tmp_path):
    from toys import spiral
    x, t = spiral.make_spiral(200, np.random.default_rng(0))
    r = np.hypot(x[:, 0], x[:, 1])
    assert x.shape == (400, 2) and set(t.tolist()) == {0, 1} and r.max() < 7
    out = str(tmp_path / "spiral")
    p = run(["train_depth_ubn.py", "--toy", "spiral", "--seeds", "0", "1", "--steps", "30",
             "--grid", "30", "--mc", "3", "--out", out])
    res = json.load(open(os.path.join(out, "results.json")))
    assert set(res["accuracy"]) == {"bn", "ubn", "ubn_grad"} and len(res["accuracy"]["ubn"]) == 2
    for m, accs in res["accuracy"].items():   # on the 2 x 2000 test points: multiples of 0.025 %
        assert all(abs(a * 40 - round(a * 40)) < 1e-6 for a in accs)
        assert res["mean_accuracy"][m] == pytest.approx(np.mean(accs))
        assert f" {m} {accs[0]:.1f}%" in next(line for line in p.stdout.splitlines() if line.startswith("seed 0:"))
    rows = res["table_2_1"]["ubn"]
    assert len(rows) == 4 and {"pearson", "kl", "reverse_kl", "wasserstein", "unsup_wasserstein", "ks_reject"} <= set(rows[0])
    for f in ("boundary_bn_seed0.png", "boundary_ubn_seed0.png", "uncertainty_ubn_seed0.png"):
        assert os.path.getsize(os.path.join(out, f)) > 1000
    assert "seed" in p.stdout


def test_distribution_distances_against_known_values():
    from toys import spiral
    rng = np.random.default_rng(0)
    a, b = rng.normal(0, 1, 400), rng.normal(0, 1, 300) + 2.0
    assert abs(spiral.wasserstein_1d(a, a + 2.0) - 2.0) < 1e-9         # a pure shift costs the shift
    assert abs(spiral.wasserstein_1d(a, b) - 2.0) < 0.25
    d, p = spiral.ks_2samp(a, b)
    assert d > 0.5 and p < 1e-10
    d, p = spiral.ks_2samp(a[:200], a[200:])
    assert p > 0.01
    # references computed another way (numpy only; scipy is not a dependency)
    c = rng.normal(0.2, 1, 50)
    # D: the largest gap between the two empirical CDFs, evaluated by brute force at every point
    t = np.concatenate([a, c])
    d_ref = np.abs((a[None, :] <= t[:, None]).mean(1) - (c[None, :] <= t[:, None]).mean(1)).max()
    assert abs(spiral.ks_2samp(a, c)[0] - d_ref) < 1e-12
    # p: the limiting Kolmogorov distribution vs a permutation test (the finite-n p-value)
    perm = np.random.default_rng(1)
    pooled, trials, hits = np.concatenate([a, c]), 2000, 0
    for _ in range(trials):
        q = perm.permutation(pooled)
        hits += spiral.ks_2samp(q[:len(a)], q[len(a):])[0] >= d_ref - 1e-12
    assert abs(spiral.ks_2samp(a, c)[1] - (hits + 1) / (trials + 1)) < 0.05
    # W1 as the integral of |F_a^-1(u) - F_c^-1(u)| over u (quantile functions, not CDFs)
    sa, sc = np.sort(a), np.sort(c)
    u = np.union1d(np.arange(1, len(a) + 1) / len(a), np.arange(1, len(c) + 1) / len(c))
    lo = np.concatenate([[0.0], u[:-1]])
    mid = (u + lo) / 2
    w_ref = np.sum((u - lo) * np.abs(sa[np.ceil(mid * len(a)).astype(int) - 1] - sc[np.ceil(mid * len(c)).astype(int) - 1]))
    assert abs(spiral.wasserstein_1d(a, c) - w_ref) < 1e-9


def test_train_supervised_few_labels_with_ubn(tmp_path):
    from test_supervised import SUP
    out = str(tmp_path / "semi")
    p = run(["train_supervised.py"] + SUP + [f"output_dir={out}", "ubn.labels_per_class=3", "ubn.enabled=true", "select.method=uniform",
                                             "ubn.unlabeled_batch_size=32", "train.epochs=1"])
    assert "30 labeled of synthetic" in p.stdout and "unlabeled 32" in p.stdout
    rows = [r for r in read_metrics(out) if "loss" in r]
    assert len(rows) == 8 and all(np.isfinite(r["loss"]) for r in rows)   # an epoch counts all 128 images
    p = run(["train_supervised.py"] + SUP + ["ubn.enabled=true", "select.method=fast"], check=False)
    assert p.returncode == 2 and "ubn.enabled=true needs select.method=uniform" in p.stderr


def test_reestimated_running_statistics_are_the_average_of_the_batch_statistics():
    net = two_layer_net()
    bn1, bn2 = net[1], net[4]
    before = [bn.num_batches_tracked.clone() for bn in (bn1, bn2)]
    g = torch.Generator().manual_seed(1)
    batches = [torch.randn(n, 3, generator=g, dtype=torch.float64) * (k + 1) + k for k, n in enumerate((6, 9, 4))]
    assert ubn.reestimate_running_stats(net, iter(batches)) == 3
    # by hand: each batch through the net in train mode (BN normalising with the batch's own
    # biased variance); running mean = mean of batch means, running var = mean of unbiased variances
    with torch.no_grad():
        h1s, h2s = [], []
        for b in batches:
            h1 = net[0](b)
            z1 = bn1.weight * (h1 - h1.mean(0)) / torch.sqrt(h1.var(0, unbiased=False) + bn1.eps) + bn1.bias
            h1s.append(h1)
            h2s.append(net[3](torch.relu(z1)))
    for bn, hs in ((bn1, h1s), (bn2, h2s)):
        torch.testing.assert_close(bn.running_mean, torch.stack([h.mean(0) for h in hs]).mean(0))
        torch.testing.assert_close(bn.running_var, torch.stack([h.var(0, unbiased=True) for h in hs]).mean(0))
        # not what an EMA over the same batches would give (the lag this removes)
    ema = two_layer_net()
    for b in batches:
        ema(b)
    assert (ema[1].running_mean - bn1.running_mean).abs().max() > 1e-2
    assert [bn.num_batches_tracked for bn in (bn1, bn2)] == before and net[1].training


def test_depth_run_reestimates_before_evaluating(tmp_path):
    """ubn.reestimate_batches=N: the evaluated (and saved) running statistics are the average over
    the first N batches (step-1 size: labeled + unlabeled) of a fixed permutation of the training
    images, whatever the EMA had reached."""
    out = str(tmp_path / "r")
    tiny = ["data.height=32", "data.width=64", "data.synthetic_train_size=48", "data.synthetic_test_size=8",
            "model.width=4", "model.levels=4", "train.batch_size=8", "train.epochs=1", "train.threads=1", "train.amp=none",
            "train.channels_last=false",
            "data.labeled_fraction=0.5", "eval.batch_size=8", "ubn.enabled=true", "ubn.reestimate_batches=3",
            "data.workers=0", "train.log_every=100", f"output_dir={out}"]
    cfg = load_config(DEPTH_DEFAULTS, None, tiny)
    threads, handlers = torch.get_num_threads(), {s: signal.getsignal(s) for s in STOP_SIGNALS}
    try:
        train_depth_ubn.main(cfg)                                   # in-process: one rank, CPU
    finally:
        torch.set_num_threads(threads)
        for s, h in handlers.items():
            signal.signal(s, h)
    saved = checkpoint.load(os.path.join(out, "checkpoint.pt"))["model"]
    model = build_dispnet(cfg.model)
    model.load_state_dict(saved)
    train_images, _ = build_depth_images(cfg.data, cfg.train.seed)
    perm = [i for i, _ in EpochSampler(len(train_images), 16, seed=cfg.train.seed + 2)]
    bn = next(m for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    key = next(k for k in saved if k.endswith("running_mean"))
    inputs = []
    bn.register_forward_pre_hook(lambda m, a: inputs.append(a[0].detach()))
    model.train()
    with torch.no_grad():
        for k in range(3):
            x = torch.stack([train_images.load(i, False)[0] for i in perm[16 * k:16 * (k + 1)]])
            model((x - MEAN) / STD)
    assert [a.shape[0] for a in inputs] == [16, 16, 16]
    torch.testing.assert_close(saved[key], torch.stack([a.mean((0, 2, 3)) for a in inputs]).mean(0))
