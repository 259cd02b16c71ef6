"""Intermediate contrastive losses: partial back-propagation (Algorithm 1), block-wise hard
pair selection (Eq. 4), per-block heads and queues, intermediate-feature probes."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from accel import hard_pairs, partial_backprop
from common.config import _to_config
from models.resnet import ResNet
from selfsup.blockwise import BlockMaps, BlockwiseMethod
from selfsup.simclr import nt_xent
from test_methods import SMALL


def build(name="simclr", seed=0, **il):
    from selfsup.config import ssl_defaults
    cfg = _to_config(ssl_defaults())
    cfg.method.name = name
    cfg.method[name].update(SMALL[name])
    cfg.interloss.update(il)
    torch.manual_seed(seed)
    return BlockwiseMethod(cfg.method, ResNet("resnet18", width=8, cifar_stem=True), cfg.interloss, seed)


def views(b=8, size=16, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, 3, size, size, generator=g) for _ in range(2)]


def step_with_block(m, block, opt, v):
    """One training step with loss `block` drawn (the draw is forced through loss_probs)."""
    m.probs = np.eye(m.n)[block - 1]
    m.begin_step(0)
    assert m.block == block
    loss = m(v)["loss"]
    opt.zero_grad(set_to_none=True)
    loss.backward()
    m.after_backward(0)
    return loss


@pytest.mark.parametrize("block", [1, 2, 3])
def test_later_blocks_run_no_forward_get_no_gradient_and_keep_weights_and_state(block):
    m = build(partial_backprop=True)
    opt = torch.optim.SGD([p for g in m.param_groups() for p in g["params"]], lr=0.1, momentum=0.9, weight_decay=0.1)
    for b in range(1, 5):                       # every block once first, so every parameter has momentum state
        step_with_block(m, b, opt, views(seed=b))
        opt.step()
    calls = {i: 0 for i in range(1, 5)}
    hooks = [m.backbone.stage(i).register_forward_hook(lambda *_, i=i: calls.__setitem__(i, calls[i] + 1))
             for i in range(1, 5)]
    later = [p for i in range(block + 1, 5) for p in m.block_params(i)]
    later += [p for i in range(1, 5) if i != block for p in m.heads[i - 1].parameters()
              if p.requires_grad]   # (SimCLR's output-BN shift is frozen at 0: never optimised)
    before = [p.detach().clone() for p in later]
    state = [opt.state[p]["momentum_buffer"].clone() for p in later]
    step_with_block(m, block, opt, views())
    for h in hooks:
        h.remove()
    assert [calls[i] for i in range(1, 5)] == [2 if i <= block else 0 for i in range(1, 5)]   # 2 views
    assert all(p.grad is None for p in later)
    assert all(p.grad is not None for i in range(1, block + 1) for p in m.block_params(i))
    opt.step()
    assert all(torch.equal(p, b) for p, b in zip(later, before))                    # weights unchanged
    assert all(torch.equal(opt.state[p]["momentum_buffer"], s) for p, s in zip(later, state))   # state too


def test_gradients_equal_those_of_the_network_truncated_at_the_drawn_block():
    m = build(partial_backprop=True)
    v = views()
    opt = torch.optim.SGD(m.parameters(), lr=0.0)
    step_with_block(m, 2, opt, v)
    got = {n: p.grad.clone() for n, p in m.backbone.named_parameters() if p.grad is not None}
    # reference: ResNet truncated after stage 2, global pooling, head 2's projector, NT-Xent
    ref = ResNet("resnet18", width=8, cifar_stem=True)
    ref.load_state_dict(m.backbone.state_dict(), strict=False)
    head = m.heads[1]
    z = [head.projector(ref.forward_stages(x, 2)[-1].mean((2, 3))) for x in v]
    nt_xent(z[0], z[1], head.temperature).mean().backward()
    for n, p in ref.named_parameters():
        if n.startswith(("layer3", "layer4")):
            assert p.grad is None
        else:
            assert torch.allclose(got[n], p.grad, atol=1e-6, rtol=1e-4), n


def test_crops_sizes_positions_and_hard_easy_choice_on_a_crafted_map():
    g = torch.Generator().manual_seed(0)
    (ys, xs), size = hard_pairs.crop_positions(3, 8, 8, 0.75, 50, g)
    assert size == (6, 6) and ys.shape == xs.shape == (50, 3)
    assert ys.min() == 0 and ys.max() == 2 and xs.min() == 0 and xs.max() == 2   # every valid corner, none outside

    class Toy(torch.nn.Module):   # head: pooled online map; loss: squared difference of the means
        def embed(self, vs):
            return [x.online.mean((1, 2, 3)) for x in vs]

        def pair_loss(self, a, b):
            return (a - b) ** 2

    x1 = torch.zeros(2, 1, 4, 4)
    x1[0, :, :2, :2] = 8.0              # sample 0: a bright corner in view 1 ...
    x2 = torch.zeros(2, 1, 4, 4)
    x2[1, :, 2:, 2:] = 4.0              # sample 1: ... in view 2
    corners = (torch.tensor([[0, 0], [2, 2]]), torch.tensor([[0, 0], [2, 2]]))   # [M, B]: both images alike
    c1 = hard_pairs.crops(x1, corners, (2, 2))   # M = 2 crops per view, 2x2 each
    c2 = hard_pairs.crops(x2, corners, (2, 2))
    losses = hard_pairs.crop_pair_losses(Toy(), BlockMaps, (c1, None), (c2, None))
    # sample 0: pairs (p, q) = (0, 0), (0, 1) have loss 64, the others 0; sample 1: (0, 1), (1, 1) are 16
    assert losses.tolist() == [[64.0, 64.0, 0.0, 0.0], [0.0, 16.0, 0.0, 16.0]]
    assert hard_pairs.choose(losses, "hard").tolist() == [0, 1]
    assert hard_pairs.choose(losses, "easy").tolist() == [2, 0]
    maps, _, choice, losses, positions = hard_pairs.select_crops(Toy(), BlockMaps, [x1, x2], None, 0.5, 2, "hard", g)
    for k in range(2):                    # the returned maps are the chosen crops, at image k's own positions
        p, q = choice[k] // 2, choice[k] % 2
        y1, z1 = positions[0][0][p, k], positions[0][1][p, k]
        y2, z2 = positions[1][0][q, k], positions[1][1][q, k]
        assert torch.equal(maps[0][k], x1[k, :, y1:y1 + 2, z1:z1 + 2]) and torch.equal(maps[1][k], x2[k, :, y2:y2 + 2, z2:z2 + 2])
        assert losses[k, choice[k]] == losses[k].max()


def test_crop_positions_are_drawn_per_image_and_each_crop_is_its_own_image_slice():
    """The paper crops each image: images of one batch get their own positions (one batched draw,
    reproducible from the generator), and crop k of image i is image i's slice at its own corner."""
    x = torch.arange(4 * 2 * 10 * 9, dtype=torch.float32).view(4, 2, 10, 9).requires_grad_(True)
    pos, size = hard_pairs.crop_positions(4, 10, 9, 0.5, 3, torch.Generator().manual_seed(5))
    again, _ = hard_pairs.crop_positions(4, 10, 9, 0.5, 3, torch.Generator().manual_seed(5))
    assert size == (5, 4) and all(torch.equal(a, b) for a, b in zip(pos, again))
    ys, xs = pos
    assert (ys.max() <= 5) and (xs.max() <= 5) and ys.min() >= 0 and xs.min() >= 0
    assert all((ys[:, i] != ys[:, 0]).any() or (xs[:, i] != xs[:, 0]).any() for i in range(1, 4))   # per image
    c = hard_pairs.crops(x, pos, size)
    assert c.shape == (3, 4, 2, 5, 4)
    for k in range(3):
        for i in range(4):
            y, z = int(ys[k, i]), int(xs[k, i])
            assert torch.equal(c[k, i], x[i, :, y:y + 5, z:z + 4])
    c.sum().backward()                    # gradient reaches exactly the cropped pixels, once per crop
    counts = torch.zeros(4, 10, 9)
    for k in range(3):
        for i in range(4):
            counts[i, ys[k, i]:ys[k, i] + 5, xs[k, i]:xs[k, i] + 4] += 1
    torch.testing.assert_close(x.grad, counts[:, None].expand(4, 2, 10, 9))


def test_hard_example_keeps_the_matching_fraction_of_the_hardest_samples():
    m = build(hard_pairs=True, pair_pick="hard_example", crop=0.5)
    v = [torch.randn(8, 8, 4, 4) for _ in range(2)]
    maps, _, keep = hard_pairs.select_hard_examples(m.heads[0], BlockMaps, v, None, 0.5)
    assert len(keep) == 2 and maps[0].shape == (2, 8, 4, 4)             # ceil(0.5^2 x 8) = 2
    with torch.no_grad():
        e = m.heads[0].embed([BlockMaps(x) for x in v])
        loss = m.heads[0].pair_loss(e[0], e[1])
    assert set(keep.tolist()) == set(loss.topk(2).indices.tolist())


def test_each_block_queue_receives_its_own_blocks_keys():
    m = build("mocov2", aux_losses=True)
    m.prepare(10, 5)
    m.begin_step(0)
    v = views()
    with torch.no_grad():
        tmaps = m.target.nets[0].forward_stages(v[1], 4)
        expected = [F.normalize(m.heads[i].target(BlockMaps(None, tmaps[i])), dim=1) for i in range(4)]
    m(v)["loss"].backward()
    for i in range(4):
        assert torch.allclose(m.heads[i].queue[:8], expected[i], atol=1e-6), i
        assert m.heads[i].queue_ptr.item() == 8
    assert not torch.allclose(m.heads[0].queue[:8], m.heads[1].queue[:8])


def test_loss_draw_is_seeded_and_follows_loss_probs():
    probs = partial_backprop.loss_probabilities([0, 1, 0, 3], 4)
    draws = [partial_backprop.draw_block(s, 7, probs) for s in range(2000)]
    assert draws == [partial_backprop.draw_block(s, 7, probs) for s in range(2000)]   # same on every rank
    assert set(draws) == {2, 4} and abs(draws.count(4) / 2000 - 0.75) < 0.04
    assert partial_backprop.non_adjacent_sets(4) == [[1, 3], [1, 4], [2, 4]]
    with pytest.raises(Exception, match="loss_probs"):
        partial_backprop.loss_probabilities([1, 1], 4)


def test_intermediate_feature_linear_probe_shapes():
    from linear_eval import FrozenFeatures
    r = ResNet("resnet50", width=8, cifar_stem=True).eval()
    x = torch.randn(2, 3, 32, 32)
    for i, c in enumerate(r.stage_channels, 1):
        f = FrozenFeatures(r, f"block{i}")
        assert f.num_features == c and f(x).shape == (2, c)
    assert FrozenFeatures(r, "final")(x).shape == (2, r.num_features)


def test_two_gloo_ranks_with_partial_backprop_stay_identical():
    from conftest import REPO, run
    p = run(["tests/interloss_worker.py", REPO], nproc=2)
    assert p.stdout.count("partial backprop ok") == 2


def test_train_ssl_with_partial_backprop_and_hard_pairs_on_two_ranks(tmp_path):
    """The command-line contract end to end, under torchrun (DDP with unused blocks): the run
    finishes, logs the drawn block, and a step that stops early costs fewer FLOPs."""
    from conftest import TINY, read_metrics, run
    from test_methods import small_overrides
    out = str(tmp_path / "il")
    run(["train_ssl.py"] + TINY + small_overrides("simclr") + [
        f"output_dir={out}", "interloss.partial_backprop=true", "interloss.hard_pairs=true",
        "interloss.pair_blocks=[1,2]", "interloss.candidates=2", "interloss.crop=0.75",
        "interloss.pair_pick=hard", "train.sync_bn=true"], nproc=2)
    rows = [r for r in read_metrics(out) if "loss" in r]
    assert len(rows) == 8 and all(np.isfinite(r["loss"]) for r in rows)
    assert {r["block"] for r in rows} <= {1, 2, 3, 4} and len({r["block"] for r in rows}) > 1
    steps = np.diff([0.0] + [r["train_pflops"] for r in rows])   # FLOPs of each step (log_every=1)
    by_block = {}
    for r, f in zip(rows, steps):
        by_block.setdefault(r["block"], set()).add(round(f, 12))
    cost = {b: min(v) for b, v in by_block.items()}
    assert all(cost[a] < cost[b] for a, b in zip(sorted(cost), sorted(cost)[1:]))   # deeper = dearer
