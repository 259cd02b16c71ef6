import csv
import json
import os

import numpy as np
import pytest

import selfsup
from common.config import _to_config
from common.optim import build_optimizer
from conftest import TINY, run
from lr_finder import base_lr, ema, exponential_lrs, parse_config, range_test, set_lr, suggest
from models.resnet import ResNet


def test_exponential_lrs_and_ema():
    lrs = exponential_lrs(1e-3, 1.0, 200)
    assert lrs[0] == pytest.approx(1e-3) and lrs[-1] == pytest.approx(1.0)
    assert np.allclose(lrs[1:] / lrs[:-1], 1000 ** (1 / 199))   # constant ratio: exponential
    assert np.allclose(ema([2.0, 2.0, 2.0], 0.9), 2.0)              # bias-corrected


def test_range_test_brackets_the_lr_that_trains_a_toy_problem():
    """Noisy least squares, SGD on minibatches of 16: it diverges above lr ~ 2 / lambda_max."""
    rng = np.random.default_rng(0)
    w_true = rng.normal(size=5)
    X, Xv = 3 * rng.normal(size=(4096, 5)), 3 * rng.normal(size=(1024, 5))
    y, yv = X @ w_true + 0.3 * rng.normal(size=4096), Xv @ w_true + 0.3 * rng.normal(size=1024)
    state = {"w": np.zeros(5)}

    def step(lr):
        i = rng.integers(0, 4096, 16)
        r = X[i] @ state["w"] - y[i]
        state["w"] = state["w"] - lr * X[i].T @ r / 16
        return 0.5 * (r ** 2).mean()

    def val():
        return 0.5 * ((Xv @ state["w"] - yv) ** 2).mean()

    rec = range_test(step, val, exponential_lrs(1e-3, 1.0, 200))
    assert len(rec["lr"]) < 200                       # stopped when the loss diverged
    lo, hi = suggest(rec["lr"], rec["val_smooth"])
    assert lo < hi

    def final_loss(lr, steps=300):
        state["w"] = np.zeros(5)
        with np.errstate(all="ignore"):
            for _ in range(steps):
                step(lr)
            return val()
    floor = 0.5 * 0.3 ** 2                             # the noise floor of the validation loss
    assert final_loss(np.sqrt(lo * hi)) < 1.2 * floor  # an lr inside the range trains it
    assert final_loss(hi) < 1.5 * floor                # so does the suggested maximum
    assert not final_loss(1.0) < 10 * floor            # the end of the sweep does not


def test_lr_finder_script_writes_csv_plot_and_suggestion(tmp_path):
    out = str(tmp_path / "lrf")
    p = run(["lr_finder.py"] + TINY + [f"output_dir={out}", "lr_finder.steps=12", "lr_finder.val_samples=32"])
    assert "suggested learning rate range" in p.stdout
    with open(os.path.join(out, "lr_finder.json")) as f:
        res = json.load(f)
    assert 1e-3 <= res["min_lr"] <= res["max_lr"] <= 1.0
    with open(os.path.join(out, "lr_finder.csv")) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == res["steps_run"] and float(rows[0]["lr"]) == pytest.approx(1e-3)
    assert os.path.getsize(os.path.join(out, "lr_finder.png")) > 1000


@pytest.mark.parametrize("fix_pred_lr", [True, False])
def test_fixed_lr_groups_keep_the_base_lr_during_the_sweep(fix_pred_lr):
    """SimSiam's predictor (fix_pred_lr, its lr_mult) is not swept: it keeps optim.lr x batch / 256."""
    cfg = parse_config(["optim.lr=0.05", "train.batch_size=128", "optim.lr_scaling=linear"])
    assert base_lr(cfg) == pytest.approx(0.025)
    assert base_lr(parse_config(["optim.lr=0.05", "train.batch_size=128", "optim.lr_scaling=none"])) == 0.05
    mcfg = _to_config(selfsup.method_defaults())
    mcfg.name = "simsiam"
    mcfg.simsiam.update(proj_dim=16, pred_hidden=8, fix_pred_lr=fix_pred_lr, pred_lr_mult=2.0)
    model = selfsup.build_method(mcfg, ResNet("resnet18", width=4, cifar_stem=True))
    opt = build_optimizer("sgd", model.param_groups(), 1e-3, 0.9, 0.0)
    pred = {id(p) for p in model.predictor.parameters()}
    for lr in exponential_lrs(1e-3, 1.0, 5):
        set_lr(opt, lr, base_lr(cfg))
        for g in opt.param_groups:
            is_pred = all(id(p) in pred for p in g["params"])
            expected = (0.025 if fix_pred_lr else lr) * 2.0 if is_pred else lr
            assert g["lr"] == pytest.approx(expected)
    assert sum(all(id(p) in pred for p in g["params"]) for g in opt.param_groups) == 1
