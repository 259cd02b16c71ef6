"""NeurIPS'24 ViT sequence compression: PI-resize of the patch kernel (Eq. 3), token dropout, the
ViT's compressed forward, Table 1-2 sample costs, the CA-MSE estimator (Eq. 8-10), compression
schedule files and sample-cost budgets in train_ssl.py."""
import math
import os

import numpy as np
import pytest
import torch

import selfsup
import selfsup.plan
from accel import ca_mse, compression, cost, online_camse, token_dropout
from common import run_length
from common.config import ConfigError, _to_config
from conftest import TINY, read_metrics, run
from models.flexi_patch import resize_patch, resize_patch_embed
from models.token_drop import drop_tokens, kept_count
from models.vit import ViT, sincos_2d
from selfsup import mocov3
from test_methods import SMALL, small_overrides
from test_methods import build as small_method

VIT_TINY = ["model.arch=vit_t16", "model.patch_size=8", "optim.name=adamw", "optim.lr=5e-4"]


# ---- flexible patch embedding (Eq. 3)

def test_pi_resize_is_identity_at_the_same_size():
    w = torch.randn(6, 3, 8, 8)
    assert torch.equal(resize_patch_embed(w, 8), w)


@pytest.mark.parametrize("p,q", [(4, 6), (4, 8), (8, 12)])
def test_pi_resize_preserves_inner_products_with_resized_patches(p, q):
    torch.manual_seed(0)
    w = torch.randn(5, 3, p, p, dtype=torch.float64)
    x = torch.randn(20, 3, p, p, dtype=torch.float64)
    wq = resize_patch_embed(w, q)
    assert wq.shape == (5, 3, q, q)
    before = torch.einsum("nchw,dchw->nd", x, w)
    after = torch.einsum("nchw,dchw->nd", resize_patch(x, q), wq)       # <resize(x_p, q), w_q> (Eq. 3)
    assert torch.allclose(before, after, atol=1e-8 * before.abs().max().item())


def _patchwise_upsample(img, p, q):
    """Resize every p x p patch of img [B, C, H, W] to q x q on its own (as Eq. 3 assumes)."""
    b, c, h, w = img.shape
    patches = img.reshape(b, c, h // p, p, w // p, p).permute(0, 1, 2, 4, 3, 5)
    up = resize_patch(patches, q)
    return up.permute(0, 1, 2, 4, 3, 5).reshape(b, c, h // p * q, w // p * q)


def test_resized_model_tokens_on_upsampled_image_match_the_original():
    torch.manual_seed(0)
    vit = ViT("vit_t16", patch_size=8).double()
    img = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    ref = vit.tokens(img)                                                # patch 8 at 32 px: 4 x 4 grid
    up = vit.tokens(_patchwise_upsample(img, 8, 12), patch_size=12)      # patch 12 at 48 px: same grid
    # same patch embeddings; the positions differ (they say where the patch lies in pixels / 8)
    pos8, pos12 = sincos_2d(4, 4, 192, 1.0).double(), sincos_2d(4, 4, 192, 1.5).double()
    assert up.shape == ref.shape and torch.allclose(up - pos12, ref - pos8, atol=1e-9)
    assert not torch.allclose(pos8, pos12, atol=1e-3)
    # nearest upsampling by an integer factor is the same patch-wise and on the whole image
    whole = torch.nn.functional.interpolate(img, scale_factor=2, mode="nearest")
    w16 = resize_patch_embed(vit.patch_embed.weight, 16, interpolation="nearest")
    tok = torch.nn.functional.conv2d(whole, w16, vit.patch_embed.bias, stride=16).flatten(2).transpose(1, 2)
    assert torch.allclose(tok, vit.patch_embed(img).flatten(2).transpose(1, 2), atol=1e-9)


# ---- position codes follow the image under flexible patch sizes

def _pos(vit, size, q):
    """Position codes the ViT adds at patch size q on a size x size image [N, dim] (zero kernel and bias)."""
    return vit.tokens(torch.zeros(1, 3, size, size), q)[0]


def test_position_code_depends_on_where_the_patch_lies_not_on_its_grid_index():
    vit = ViT("vit_t16", patch_size=16)
    with torch.no_grad():
        vit.patch_embed.weight.zero_()
    # at the model's own patch size the codes are today's integer-grid table, at any resolution
    for size in (96, 240):
        n = size // 16
        gy, gx = torch.meshgrid(torch.arange(n, dtype=torch.float32), torch.arange(n, dtype=torch.float32), indexing="ij")
        omega = 1.0 / 10000.0 ** (torch.arange(48, dtype=torch.float32) / 48)
        ox, oy = gx.flatten()[:, None] * omega, gy.flatten()[:, None] * omega
        assert torch.equal(_pos(vit, size, 0), torch.cat([ox.sin(), ox.cos(), oy.sin(), oy.cos()], 1))
        assert torch.equal(_pos(vit, size, 16), _pos(vit, size, 0))
    # same image location, different patch sizes, same code: the centre of the 48 px patch (1, 2)
    # is the centre of the 16 px patch (4, 7); of the 32 px patch (1, 1) the centre of no 16 px patch
    p16, p48, p32 = _pos(vit, 240, 16).view(15, 15, -1), _pos(vit, 240, 48).view(5, 5, -1), _pos(vit, 96, 32).view(3, 3, -1)
    assert torch.allclose(p48[1, 2], p16[4, 7], atol=1e-6)
    assert torch.allclose(p48[4, 4], p16[13, 13], atol=1e-6)
    # 32 px patch (1, 1) on 96 px: centre at 48 px = 16 px patch 2.5 -> halfway between grid codes
    assert torch.allclose(p32[1, 1], _centre_code(2.5, 2.5), atol=1e-6)
    # patch 30 on 240 px: the bottom-right token sits at the bottom-right of the image (13.56),
    # not at the code of the central 16 px token (7) that integer indices gave it
    p30 = _pos(vit, 240, 30).view(8, 8, -1)
    assert torch.allclose(p30[7, 7], _centre_code(7.5 * 30 / 16 - 0.5, 7.5 * 30 / 16 - 0.5), atol=1e-6)
    assert (p30[7, 7] - p16[14, 14]).norm() < (p30[7, 7] - p16[7, 7]).norm()


def _centre_code(y, x, dim=192):
    omega = 1.0 / 10000.0 ** (torch.arange(dim // 4, dtype=torch.float32) / (dim // 4))
    ox, oy = torch.tensor(float(x)) * omega, torch.tensor(float(y)) * omega
    return torch.cat([ox.sin(), ox.cos(), oy.sin(), oy.cos()])


# ---- token dropout

def test_token_dropout_count_prefix_per_sample_and_seed():
    b, n, d = 6, 49, 4
    tokens = torch.randn(b, 1 + n, d)
    out = drop_tokens(tokens, 0.75, torch.Generator().manual_seed(3), num_prefix=1)
    assert out.shape == (b, 1 + round(0.25 * n), d)                       # round((1 - d) N) = 12
    assert torch.equal(out[:, 0], tokens[:, 0])                          # class token kept
    kept = [{tuple(r.tolist()) for r in out[i, 1:]} for i in range(b)]
    assert all(k <= {tuple(r.tolist()) for r in tokens[i, 1:]} for i, k in enumerate(kept))
    assert len({frozenset(k) for k in kept}) > 1                         # subsets differ between samples
    again = drop_tokens(tokens, 0.75, torch.Generator().manual_seed(3), num_prefix=1)
    other = drop_tokens(tokens, 0.75, torch.Generator().manual_seed(4), num_prefix=1)
    assert torch.equal(out, again) and not torch.equal(out, other)
    assert kept_count(25, 0.9) == 3 and kept_count(196, 0.75) == 49
    with pytest.raises(ValueError):
        drop_tokens(tokens, 1.0)


def test_vit_forward_sequence_length_with_dropout_and_patch_size():
    vit = ViT("vit_t16", patch_size=8)
    seen = []
    vit.blocks[0].register_forward_hook(lambda m, i, o: seen.append(o.shape[1]))
    x = torch.randn(3, 3, 48, 48)
    vit(x)
    feat = vit(x, patch_size=12, drop_ratio=0.5, generator=torch.Generator().manual_seed(0))
    vit(x)                                                                # DINO's local crops: plain
    assert seen == [1 + 36, 1 + 8, 1 + 36]                                # 16 patches of 12 px, half kept, + class
    assert feat.shape == (3, 192) and "compression" not in vars(vit)      # no state left on the model
    assert cost.sequence_length(48, 12, 0.5) == 8.0


def test_vit_forward_arguments_equal_tokens_drop_encode_by_hand():
    """forward(x, patch_size, drop_ratio, generator) is tokens() + drop_tokens() + encode(): the
    drop acts after the position embeddings and before the class token (NeurIPS'24 sec. 4.1)."""
    torch.manual_seed(0)
    vit = ViT("vit_t16", patch_size=8).double()
    x = torch.randn(4, 3, 48, 48, dtype=torch.float64)
    seen = []
    vit.blocks[0].register_forward_hook(lambda m, i, o: seen.append(o.shape[1]))
    got = vit(x, patch_size=12, drop_ratio=0.75, generator=torch.Generator().manual_seed(5))
    t = drop_tokens(vit.tokens(x, 12), 0.75, torch.Generator().manual_seed(5))
    assert t.shape[1] == kept_count(16, 0.75) == 4                  # round((1 - d) N), N = 16
    assert seen[0] == 1 + 4
    assert torch.equal(got, vit.encode(t))
    other = vit(x, patch_size=12, drop_ratio=0.75, generator=torch.Generator().manual_seed(6))
    assert not torch.allclose(got, other)                                        # the generator decides
    plain = vit.encode(vit.tokens(x))
    assert torch.equal(vit(x), plain) and torch.equal(vit(x, patch_size=8), plain)   # 0: the model's own
    assert torch.equal(vit(x, patch_size=12), vit.encode(vit.tokens(x, 12)))       # patch scaling alone


def test_compression_reaches_the_online_encoder_and_the_key_encoder_separately():
    cfg = _to_config(selfsup.method_defaults())
    cfg.name = "mocov3"
    cfg.mocov3.update(SMALL["mocov3"])
    method = selfsup.build_method(cfg, ViT("vit_t16", patch_size=8))
    assert method.has_target
    lengths = {}
    for name, vit in (("q", method.backbone), ("k", method.target.nets[0])):
        def hook(m, i, o, name=name):
            lengths.setdefault(name, o.shape[1])
        vit.blocks[0].register_forward_hook(hook)
    setting = token_dropout.QueryKey(token_dropout.SeqCompression(0.75, 8), token_dropout.SeqCompression(0.0, 16))
    method([torch.randn(4, 3, 32, 32), torch.randn(4, 3, 32, 32)], compression=setting)
    assert lengths == {"q": 1 + 4, "k": 1 + 4}                            # 16 tokens, 75 % dropped / 4 of 16 px


def test_compression_settings_validate_and_say_when_they_act():
    assert not token_dropout.SeqCompression().active(8)
    assert not token_dropout.SeqCompression(0.0, 8).active(8)
    assert token_dropout.SeqCompression(0.0, 16).active(8) and token_dropout.SeqCompression(0.25).active(8)
    gen = torch.Generator()
    assert token_dropout.SeqCompression(0.5, 12, gen).vit_kwargs() == {"patch_size": 12, "drop_ratio": 0.5,
                                                                        "generator": gen}
    with pytest.raises(ValueError):
        token_dropout.SeqCompression(1.0)
    with pytest.raises(ValueError):
        token_dropout.SeqCompression(0.0, -8)
    assert token_dropout.QueryKey() == token_dropout.QueryKey(None, None)


# ---- cost model (Table 1, Table 2b-c)

TABLE1 = {  # MoCo v3, 240 px, key at full length (patch 16): rows patch size, columns d = 0, .25, .5, .75, .9
    16: [4.59, 3.73, 2.87, 2.01, 1.49], 20: [3.36, 2.80, 2.25, 1.70], 24: [2.69, 2.30, 1.92, 1.53],
    30: [2.14, 1.89, 1.64], 40: [1.71, 1.57, 1.43, 1.29], 48: [1.54, 1.44, 1.35, 1.25]}
# (cells missing here are illegible in the paper's text extraction)


def test_cost_model_reproduces_table1_mocov3_grid():
    L_k = 1 + cost.sequence_length(240, 16)
    assert L_k == 226
    for q, row in TABLE1.items():
        for d, expected in zip([0.0, 0.25, 0.5, 0.75, 0.9], row):
            got = cost.vit_sample_cost("mocov3", 1 + cost.sequence_length(240, q, d), L_k)
            assert abs(got - expected) < 0.03, (q, d, got, expected)


def test_cost_model_reproduces_table2b_and_2c():
    for p, L, expected in [(16, 225, 4.59), (20, 144, 2.94), (24, 100, 2.04), (30, 64, 1.31), (40, 36, 0.73)]:
        assert cost.sequence_length(240, p) == L
        got = cost.vit_sample_cost("mocov3", 1 + L, 1 + L)                # symmetric patch scaling
        assert abs(got - expected) < 0.03, (p, got)
    for p_k, expected in [(16, 2.1), (20, 1.7), (24, 1.5), (30, 1.3)]:    # query patch 30; printed to 0.1
        got = cost.vit_sample_cost("mocov3", 65, 1 + cost.sequence_length(240, p_k))
        assert round(got, 1) == expected, (p_k, got)
    assert cost.vit_sample_cost("simclr", 197, 197) == pytest.approx(6.0)
    assert cost.vit_sample_cost("dino", 197, 197, K=6, L_q_small=37) == pytest.approx(4 + 18 * 37 / 197)
    with pytest.raises(ValueError, match="byol"):
        cost.vit_sample_cost("byol", 197, 197)


# ---- CA-MSE (Eq. 8-10)

def test_ca_mse_estimator_recovers_known_bias_and_variance():
    gen = torch.Generator().manual_seed(0)
    dim, n_sub, k = 50, 400, 8
    G_true = torch.randn(dim, generator=gen, dtype=torch.float64)
    bias = 0.3 * torch.randn(dim, generator=gen, dtype=torch.float64)
    sigma = 0.5                                      # per-sample noise std per coordinate: Var = dim sigma^2

    def moments(b):
        m = ca_mse.GradientMoments(k)
        for _ in range(n_sub):
            samples = G_true + b + sigma * torch.randn(k, dim, generator=gen, dtype=torch.float64)
            m.add(samples.mean(0))
        return m

    base, comp = moments(torch.zeros(dim)), moments(bias)
    G = base.mean
    prof = ca_mse.error_profile(base, comp, cost=2.0, budget=8.0)
    norm = float(G.dot(G))
    assert prof["bias2"] * norm == pytest.approx(float(bias.dot(bias)), rel=0.1)
    assert prof["var"] * norm == pytest.approx(dim * sigma ** 2, rel=0.1)
    assert prof["ca_mse"] == pytest.approx(prof["bias2"] + 2.0 / 8.0 * prof["var"])
    assert comp.sum.numel() == dim and isinstance(comp.sq, float)       # O(params) state


def test_unbiased_squared_bias_converges_where_the_plug_in_estimate_does_not_and_picks_the_right_strategy():
    """A synthetic problem with known parts: per sub-batch, the full gradient is G + noise and a
    compressed one is G + offset + its own noise (same sub-batches, independent compression noise).
    Over repetitions the unbiased estimate averages to ||offset||^2 and its standard error matches
    its spread; the plug-in one sits above by the noise of the mean difference (2 sigma^2 dim / (K n)
    here). With 8 sub-batches, the schedule built on the plug-in estimate keeps the full sequence,
    while the true CA-MSE (and, on average, the unbiased one) favours the cheaper strategy."""
    gen = torch.Generator().manual_seed(0)
    dim, n_sub, k, sigma = 200, 8, 4, 1.0
    G_true = torch.randn(dim, generator=gen, dtype=torch.float64) * 2
    offset = torch.full((dim,), 0.05, dtype=torch.float64)          # ||offset||^2 = 0.5
    cost_full, cost_half, budget = 1.0, 0.5, 64.0                     # a training batch of 64 full-cost images
    unbiased, plugin, ses, picks_plugin, picks_unbiased = [], [], [], [], []
    for _ in range(300):
        base, comp = ca_mse.GradientMoments(k), ca_mse.GradientMoments(k)
        for _ in range(n_sub):
            base.add(G_true + sigma * torch.randn(dim, generator=gen, dtype=torch.float64) / math.sqrt(k))
            comp.add(G_true + offset + sigma * torch.randn(dim, generator=gen, dtype=torch.float64) / math.sqrt(k))
        full, half = ca_mse.error_profile(base, base, cost_full, budget), ca_mse.error_profile(base, comp, cost_half, budget)
        norm = full["grad_norm2"]
        unbiased.append(half["bias2"] * norm)
        plugin.append(half["bias2_plugin"] * norm)
        ses.append(half["bias2_se"] * norm)
        picks_plugin.append(half["bias2_plugin"] + half["ca_var"] < full["ca_mse"])
        picks_unbiased.append(half["ca_mse"] < full["ca_mse"])
    truth, noise = float(offset.dot(offset)), 2 * sigma ** 2 * dim / (k * n_sub)
    unbiased, plugin = torch.tensor(unbiased), torch.tensor(plugin)
    sem = unbiased.std() / math.sqrt(len(unbiased))
    assert abs(unbiased.mean() - truth) < 4 * sem                               # unbiased
    assert abs(plugin.mean() - (truth + noise)) < 4 * plugin.std() / math.sqrt(len(plugin))   # biased by the noise
    assert 0.5 < torch.tensor(ses).mean() / unbiased.std() < 2.0                # the SE is the right size
    # true CA-MSE: full = dim sigma^2 / 64 = 3.1; half = 0.5 + dim sigma^2 / 128 = 2.1 -> half wins; the
    # plug-in adds 2 dim sigma^2 / 32 = 12.5 to half
    assert truth + cost_half / budget * dim * sigma ** 2 < cost_full / budget * dim * sigma ** 2
    assert sum(picks_plugin) < 0.2 * len(picks_plugin) and sum(picks_unbiased) > 0.5 * len(picks_unbiased)


def test_strategy_moments_on_a_tiny_vit_method():
    cfg = _to_config(selfsup.method_defaults())
    cfg.name = "simclr"
    cfg.simclr.update(SMALL["simclr"])
    torch.manual_seed(0)
    method = selfsup.build_method(cfg, ViT("vit_t16", patch_size=8))
    data = [([torch.randn(4, 3, 16, 16), torch.randn(4, 3, 16, 16)], None) for _ in range(2)]
    full = ca_mse.strategy_moments(method, lambda: iter(data), (0.0, 8, 0.0, 8), 4)
    again = ca_mse.strategy_moments(method, lambda: iter(data), (0.0, 8, 0.0, 8), 4)
    half = ca_mse.strategy_moments(method, lambda: iter(data), (0.5, 8, 0.5, 8), 4)
    assert torch.equal(full.sum, again.sum)                              # same data, buffers restored
    prof = ca_mse.error_profile(full, half, 1.0, 1.0)
    assert prof["bias2_plugin"] > 0 and math.isfinite(prof["ca_mse"]) and math.isnan(prof["bias2_se"])   # 2 folds
    assert ca_mse.error_profile(full, full, 1.0, 1.0)["bias2"] == 0.0
    grid = [[{"ca_mse": 3.0}, {"ca_mse": 1.0}], [{"ca_mse": 2.0}, {"ca_mse": 5.0}]]
    assert ca_mse.best_strategy(grid, [0.0, 0.5], [8, 16]) == (0.5, 8)


# ---- schedules and budgets

def test_schedule_file_round_trip_and_per_step_arrays(tmp_path):
    path = str(tmp_path / "s.yaml")
    entries = ca_mse.schedule_from_profiles([0.0, 0.5, 1.0], [(0.75, 16), (0.5, 8), (0.0, 8)])
    assert [s for s, _ in entries] == [0.0, 0.25, 0.75]
    compression.save_schedule(path, entries, "a test\nschedule")
    assert open(path).readline() == "# a test\n"
    assert compression.load_schedule(path) == entries
    comp = _to_config({"drop_ratio": 0.0, "patch_size": 0, "key_drop_ratio": 0.0, "key_patch_size": 0,
                       "schedule": path})
    st = compression.stages(comp, 8)
    assert st == [(0.0, (0.75, 16, 0.0, 16)), (0.25, (0.5, 8, 0.0, 8)), (0.75, (0.0, 8, 0.0, 8))]
    d_q, p_q, d_k, p_k = compression.per_step(st, np.arange(8) / 8)
    assert d_q.tolist() == [0.75, 0.75, 0.5, 0.5, 0.5, 0.5, 0.0, 0.0] and p_q.tolist()[:3] == [16, 16, 8]
    # budget: 10 units at 1 unit / step while d = .75 ... the walk stops at the step reaching the budget
    prog = run_length.budget_progress([(start, {0.75: 1.0, 0.5: 2.0, 0.0: 4.0}[s[0]]) for start, s in st], 10.0)
    assert prog.tolist() == [0.0, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9]          # 3 cheap, 2 medium, 2 full steps
    with open(path, "w") as f:
        f.write("schedule:\n  - {start: 0.0, drop_ratio: 1.5}\n")
    with pytest.raises(ConfigError, match="drop_ratio"):
        compression.stages(comp, 8)


def test_budget_run_with_a_schedule_stops_when_the_budget_is_spent(tmp_path):
    sched = str(tmp_path / "sched.yaml")
    compression.save_schedule(sched, [(0.0, {"drop_ratio": 0.5, "patch_size": 16}),
                                      (0.5, {"drop_ratio": 0.0, "patch_size": 8})], illustrative=True)
    out = str(tmp_path / "budget")
    # 16 images x 2 views, MoCo v3: (3 L_q + L_k) / 197 each; full step (L = 17): 16 x 2 x 68 / 197 = 11.05
    p = run(["train_ssl.py"] + TINY + small_overrides("mocov3") + VIT_TINY + [
        f"output_dir={out}", "train.budget=60", f"accel.compression.schedule={sched}",
        "optim.schedule=poly", "optim.warmup_fraction=0.25", "train.snapshot_fractions=[0,0.5,1.0]"])
    # a placeholder schedule says so: a warning line in the log, a key in config.yaml
    assert any(line.startswith("WARNING:") and "ILLUSTRATIVE" in line for line in p.stdout.splitlines())
    assert "illustrative: true" in open(os.path.join(out, "config.yaml")).read()
    rows = [r for r in read_metrics(out) if "loss" in r]
    units = [r["budget_units"] for r in rows]
    # patch 16: 4 tokens, half dropped: L_q = 1 + 2; the key follows the query's patch: L_k = 1 + 4
    cheap, full = 16 * 2 * (3 * 3 + 5) / 197, 16 * 2 * (4 * 17) / 197
    assert units[-1] >= 60 and units[-2] < 60
    assert [r["patch_size"] for r in rows[:2]] == [16, 16] and rows[-1]["patch_size"] == 8
    assert units[0] == pytest.approx(cheap) and units[-1] - units[-2] == pytest.approx(full)
    assert rows[-1]["key_patch_size"] == 8 and rows[0]["key_drop_ratio"] == 0.0
    lrs = [r["lr"] for r in rows]
    top = int(np.argmax(lrs))                                            # warm-up: the first quarter of budget
    assert lrs[0] == 0.0 and lrs[:top + 1] == sorted(lrs[:top + 1]) and lrs[top:] == sorted(lrs[top:], reverse=True)
    assert 0.15 * 60 < units[top - 1] < 0.35 * 60
    # --plan says where that warm-up ends (the budget's fraction, not the step count) and that the
    # schedule is a placeholder
    from common import schedules
    from common.config import load_config
    from selfsup.config import ssl_defaults
    pcfg = load_config(ssl_defaults(), None, TINY + small_overrides("mocov3") + VIT_TINY + [
        "train.budget=60", f"accel.compression.schedule={sched}", "optim.schedule=poly", "optim.warmup_fraction=0.25"])
    planned = selfsup.plan.plan(pcfg, None, baseline=False, count_flops=False)
    assert abs(planned["warmup_steps"] - top) <= 1 and "placeholder" in planned["illustrative_schedule"]
    assert schedules.warmup_steps_of(pcfg.optim, planned["steps"], 4) != planned["warmup_steps"]   # the old column
    summary = read_metrics(out)[-1]
    assert summary["budget_units"] == pytest.approx(units[-1]) and "knn_top1" in summary
    # snapshots at fractions of the budget: before the first step, the first step past half, the end
    from common import checkpoint
    from common.config import load_config
    from grad_error import fraction_of
    from selfsup.config import ssl_defaults
    snaps = {f: checkpoint.load(os.path.join(out, f"ckpt_p{f:03d}.pt")) for f in (0, 50, 100)}
    assert snaps[0]["step"] == 0 and snaps[100]["step"] == len(rows)
    half = snaps[50]["step"]
    assert units[half - 1] >= 30 > (units[half - 2] if half > 1 else 0)
    cfg = load_config(ssl_defaults(), None, TINY + small_overrides("mocov3") + VIT_TINY + ["train.budget=60"])
    assert [fraction_of(snaps[f], cfg, 4) for f in (0, 50)] == [0.0, pytest.approx(units[half - 1] / 60)]
    # grad_error.py on the finished run: the grids, and a schedule that train_ssl.py can read
    ge = run(["grad_error.py", "--checkpoint", os.path.join(out, "checkpoint.pt"), "--patch-sizes", "8,16",
              "--drop-ratios", "0,0.5", "--samples", "16", "--sub-batch", "8", "--out", out,
              "--schedule-out", str(tmp_path / "best.yaml")])
    assert "checkpoint at 100% of training" in ge.stdout                # budget spent: the end of training
    assert compression.load_schedule(str(tmp_path / "best.yaml"))
    assert any(f.startswith("grad_error_") and f.endswith(".png") for f in os.listdir(out))


def _compression(overrides):
    from common.config import load_config
    from models import build_backbone
    from selfsup.config import ssl_defaults
    cfg = load_config(ssl_defaults(), None, TINY + overrides)
    comp = compression.CompressionSchedule(cfg, selfsup.build_method(cfg.method, build_backbone(cfg.model)), 16)
    return comp.follow(comp.run_length(4))   # 4 steps per epoch


def test_compression_config_errors():
    with pytest.raises(ConfigError, match="need a ViT backbone"):
        _compression(["accel.compression.drop_ratio=0.5"])
    with pytest.raises(ConfigError, match="no momentum target"):
        _compression(small_overrides("simclr") + VIT_TINY + ["accel.compression.key_drop_ratio=0.5"])
    with pytest.raises(ConfigError, match="patch_size=12 does not divide"):
        _compression(small_overrides("simclr") + VIT_TINY + ["accel.compression.patch_size=12"])
    comp = _compression(small_overrides("simclr") + VIT_TINY)
    assert not comp.active and comp.key(0) == () and comp.length.total_steps == 8   # TINY: 2 epochs x 4 steps
    assert comp.vit and not comp.has_target and comp.compression(0, None) is None


def test_compression_schedule_gives_the_query_and_key_setting_of_each_step():
    gen = torch.Generator()
    comp = _compression(small_overrides("mocov3") + VIT_TINY + ["accel.compression.drop_ratio=0.5",
                                                         "accel.compression.patch_size=16"])
    assert comp.vit and comp.has_target and comp.active
    assert comp.compression(3, gen) == token_dropout.QueryKey(token_dropout.SeqCompression(0.5, 16, gen),
                                                              token_dropout.SeqCompression(0.0, 16, gen))
    resnet = _compression(small_overrides("byol"))
    assert not resnet.vit and resnet.has_target and resnet.compression(0, gen) is None
    assert not hasattr(compression, "stage_index")


# ---- illustrative schedules say so

def test_illustrative_marker_is_read_reported_and_checked(tmp_path):
    path = str(tmp_path / "s.yaml")
    entries = [(0.0, {"drop_ratio": 0.5, "patch_size": 16}), (0.5, {"drop_ratio": 0.0, "patch_size": 8})]
    compression.save_schedule(path, entries, "placeholder", illustrative=True)
    assert compression.read_schedule(path) == (entries, True) and compression.load_schedule(path) == entries
    comp = _compression(small_overrides("mocov3") + VIT_TINY + [f"accel.compression.schedule={path}"])
    assert comp.illustrative and any("ILLUSTRATIVE" in w and path in w for w in comp.warnings())
    compression.save_schedule(path, entries)
    comp = _compression(small_overrides("mocov3") + VIT_TINY + [f"accel.compression.schedule={path}"])
    assert not comp.illustrative and comp.warnings() == []
    with open(path, "a") as f:
        f.write("illustrativ: true\n")
    with pytest.raises(ConfigError, match="unknown top-level key"):
        compression.load_schedule(path)
    # the committed placeholder is marked; the measured CPU schedule is not
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    assert compression.read_schedule(os.path.join(root, "yaml/vit/schedules/illustrative_240px.yaml"))[1]
    assert not compression.read_schedule(os.path.join(root, "yaml/vit/schedules/cifar10_vit_tiny_cpu_camse.yaml"))[1]


# ---- MoCo v3 non-symmetric (NeurIPS'24 sec. 6.1) and its Table 1 cost

def test_plan_units_of_nonsymmetric_mocov3_are_table1_and_symmetric_twice():
    over = small_overrides("mocov3") + ["model.arch=vit_t16", "model.patch_size=16", "data.crop_size=240"]
    asym = _compression(over + ["method.mocov3.symmetric=false"])
    sym = _compression(over)
    for q, row in TABLE1.items():
        for d, expected in zip([0.0, 0.25, 0.5, 0.75, 0.9], row):
            st = (d, q, 0.0, 16)                                          # key full (asymmetric dropout)
            assert abs(asym.image_cost(240, st) - expected) < 0.03, (q, d)
            assert sym.image_cost(240, st) == pytest.approx(2 * asym.image_cost(240, st))
    assert asym.units(0, 240, 10, 2, 0) == pytest.approx(10 * 4.59, abs=0.3)   # uncompressed: 10 x Table 1's 4.59
    # Table 2b (symmetric patch scaling, key = query patch) and SimCLR (two back-propagated views)
    assert asym.image_cost(240, (0.0, 30, 0.0, 30)) == pytest.approx(1.31, abs=0.01)
    simclr = _compression(small_overrides("simclr") + ["model.arch=vit_t16", "model.patch_size=16", "data.crop_size=224"])
    assert simclr.image_cost(224, (0.0, 16, 0.0, 16)) == pytest.approx(6.0)


def test_nonsymmetric_mocov3_runs_one_query_and_one_key_pass():
    torch.manual_seed(0)
    views = [torch.randn(4, 3, 16, 16), torch.randn(4, 3, 16, 16)]
    losses = {}
    for sym in (True, False):
        torch.manual_seed(1)
        method = small_method("mocov3", ViT("vit_t16", patch_size=8), symmetric=sym)
        calls = []
        method.backbone.register_forward_hook(lambda m, i, o: calls.append("query"))
        method.target.nets[0].register_forward_hook(lambda m, i, o: calls.append("key"))
        losses[sym] = method(views)["loss"]
        assert calls.count("query") == calls.count("key") == (2 if sym else 1)
        if sym:
            q = [method.predictor(method.projector(method.backbone(v))) for v in views]
            k = [method.target(v, None) for v in views]
            from_hand = mocov3.contrastive(q[0], k[1], method.temperature) + mocov3.contrastive(q[1], k[0], method.temperature)
        else:   # the query view of each image as drawn for this step
            swap = method.roles(4, torch.device("cpu")).flatten().tolist()
            qv = torch.stack([views[1][i] if s else views[0][i] for i, s in enumerate(swap)])
            kv = torch.stack([views[0][i] if s else views[1][i] for i, s in enumerate(swap)])
            from_hand = mocov3.contrastive(method.predictor(method.projector(method.backbone(qv))),
                                           method.target(kv, None), method.temperature)
        assert torch.allclose(losses[sym], from_hand.mean(), atol=1e-5)
        assert method.encoded_views(2) == ((2, 2) if sym else (1, 1))
    losses[False].backward()                                              # trains
    assert not torch.allclose(losses[True], losses[False])


def test_nonsymmetric_mocov3_draws_the_query_view_per_image():
    """NeurIPS'24's equivalence of the one-pair loss to the symmetric one at twice the batch needs
    either view as the query: drawn per image and step (seeded by train.seed), each about half
    the time, the same draw for a 2-rank slice of the global batch."""
    method = small_method("mocov3", ViT("vit_t16", patch_size=8), symmetric=False)
    draws = []
    for step in range(200):
        method.begin_step(step)
        draws.append(method.roles(64, torch.device("cpu")).flatten())
    draws = torch.stack(draws).float()
    # 12,800 fair coins: the mean is within 4 standard deviations (0.0177) of 1/2
    assert abs(draws.mean().item() - 0.5) < 4 * 0.5 / math.sqrt(draws.numel())
    assert draws.mean(0).min() > 0.3 and draws.mean(0).max() < 0.7        # every image position both ways
    assert not torch.equal(draws[0], draws[1])                              # redrawn each step
    method.seed = 1
    method.begin_step(0)
    assert not torch.equal(method.roles(64, torch.device("cpu")).flatten().float(), draws[0])   # the seed matters


# ---- online CA-MSE (not in the paper)

def test_replan_progress_arithmetic():
    before = np.array([0.0, 0.1, 0.2, 0.3, 0.4])
    # 3 of 10 units spent before step 3, steps now cost 2: ceil(7 / 2) = 4 steps, the last reaches 10
    assert run_length.replan_progress(before, 3, 3.0, 10.0, 2.0).tolist() == pytest.approx([0, .1, .2, .3, .5, .7, .9])
    # exactly divisible: 6 units left at 2 -> 3 steps
    assert run_length.replan_progress(before, 2, 4.0, 10.0, 2.0).tolist() == pytest.approx([0, .1, .4, .6, .8])
    # a step costing more than what is left still runs once
    assert len(run_length.replan_progress(before, 1, 9.5, 10.0, 4.0)) == 2


def test_online_reestimate_switches_replans_and_resumes(capsys):
    over = small_overrides("mocov3") + VIT_TINY + [
        "train.budget=100", "accel.compression.online=true", "accel.compression.online_every=3",
        "accel.compression.drop_ratio=0.5", "accel.compression.online_drop_ratios=[0.75]",
        "accel.compression.online_patch_sizes=[8,16]", "accel.compression.online_sub_batch=4"]
    comp = _compression(over)
    full_step, half_step = comp.step_units((0.0, 8, 0.0, 8)), comp.step_units((0.5, 8, 0.0, 8))
    assert comp.length.total_steps == math.ceil(100 / half_step) and comp.due(0) and comp.due(3) and not comp.due(1)
    torch.manual_seed(0)
    method = selfsup.build_method(comp.cfg.method, ViT("vit_t16", patch_size=8))
    views = [torch.randn(8, 3, 32, 32), torch.randn(8, 3, 32, 32)]
    spent = float(comp.length.progress[3]) * 100
    out = online_camse.reestimate(method, comp, views, None, 3, seed=0)
    assert out["switched"] and out["stage"] in [(0.75, 8, 0.0, 8), (0.75, 16, 0.0, 16)]
    assert "online CA-MSE at step 3" in capsys.readouterr().out
    c, extra = comp.step_units(out["stage"]), out["units"]
    # the estimate's passes: the uncompressed gradient and the two candidates, on 8 images ...
    assert extra == pytest.approx(8 * sum(comp.image_cost(32, st) for st in
                                          [(0.0, 8, 0.0, 8), (0.75, 8, 0.0, 8), (0.75, 16, 0.0, 16)]))
    # ... charged to the budget: the run length re-made from what is left after them
    assert comp.length.total_steps == 3 + math.ceil((100 - spent - extra) / c - 1e-9) == 3 + out["remaining_steps"]
    assert comp.stage(2) == (0.5, 8, 0.0, 8) and comp.stage(3) == comp.stage(comp.length.total_steps - 1) == out["stage"]
    assert comp.length.progress[3] == pytest.approx((spent + extra) / 100) and comp.length.progress[4] == pytest.approx((spent + extra + c) / 100)
    assert full_step > half_step
    again = _compression(over)                                                   # resume: the switch is replayed
    again.load_state_dict(comp.state_dict())
    assert again.length.total_steps == comp.length.total_steps and np.allclose(again.length.progress, comp.length.progress)
    assert [again.stage(t) for t in range(again.length.total_steps)] == [comp.stage(t) for t in range(comp.length.total_steps)]
    with pytest.raises(ConfigError, match="needs train.budget"):
        _compression(small_overrides("mocov3") + VIT_TINY + ["accel.compression.online=true"])


def test_online_budget_run_ends_at_its_remade_length_and_resumes_exactly(tmp_path):
    """train_ssl.py with online CA-MSE: each estimate may re-make the run length mid-run; the run
    saves and ends at the last step of the re-made length, and a run stopped after a switch and
    resumed replays the switches and ends with the uninterrupted run's weights."""
    from common import checkpoint
    args = TINY + small_overrides("mocov3") + VIT_TINY + [
        "train.budget=60", "accel.compression.online=true", "accel.compression.online_every=2",
        "accel.compression.drop_ratio=0.5", "accel.compression.online_drop_ratios=[0.0,0.75]",
        "accel.compression.online_patch_sizes=[8]", "accel.compression.online_sub_batch=8"]
    full, cut = str(tmp_path / "full"), str(tmp_path / "cut")
    p = run(["train_ssl.py"] + args + [f"output_dir={full}"])
    assert "online CA-MSE at step 0" in p.stdout and "online CA-MSE at step 2" in p.stdout
    rows = [r for r in read_metrics(full) if "loss" in r]
    a = checkpoint.load(os.path.join(full, "checkpoint.pt"))
    assert a["compression"]["switches"] and a["step"] == rows[-1]["step"] == len(rows)
    assert rows[-1]["budget_units"] >= 60 > rows[-2]["budget_units"]      # the last step reaches the budget
    run(["train_ssl.py"] + args + [f"output_dir={cut}", "train.stop_at_step=3"])
    second = run(["train_ssl.py"] + args + [f"output_dir={cut}"])
    assert "resuming from" in second.stdout
    b = checkpoint.load(os.path.join(cut, "checkpoint.pt"))
    assert b["step"] == a["step"] and b["compression"] == a["compression"]
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k


def test_online_estimate_on_two_ranks_is_the_one_rank_estimate_in_float64(tmp_path):
    """Global sub-batches: each rank computes its share and the gradients are averaged before the
    moments, so 2 ranks give the 1-rank profiles (float64, global BN), pick the same winner and
    re-make the same run length, with the estimate charged once for the global batch."""
    from conftest import REPO
    one, two = str(tmp_path / "one.pt"), str(tmp_path / "two.pt")
    run(["tests/online_camse_worker.py", REPO, one])
    run(["tests/online_camse_worker.py", REPO, two], nproc=2)
    a, b = torch.load(one, weights_only=True), torch.load(two, weights_only=True)
    for pa, pb in zip(a["profiles"], b["profiles"]):
        for k in ("bias2", "var", "ca_mse", "grad_norm2"):
            assert pa[k] == pytest.approx(pb[k], rel=1e-9, abs=1e-12), k
    assert a["profiles"][1]["bias2_plugin"] > 0 and a["profiles"][0]["bias2"] == 0.0
    assert a["stage"] == b["stage"] and a["units"] == pytest.approx(b["units"])
    assert torch.allclose(a["progress"], b["progress"])


def test_dino_teacher_temperature_warms_up_over_a_share_of_the_budget():
    """In a budget run cheap compressed steps come first, so DINO's teacher-temperature warm-up
    (counted in epochs) must end where that share of the budget is spent, as the lr's does."""
    method = small_method("dino", ViT("vit_t16", patch_size=8), warmup_teacher_temp=0.04, teacher_temp=0.07,
                          warmup_teacher_temp_epochs=2)
    n, spe = 40, 5                                                    # warm-up: 10 of 40 uniform steps
    method.prepare(n, spe)
    raw = np.asarray(method.teacher_temp).copy()
    assert np.argmax(raw >= 0.07 - 1e-9) == 10
    progress = np.concatenate([np.linspace(0, 0.25, 20, endpoint=False), np.linspace(0.25, 1, 20, endpoint=False)])
    method.follow_budget(lambda a: run_length.at_progress(a, progress))   # 20 cheap steps spend the first quarter
    assert np.argmax(np.asarray(method.teacher_temp) >= 0.07 - 1e-9) == 20
    method.prepare(n, spe)
    method.follow_budget(lambda a: a)                                 # no budget: unchanged
    assert np.array_equal(method.teacher_temp, raw)
