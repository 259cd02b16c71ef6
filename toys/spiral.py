"""The spiral study of thesis ch. 2, sec. 2.3.3: BN versus UBN on a 2-class spiral with 25
labeled and 200 unlabeled points per class, a 5-layer fully connected network with BN.

    python train_depth_ubn.py --toy spiral                 # seeds 0-4, runs/ubn_spiral/
    python train_depth_ubn.py --toy spiral --seeds 0 1 --steps 500

Per seed and method (bn: BN on the labeled batch; ubn: models/ubn.py with step 1's statistics as
constants; ubn_grad: the same with gradient through the labeled share of the statistics) it
reports the test accuracy on 2 x 2000 fresh spiral points (eval mode, running statistics) and
draws the decision boundary (Fig. 2.2: labeled points filled, unlabeled hollow). For seed 0 it
computes Table 2.1 (labeled versus unlabeled features after each BN layer, per channel, then
averaged over channels) and the uncertainty map of Fig. 2.4 (std over `--mc` predictions of
p(class 1), each with BN statistics of a different random batch of training points, Teye et al.
2018). Results: OUT/results.json and the PNGs.

Table 2.1's columns as computed here (the thesis does not define them further):
  pearson          correlation of the two channels' histograms (20 common bins): 1 = same shape
  kl, reverse_kl   KL(labeled || unlabeled) and KL(unlabeled || labeled) of those histograms
                   (each bin + 1e-3 before normalising, so empty bins stay finite)
  wasserstein      1-D Wasserstein-1 distance between the labeled and unlabeled samples
  unsup_wasserstein  the same between a random 50-point subset of the unlabeled samples and the
                   other 350 (the control: what sampling 50 points alone costs)
  ks_reject        fraction of channels where a two-sample Kolmogorov-Smirnov test rejects
                   equality at the 5 % level
"""
import argparse
import json
import math
import os

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image, ImageDraw

from models import ubn

METHODS = ("bn", "ubn", "ubn_grad")
EXTENT = 7.0   # the pictures and the uncertainty map cover [-EXTENT, EXTENT]^2


def make_spiral(n_per_class, rng, noise=0.25, turns=1.75):
    """Two interleaved arms (as TensorFlow Playground's spiral): class k at radius 5t and angle
    2 pi turns t + k pi, t ~ U(0, 1), plus Gaussian noise. -> (points [2n, 2], labels [2n])."""
    xs, ts = [], []
    for k in (0, 1):
        t = rng.uniform(0, 1, n_per_class)
        a = 2 * math.pi * turns * t + k * math.pi
        p = np.stack([5 * t * np.sin(a), 5 * t * np.cos(a)], 1) + rng.normal(0, noise, (n_per_class, 2))
        xs.append(p)
        ts.append(np.full(n_per_class, k))
    return np.concatenate(xs).astype(np.float32), np.concatenate(ts).astype(np.int64)


def mlp(width=64, depth=5):
    """`depth` linear layers, the first depth-1 followed by BN and ReLU (4 BN layers: Table 2.1's rows)."""
    layers, cin = [], 2
    for _ in range(depth - 1):
        layers += [nn.Linear(cin, width), nn.BatchNorm1d(width), nn.ReLU()]
        cin = width
    return nn.Sequential(*layers, nn.Linear(cin, 2))


def train(method, xl, tl, xu, steps, lr, seed):
    torch.manual_seed(seed)
    model = mlp()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(steps):
        if method == "bn":
            out = model(xl)
        else:
            out = ubn.forward(model, xl, xu, grad_through_stats=method == "ubn_grad")
        loss = F.cross_entropy(out, tl)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


# ---- distribution distances (numpy only; scipy is not a dependency) ----

def wasserstein_1d(a, b):
    """W1 between two 1-D empirical distributions: the integral of |F_a - F_b|."""
    a, b = np.sort(a), np.sort(b)
    allv = np.sort(np.concatenate([a, b]))
    widths = np.diff(allv)
    fa = np.searchsorted(a, allv[:-1], side="right") / len(a)
    fb = np.searchsorted(b, allv[:-1], side="right") / len(b)
    return float(np.sum(np.abs(fa - fb) * widths))


def ks_2samp(a, b):
    """Two-sided two-sample Kolmogorov-Smirnov: (D, asymptotic p-value)."""
    a, b = np.sort(a), np.sort(b)
    allv = np.concatenate([a, b])
    d = float(np.max(np.abs(np.searchsorted(a, allv, side="right") / len(a)
                            - np.searchsorted(b, allv, side="right") / len(b))))
    x = d * math.sqrt(len(a) * len(b) / (len(a) + len(b)))
    if x < 1e-3:
        return d, 1.0
    k = np.arange(1, 101)
    p = 2 * np.sum((-1.0) ** (k - 1) * np.exp(-2 * k * k * x * x))
    return d, float(min(max(p, 0.0), 1.0))


def _hists(a, b, bins=20):
    lo, hi = min(a.min(), b.min()), max(a.max(), b.max()) + 1e-9
    ha = np.histogram(a, bins, (lo, hi))[0] + 1e-3
    hb = np.histogram(b, bins, (lo, hi))[0] + 1e-3
    return ha / ha.sum(), hb / hb.sum()


def feature_statistics(model, xl, xu, rng):
    """Table 2.1: one row per BN layer, each column averaged over the layer's channels."""
    feats = []
    hooks = [m.register_forward_hook(lambda m, a, o: feats.append(o.detach().numpy()))
             for m in model.modules() if isinstance(m, nn.BatchNorm1d)]
    with torch.no_grad():
        model(xl)
        n_bn = len(feats)
        model(xu)
    for h in hooks:
        h.remove()
    rows = []
    for layer in range(n_bn):
        fl, fu = feats[layer], feats[n_bn + layer]
        ctrl = rng.permutation(len(fu))
        cols = {k: [] for k in ("pearson", "kl", "reverse_kl", "wasserstein", "unsup_wasserstein", "ks_reject")}
        for c in range(fl.shape[1]):
            a, b = fl[:, c], fu[:, c]
            pa, pb = _hists(a, b)
            cols["pearson"].append(np.corrcoef(pa, pb)[0, 1])
            cols["kl"].append(np.sum(pa * np.log(pa / pb)))
            cols["reverse_kl"].append(np.sum(pb * np.log(pb / pa)))
            cols["wasserstein"].append(wasserstein_1d(a, b))
            cols["unsup_wasserstein"].append(wasserstein_1d(b[ctrl[:len(a)]], b[ctrl[len(a):]]))
            cols["ks_reject"].append(float(ks_2samp(a, b)[1] < 0.05))
        rows.append({k: float(np.nanmean(v)) for k, v in cols.items()})
    return rows


# ---- pictures ----

def _grid(n):
    g = np.linspace(-EXTENT, EXTENT, n, dtype=np.float32)
    xx, yy = np.meshgrid(g, -g)          # row 0 at the top: y = +EXTENT
    return torch.from_numpy(np.stack([xx.ravel(), yy.ravel()], 1))


def _canvas(values, colour, size=400):
    """values [n, n] in [0, 1] -> an RGB image, upscaled to size x size."""
    rgb = colour(np.clip(values, 0, 1))
    return Image.fromarray(rgb.astype(np.uint8)).resize((size, size), Image.NEAREST)


def _points(img, x, t, filled, size=400):
    d = ImageDraw.Draw(img)
    for (px, py), k in zip(x, t):
        u, v = (px + EXTENT) / (2 * EXTENT) * size, (EXTENT - py) / (2 * EXTENT) * size
        c = (200, 0, 0) if k else (0, 0, 200)
        r = 4 if filled else 3
        d.ellipse([u - r, v - r, u + r, v + r], fill=c if filled else None, outline=c if not filled else (0, 0, 0))


def _boundary_colour(p):
    """p(class 1): blue (0) - white (0.5) - red (1)."""
    w = 1 - np.abs(2 * p - 1)
    red = np.where(p > 0.5, 1.0, w)
    blue = np.where(p < 0.5, 1.0, w)
    return np.stack([155 + 100 * red, 155 + 100 * w, 155 + 100 * blue], -1)


def _heat_colour(s):
    return np.stack([255 * np.ones_like(s), 255 * (1 - s), 255 * (1 - s) ** 2], -1)


def draw_boundary(path, model, n, xl, tl, xu, tu):
    with torch.no_grad():
        p = F.softmax(model(_grid(n)), 1)[:, 1].numpy().reshape(n, n)
    img = _canvas(p, _boundary_colour)
    _points(img, xu, tu, False)
    _points(img, xl, tl, True)
    img.save(path)


def uncertainty(model, points, pool, draws, batch, rng):
    """Std over `draws` of p(class 1) at `points`, each draw normalising with the BN statistics of
    a random batch of `batch` training points (running statistics untouched)."""
    model.train()
    probs = []
    for _ in range(draws):
        sel = torch.from_numpy(rng.choice(len(pool), batch, replace=False))
        stats = ubn.collect_statistics(model, pool[sel], update_running=False)
        with torch.no_grad(), ubn.normalize_with(model, stats):
            probs.append(F.softmax(model(points), 1)[:, 1])
    model.eval()
    return torch.stack(probs).std(0).numpy()


def main(argv):
    p = argparse.ArgumentParser(prog="train_depth_ubn.py --toy spiral", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--labeled", type=int, default=25, help="labeled points per class (sec. 2.3.3: 25)")
    p.add_argument("--unlabeled", type=int, default=200, help="unlabeled points per class (sec. 2.3.3: 200)")
    p.add_argument("--steps", type=int, default=1000, help="full-batch Adam steps")
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--grid", type=int, default=100, help="resolution of the pictures' grid")
    p.add_argument("--mc", type=int, default=32, help="batch-statistics draws for the uncertainty map")
    p.add_argument("--mc-batch", type=int, default=64)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="runs/ubn_spiral")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    os.makedirs(args.out, exist_ok=True)
    acc = {m: [] for m in METHODS}
    res = {"args": vars(args), "accuracy": acc}
    for seed in args.seeds:
        rng = np.random.default_rng(seed)
        xl, tl = make_spiral(args.labeled, rng)
        xu, tu = make_spiral(args.unlabeled, rng)   # labels of the unlabeled points: pictures only
        xt, tt = make_spiral(2000, rng)
        XL, TL, XU, XT = map(torch.from_numpy, (xl, tl, xu, xt))
        line = [f"seed {seed}:"]
        for m in METHODS:
            model = train(m, XL, TL, XU, args.steps, args.lr, seed)
            with torch.no_grad():
                pred = model(XT).argmax(1).numpy()
            acc[m].append(float(100 * (pred == tt).mean()))
            line.append(f"{m} {acc[m][-1]:.1f}%")
            draw_boundary(os.path.join(args.out, f"boundary_{m}_seed{seed}.png"), model, args.grid, xl, tl, xu, tu)
            if seed == args.seeds[0]:
                res.setdefault("table_2_1", {})[m] = feature_statistics(model, XL, XU, np.random.default_rng(seed))
                pool = torch.cat([XL, XU])
                unc = uncertainty(model, _grid(args.grid), pool, args.mc, args.mc_batch, np.random.default_rng(seed))
                img = _canvas(unc.reshape(args.grid, args.grid) / max(unc.max(), 1e-6), _heat_colour)
                _points(img, xu, tu, False)
                _points(img, xl, tl, True)
                img.save(os.path.join(args.out, f"uncertainty_{m}_seed{seed}.png"))
                unc_t = uncertainty(model, XT, pool, args.mc, args.mc_batch, np.random.default_rng(seed))
                wrong = pred != tt
                res.setdefault("uncertainty", {})[m] = {
                    "mean_std_wrong": float(unc_t[wrong].mean()) if wrong.any() else None,
                    "mean_std_right": float(unc_t[~wrong].mean())}
        print(" ".join(line), flush=True)
    res["mean_accuracy"] = {m: float(np.mean(v)) for m, v in acc.items()}
    print("mean test accuracy: " + ", ".join(f"{m} {v:.1f}%" for m, v in res["mean_accuracy"].items()))
    for m, rows in res.get("table_2_1", {}).items():
        print(f"Table 2.1 ({m}, seed {args.seeds[0]}): layer  pearson  KL  revKL  W1  unsup-W1  KS-reject")
        for i, r in enumerate(rows, 1):
            print(f"  layer {i}  {r['pearson']:.3f}  {r['kl']:.3f}  {r['reverse_kl']:.3f}  {r['wasserstein']:.3f}  "
                  f"{r['unsup_wasserstein']:.3f}  {r['ks_reject']:.2f}")
    for m, u in res.get("uncertainty", {}).items():
        print(f"batch-statistics std of p(class 1) on test points ({m}): wrong {u['mean_std_wrong']}, "
              f"right {u['mean_std_right']:.4f}")
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(res, f, indent=1)
