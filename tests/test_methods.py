"""The SSL methods of selfsup/: losses against hand computations, EMA, DINO's centre and
temperature, Sinkhorn's marginals, the MoCo queue, every method's loss falling, and where ViT
sequence compression (NeurIPS'24) reaches: query setting to the online backbone, key setting
to the momentum target, local crops plain."""
import math

import numpy as np
import pytest
import torch

import selfsup
from accel.token_dropout import QueryKey, SeqCompression
from common.config import _to_config
from models.resnet import ResNet
from models.vit import ViT
from selfsup.byol import byol_loss
from selfsup.dino import distillation_loss, teacher_temperature_schedule
from selfsup.moco import info_nce
from selfsup.momentum import MomentumTarget, momentum_schedule
from selfsup.mocov3 import contrastive
from selfsup.simclr import nt_xent
from selfsup.swav import sinkhorn, swapped_prediction

METHODS = list(selfsup.METHODS)   # the registry: a new method is tested by every test that iterates over these
# Small heads for CPU tests, as `method.<name>.<key>` overrides (also used by test_training.py);
# a registered method without an entry here fails test_every_registered_method_has_small_test_heads.
SMALL = {
    "simsiam": {"proj_dim": 32, "pred_hidden": 16},
    "simclr": {"proj_hidden": 32, "proj_dim": 16},
    "byol": {"proj_hidden": 32, "proj_dim": 16, "pred_hidden": 32},
    "moco": {"proj_dim": 16, "queue_size": 64},
    "mocov2": {"proj_hidden": 32, "proj_dim": 16, "queue_size": 64},
    "mocov2plus": {"proj_hidden": 32, "proj_dim": 16, "queue_size": 64},
    "mocov3": {"proj_hidden": 32, "proj_dim": 16, "pred_hidden": 32},
    "dino": {"hidden_dim": 32, "bottleneck_dim": 16, "out_dim": 64},
    "swav": {"proj_hidden": 32, "proj_dim": 16, "num_prototypes": 20},
}


def test_every_registered_method_has_small_test_heads():
    assert set(SMALL) == set(METHODS), f"add small heads for {sorted(set(METHODS) - set(SMALL))} to SMALL"


def small_overrides(name):
    return [f"method.name={name}"] + [f"method.{name}.{k}={v}" for k, v in SMALL.get(name, {}).items()]


def build(name, backbone=None, **extra):
    cfg = _to_config(selfsup.method_defaults())
    cfg.name = name
    cfg[name].update(SMALL.get(name, {}), **extra)
    return selfsup.build_method(cfg, backbone or ResNet("resnet18", width=8, cifar_stem=True))


def ce(logits, target):
    """-log softmax(logits)[target] in plain Python."""
    return -(logits[target] - math.log(sum(math.exp(v) for v in logits)))


def test_nt_xent_against_hand_computation():
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    b = torch.tensor([[0.6, 0.8], [-1.0, 0.0]])
    t = 0.5
    emb = [(1.0, 0.0), (0.0, 1.0), (0.6, 0.8), (-1.0, 0.0)]   # a0, a1, b0, b1 (unit vectors)
    dot = lambda u, v: u[0] * v[0] + u[1] * v[1]                 # noqa: E731
    expected = []
    for i in range(2):
        terms = []
        for anchor, pos in ((i, 2 + i), (2 + i, i)):
            others = [k for k in range(4) if k != anchor]
            logits = [dot(emb[anchor], emb[k]) / t for k in others]
            terms.append(ce(logits, others.index(pos)))
        expected.append(sum(terms) / 2)
    assert torch.allclose(nt_xent(a, b, t), torch.tensor(expected), atol=1e-5)
    assert torch.allclose(nt_xent(3 * a, b, t), torch.tensor(expected), atol=1e-5)   # normalised inside


def test_byol_loss_against_hand_computation():
    p1, z2 = torch.tensor([[1.0, 0.0], [1.0, 1.0]]), torch.tensor([[0.0, 3.0], [2.0, 2.0]])
    p2, z1 = torch.tensor([[1.0, 0.0], [1.0, 0.0]]), torch.tensor([[-1.0, 0.0], [1.0, 1.0]])
    # sample 0: 2 - 2cos(90 deg) = 2;  2 - 2cos(180 deg) = 4.  sample 1: 0;  2 - 2/sqrt(2)
    expected = torch.tensor([2.0 + 4.0, 0.0 + 2 - math.sqrt(2)])
    assert torch.allclose(byol_loss(p1, p2, z1, z2), expected, atol=1e-6)


def test_moco_info_nce_against_hand_computation():
    q = torch.tensor([[1.0, 0.0]])
    k = torch.tensor([[1.0, 0.0]])
    queue = torch.tensor([[0.0, 1.0], [-1.0, 0.0]])
    expected = ce([1 / 0.5, 0 / 0.5, -1 / 0.5], 0)
    assert info_nce(q, k, queue, 0.5).item() == pytest.approx(expected, abs=1e-6)


def test_mocov3_contrastive_against_hand_computation():
    q = torch.tensor([[3.0, 0.0], [0.0, 2.0]])            # normalised inside to (1, 0), (0, 1)
    k = torch.tensor([[0.6, 0.8], [0.0, 1.0]])
    t = 0.2
    expected = [2 * t * ce([0.6 / t, 0.0 / t], 0), 2 * t * ce([0.8 / t, 1.0 / t], 1)]
    assert torch.allclose(contrastive(q, k, t), torch.tensor(expected), atol=1e-5)


def test_dino_loss_centre_and_teacher_temperature():
    t_logits, s_logits = torch.tensor([[1.0, 0.0, 0.0]]), torch.tensor([[0.0, 0.5, 0.0]])
    center = torch.tensor([[0.5, 0.0, 0.0]])
    pt = np.exp(np.array([0.5, 0.0, 0.0]) / 0.04)
    pt /= pt.sum()
    log_ps = np.array([0.0, 5.0, 0.0]) - np.log(np.exp([0.0, 5.0, 0.0]).sum())
    expected = -(pt * log_ps).sum()
    assert distillation_loss(t_logits, s_logits, center, 0.04, 0.1).item() == pytest.approx(expected, rel=1e-5)

    temps = teacher_temperature_schedule(100, 10, 0.04, 0.07, warmup_epochs=3)
    assert temps[0] == pytest.approx(0.04) and temps[15] == pytest.approx(0.055) and temps[30:].min() == 0.07

    m = build("dino", center_momentum=0.9)
    m.center.fill_(1.0)
    outs = [(torch.zeros(4, 64), torch.full((4, 64), 3.0)), (torch.zeros(4, 64), torch.full((4, 64), 5.0))]
    m.update_state(outs, None)                  # c <- 0.9 c + 0.1 mean(teacher outputs) = 0.9 + 0.4
    assert torch.allclose(m.center, torch.full((1, 64), 1.3))


def test_dino_forward_averages_teacher_global_student_other_terms():
    torch.manual_seed(0)
    m = build("dino")
    g = [torch.randn(6, 3, 16, 16) for _ in range(2)]
    loc = [torch.randn(6, 3, 8, 8) for _ in range(3)]
    with torch.no_grad():
        center = m.center.clone()
        loss = m(g, local_views=loc)["loss"]
        outs = m.embed(g)
        students = [s for s, _ in outs] + [m.student(v) for v in loc]
        terms = [distillation_loss(outs[i][1], students[v], center, m.current_teacher_temp(), 0.1).mean()
                 for i in range(2) for v in range(5) if v != i]
    assert len(terms) == 2 * (2 + 3 - 1)          # DINO: 2 teachers x (all views but itself)
    assert loss.item() == pytest.approx(torch.stack(terms).mean().item(), rel=1e-5)
    assert torch.equal(m.center, center)          # no state update in a no-grad (validation) forward


def test_sinkhorn_marginals():
    torch.manual_seed(0)
    scores = torch.randn(12, 5)
    q = sinkhorn(scores, epsilon=0.5, iters=3)
    assert torch.allclose(q.sum(1), torch.ones(12), atol=1e-5)            # each sample: one unit of mass
    q = sinkhorn(scores, epsilon=0.5, iters=200)
    assert torch.allclose(q.sum(0), torch.full((5,), 12 / 5), atol=1e-4)  # each prototype: B / K
    assert (q >= 0).all()


def test_swav_swapped_prediction_and_frozen_prototypes():
    codes, scores = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.2, 0.1]])
    expected = -math.log(math.exp(2.0) / (math.exp(2.0) + math.exp(1.0)))
    assert swapped_prediction(codes, scores, 0.1).item() == pytest.approx(expected, rel=1e-5)
    m = build("swav", freeze_prototypes_epochs=1.0)
    m.prepare(total_steps=10, steps_per_epoch=2)
    m.begin_step(0)
    assert torch.allclose(m.prototypes.weight.norm(dim=1), torch.ones(20), atol=1e-5)   # normalised
    m([torch.randn(4, 3, 16, 16) for _ in range(2)])["loss"].backward()
    m.after_backward(1)
    assert m.prototypes.weight.grad is None                      # frozen during the first epoch
    m([torch.randn(4, 3, 16, 16) for _ in range(2)])["loss"].backward()
    m.after_backward(2)
    assert m.prototypes.weight.grad is not None


def test_swav_keeps_one_queue_per_global_crop_newest_first():
    """SwAV's queue[i] holds crop i's embeddings (crops_for_assign = [0, 1]), newest first."""
    m = build("swav", queue_length=12, queue_start_epoch=0.0)
    m.prepare(10, 5)
    assert m.queue.shape == (2, 12, 16)
    steps = [[torch.nn.functional.normalize(torch.randn(4, 16), dim=1) for _ in range(2)] for _ in range(4)]
    for k, z in enumerate(steps[:2]):
        m.begin_step(k)
        m.update_state([(z[0], None), (z[1], None)], None)
    assert m.queue_count.item() == 8                                   # 8 images per crop, not 16 in one queue
    for crop in range(2):
        assert torch.equal(m.queue[crop, :8], torch.cat([steps[1][crop], steps[0][crop]]))
        assert torch.equal(m.queue[crop, 8:], torch.zeros(4, 16))
    for k, z in enumerate(steps[2:], 2):                               # full: the oldest entries fall off
        m.begin_step(k)
        m.update_state([(z[0], None), (z[1], None)], None)
    assert m.queue_count.item() == 12
    for crop in range(2):
        assert torch.equal(m.queue[crop], torch.cat([steps[3][crop], steps[2][crop], steps[1][crop]]))
    # local crops and a target are not queued; a queue with more than 2 global views is an error
    with pytest.raises(ValueError, match="per global crop"):
        m([torch.randn(4, 3, 16, 16) for _ in range(3)])


@pytest.mark.parametrize("rank", [0, 1])
def test_swav_codes_use_this_ranks_slice_of_their_own_crops_queue(monkeypatch, rank):
    """Once full, crop i's codes are Sinkhorn on [prototype scores of rank r's half of queue[i];
    the batch's scores], the batch's rows returned (2 ranks simulated; sums then run on one)."""
    m = build("swav", queue_length=8, queue_start_epoch=0.0)
    with torch.no_grad():
        m.queue.copy_(torch.nn.functional.normalize(torch.randn(2, 8, 16), dim=2))
        m.queue_count.fill_(8)
    monkeypatch.setattr(selfsup.swav.dist, "world_size", lambda: 2)
    monkeypatch.setattr(selfsup.swav.dist, "rank", lambda: rank)
    scores = torch.randn(4, 20)
    eps, iters = m.cfg.epsilon, m.cfg.sinkhorn_iters
    for crop in range(2):
        mine = m.queue[crop, 4 * rank:4 * rank + 4]
        with torch.no_grad():
            expected = sinkhorn(torch.cat([m.prototypes(mine), scores]), eps, iters)[-4:]
            other = sinkhorn(torch.cat([m.prototypes(m.queue[1 - crop, 4 * rank:4 * rank + 4]), scores]), eps, iters)[-4:]
        got = m.codes(crop, scores, True)
        torch.testing.assert_close(got, expected)
        assert (got - other).abs().max() > 1e-4                       # not the other crop's queue


def test_ema_update_and_schedules():
    online = torch.nn.Linear(2, 1)
    target = MomentumTarget(online)
    assert not any(p.requires_grad for p in target.parameters())
    with torch.no_grad():
        online.weight.fill_(1.0)
        target.nets[0].weight.fill_(3.0)
    target.update([online], 0.9)
    assert torch.allclose(target.nets[0].weight, torch.full((1, 2), 0.9 * 3.0 + 0.1 * 1.0))
    cos = momentum_schedule("cosine", 0.996, 1000)
    assert cos[0] == pytest.approx(0.996) and cos[-1] == pytest.approx(1.0, abs=1e-7)
    assert np.all(np.diff(cos) >= 0)
    k = 250   # BYOL: tau_k = 1 - (1 - tau_base)(cos(pi k / K) + 1) / 2
    assert cos[k] == pytest.approx(1 - 0.004 * (math.cos(math.pi * k / 1000) + 1) / 2)
    assert np.all(momentum_schedule("constant", 0.999, 5) == 0.999)


def test_moco_queue_enqueues_used_keys_and_wraps():
    m = build("mocov2", queue_size=6)
    keys = [torch.nn.functional.normalize(torch.randn(4, 16), dim=1) for _ in range(2)]
    m.update_state([(None, keys[0]), (None, keys[1])], [(0, 1)])    # asymmetric: keys of view 1
    assert torch.equal(m.queue[:4], keys[1]) and m.queue_ptr.item() == 4
    m.update_state([(None, keys[0]), (None, keys[1])], [(0, 1)])    # wraps: 2 at the end, 2 at the start
    assert torch.equal(m.queue[4:], keys[1][:2]) and torch.equal(m.queue[:2], keys[1][2:])
    sym = build("mocov2plus", queue_size=64)
    sym.update_state([(None, keys[0]), (None, keys[1])], [(0, 1)])  # symmetric: both views' keys
    assert torch.equal(sym.queue[:8], torch.cat(keys)) and sym.queue_ptr.item() == 8


@pytest.mark.parametrize("name", METHODS)
def test_every_method_loss_falls_on_synthetic_data(name):
    """40 steps over 128 synthetic images (batches of 32, fresh crops each pass): the loss must
    fall, the pair loss is per sample, and the hooks (prepare / begin_step / after_backward /
    on_step) run. Compared from step 3 on: MoCo's queue starts as random vectors. DINO's targets
    move (centre, teacher temperature, EMA teacher) and at this scale its loss first climbs to
    about log(out_dim) (measured: 2.0 -> 4.2 over 40 steps, out_dim 64) before falling, as in
    DINO's own logs from log(65536); so for DINO the test holds teacher and centre fixed (EMA 1,
    centre momentum 1) and checks that the student learns the teacher's targets."""
    from data.augment import DeviceAugment
    from data.multiview import MultiViewDataset
    from data.synthetic import SyntheticImages
    from selfsup.config import ssl_defaults
    torch.manual_seed(0)
    m = build(name, **({"ema": 1.0, "ema_schedule": "constant", "center_momentum": 1.0} if name == "dino" else {}))
    steps, bsz = 40, 32
    m.prepare(steps, 4)
    ds = MultiViewDataset(SyntheticImages(4 * bsz, image_size=32), 2, 32, local_crop_size=16,
                          local_views=2 if name in ("dino", "swav") else 0)
    aug = DeviceAugment(_to_config(ssl_defaults()).augment)

    def batch(step):
        items = [ds[(i, step // 4)] for i in range(step % 4 * bsz, (step % 4 + 1) * bsz)]
        stack = lambda k: torch.stack([it[k] for it in items])    # noqa: E731
        local = aug(stack("local_views"), stack("local_rand"), 5.0, local=True) if "local_views" in items[0] else None
        return aug(stack("views"), stack("rand"), 5.0), local

    opt = torch.optim.SGD([p for g in m.param_groups() for p in g["params"]], lr=0.05, momentum=0.9)
    losses = []
    for step in range(steps):
        views, local = batch(step)
        m.begin_step(step)
        loss = m(views, local_views=local)["loss"]
        opt.zero_grad()
        loss.backward()
        m.after_backward(step)
        opt.step()
        m.on_step(step)
        losses.append(loss.item())
    outs = m.embed(views)
    assert m.pair_loss(outs[0], outs[1]).shape == (bsz,)
    assert np.isfinite(losses).all()
    # BYOL's predictor aligns with the target in the first 3 steps (3.8 -> 2.0), after which its
    # loss falls slowly (~1 % from steps 3-7 to 35-39, the margin moved with the thread count)
    start = 1 if name == "byol" else 3
    first, last = np.mean(losses[start:start + 5]), np.mean(losses[-5:])
    assert last < first - 0.01 * abs(first), losses


def test_global_batchnorm_conversion_keeps_momentum_targets_frozen():
    """convert_sync_bn must not hand the EMA target's BN parameters to the optimizer (a new
    Parameter would default to requires_grad=True, and DDP would then average a gradient
    that never arrives: wrong updates without an error)."""
    from models.batchnorm import GlobalBatchNorm, convert_sync_bn
    m = build("byol")
    before = sum(p.numel() for g in m.param_groups() for p in g["params"])
    m = convert_sync_bn(m, torch.device("cpu"))
    assert any(isinstance(x, GlobalBatchNorm) for x in m.target.modules())
    assert not any(p.requires_grad for p in m.target.parameters())
    assert sum(p.numel() for g in m.param_groups() for p in g["params"]) == before


def test_asymmetric_moco_forward_equals_the_pairwise_loss_and_enqueues_the_keys():
    torch.manual_seed(0)
    m = build("mocov2", queue_size=64, shuffle_bn=False)
    views = [torch.randn(4, 3, 16, 16) for _ in range(2)]
    with torch.no_grad():
        outs = m.embed(views)
        expected = m.pair_loss(outs[0], outs[1]).mean()
    loss = m(views)["loss"]                      # the short path: q of view 0, k of view 1 only
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert torch.allclose(m.queue[:4], outs[1][1], atol=1e-6) and m.queue_ptr.item() == 4


@pytest.mark.parametrize("name", METHODS)
def test_hard_augment_ranks_pairs_for_every_method(name):
    """Hard Augment (WACV'23 Eq. 10) works through embed + pair_loss for every method, leaves
    the method's state (queue, centre, BN running statistics) alone, and the chosen views train."""
    from accel import hard_augment
    torch.manual_seed(0)
    m = build(name)
    m.prepare(10, 5)
    m.begin_step(0)
    views = [torch.randn(8, 3, 16, 16) for _ in range(4)]
    before = {k: v.clone() for k, v in m.state_dict().items()}
    losses, pairs, _ = hard_augment.pair_losses(m, views, r_sel=8)
    assert losses.shape == (8, 6) and torch.isfinite(losses).all()
    chosen, _, picked = hard_augment.select(m, views, 8, "hard")
    assert picked.item() == pytest.approx(losses.max(1).values.mean().item(), rel=1e-5)
    assert all(torch.equal(v, m.state_dict()[k]) for k, v in before.items() if "num_batches" not in k)
    m(chosen)["loss"].backward()


# ---- ViT sequence compression (NeurIPS'24 sec. 4): which encoder gets which setting

def record_calls(module, name, log):
    """Wrap module.forward so that every call logs (name, input width, keyword arguments)."""
    plain = module.forward

    def forward(x, **kwargs):
        log.append((name, x.shape[-1], kwargs))
        return plain(x, **kwargs)
    module.forward = forward


@pytest.mark.parametrize("name", METHODS)
def test_compression_query_to_the_online_backbone_key_to_the_momentum_target(name):
    """The online backbone runs the global views with the query setting, the momentum target
    (MoCo's key encoder, BYOL's target, DINO's teacher) with the key setting; a method without
    a target runs every global view with the query setting (SimCLR: both views alike, sec. 6.4);
    local crops are plain forwards of both (sec. 6.4). has_target says which case applies."""
    from selfsup.momentum import MomentumTarget
    torch.manual_seed(0)
    m = build(name, backbone=ViT("vit_t16", patch_size=8))
    assert m.has_target == any(isinstance(x, MomentumTarget) for x in m.modules())
    log = []
    record_calls(m.backbone, "online", log)
    if m.has_target:
        target = m.teacher if name == "dino" else m.target
        record_calls(target.nets[0], "target", log)
    gen = torch.Generator().manual_seed(0)
    query, key = SeqCompression(0.5, 16, gen), SeqCompression(0.25, 8, gen)
    views = [torch.randn(4, 3, 32, 32) for _ in range(2)]
    local = [torch.randn(4, 3, 16, 16) for _ in range(2)]
    m.prepare(10, 5)
    m.begin_step(0)
    m(views, local_views=local, compression=QueryKey(query, key))["loss"].backward()
    calls = {(who, width): [kw for w, wd, kw in log if (w, wd) == (who, width)] for who, width in
             {(w, wd) for w, wd, _ in log}}
    assert len(calls[("online", 32)]) == 2 and all(kw == query.vit_kwargs() for kw in calls[("online", 32)])
    assert calls[("online", 16)] == [{}, {}]                                  # local crops: plain
    if m.has_target:
        assert len(calls[("target", 32)]) == 2 and all(kw == key.vit_kwargs() for kw in calls[("target", 32)])
        assert all(kw == {} for kw in calls.get(("target", 16), []))
    else:
        assert set(calls) == {("online", 32), ("online", 16)}
    log.clear()
    m.embed(views)                                                            # Hard Augment's selection: plain
    assert log and all(kw == {} for _, _, kw in log)


def test_mocov3_and_dino_outputs_follow_the_query_and_key_settings():
    """MoCo v3's (q, k) and DINO's (student, teacher) under a QueryKey equal the heads applied to
    the backbones' forwards with the query / key arguments by hand."""
    torch.manual_seed(0)
    x = torch.randn(4, 3, 32, 32)
    for name in ("mocov3", "dino"):
        m = build(name, backbone=ViT("vit_t16", patch_size=8))
        target = m.teacher if name == "dino" else m.target
        q_kw = dict(patch_size=16, drop_ratio=0.5)
        k_kw = dict(patch_size=8, drop_ratio=0.25)
        setting = QueryKey(SeqCompression(generator=torch.Generator().manual_seed(1), **q_kw),
                           SeqCompression(generator=torch.Generator().manual_seed(2), **k_kw))
        with torch.no_grad():
            (a, b), = m.embed([x], setting)
            online = m.backbone(x, generator=torch.Generator().manual_seed(1), **q_kw)
            keyed = target.nets[0](x, generator=torch.Generator().manual_seed(2), **k_kw)
            if name == "dino":
                want_a, want_b = m.head(online), target.nets[1](keyed)
            else:
                want_a, want_b = m.predictor(m.projector(online)), target.nets[1](keyed)
        assert torch.allclose(a, want_a, atol=1e-6) and torch.allclose(b, want_b, atol=1e-6), name
        assert not torch.allclose(b, target(x), atol=1e-4)                    # the key setting acted


def test_a_resnet_backbone_never_receives_compression_arguments():
    m = build("byol")
    log = []
    record_calls(m.backbone, "online", log)
    record_calls(m.target.nets[0], "target", log)
    views = [torch.randn(4, 3, 16, 16) for _ in range(2)]
    m(views, compression=QueryKey(SeqCompression(), SeqCompression(0.0, 0)))   # settings that change nothing
    m(views, compression=None)
    assert len(log) == 8 and all(kw == {} for _, _, kw in log)
    with pytest.raises(ValueError, match="ViT"):
        m(views, compression=QueryKey(SeqCompression(0.5), None))


def test_blockwise_method_refuses_compression():
    from selfsup.blockwise import BlockwiseMethod
    from selfsup.config import ssl_defaults
    cfg = _to_config(ssl_defaults())
    cfg.method.name = "byol"
    cfg.method.byol.update(SMALL["byol"])
    m = BlockwiseMethod(cfg.method, ResNet("resnet18", width=8, cifar_stem=True), cfg.interloss)
    assert m.has_target and m.target is not None
    views = [torch.randn(4, 3, 16, 16) for _ in range(2)]
    with pytest.raises(ValueError, match="compression"):
        m(views, compression=QueryKey(SeqCompression(0.5), None))
    with pytest.raises(ValueError, match="compression"):
        m.embed(views, QueryKey())


def test_simclr_projector_normalises_every_layer_as_the_released_code():
    """SimCLR's model_util.projection_head: Linear(no bias)-BN-ReLU, then Linear(no bias)-BN with
    a learned scale and no shift (center=False)."""
    m = build("simclr")
    kinds = [type(layer).__name__ for layer in m.projector]
    assert kinds == ["Linear", "BatchNorm1d", "ReLU", "Linear", "BatchNorm1d"]
    lin1, bn1, _, lin2, bn2 = m.projector
    assert lin1.bias is None and lin2.bias is None and (lin2.out_features, bn2.num_features) == (16, 16)
    assert bn2.weight.requires_grad and not bn2.bias.requires_grad and torch.all(bn2.bias == 0)
    assert all(p is not bn2.bias for g in m.param_groups() for p in g["params"])
    # the output is batch-normalised: per-dimension zero mean and unit variance at gamma = 1
    m.train()
    z = m.embed([torch.randn(8, 3, 16, 16), torch.randn(8, 3, 16, 16)])[0]
    torch.testing.assert_close(z.mean(0), torch.zeros(16), atol=1e-5, rtol=0)
    torch.testing.assert_close(z.var(0, unbiased=False), torch.ones(16), atol=1e-3, rtol=0)
