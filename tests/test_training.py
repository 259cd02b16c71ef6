"""End-to-end behaviour of train_ssl.py and linear_eval.py on tiny runs."""
import json
import math
import os

import pytest
import torch

from common import checkpoint
from conftest import STOPPED, TINY, read_metrics, run
from test_methods import small_overrides


def _weights(run_dir):
    return checkpoint.load(os.path.join(run_dir, "checkpoint.pt"))


def test_tiny_run_writes_metrics_config_and_checkpoint(tiny_run):
    m = read_metrics(tiny_run)
    knn = [r for r in m if "knn_top1" in r]
    assert knn[0]["step"] == 0 and knn[-1]["step"] == 8          # start and end of 2 x 4 steps
    train = [r for r in m if "loss" in r]
    assert [r["step"] for r in train] == list(range(1, 9))
    for key in ("epoch", "lr", "images_per_s", "train_pflops"):
        assert key in train[0]
    pflops = [r["train_pflops"] for r in train]
    assert pflops[0] > 0 and all(b > a for a, b in zip(pflops, pflops[1:]))   # cumulative
    state = _weights(tiny_run)
    assert state["step"] == 8 and state["config"]["model"]["width"] == 8 and state["git_commit"]
    assert os.path.isfile(os.path.join(tiny_run, "config.yaml"))
    assert not [f for f in os.listdir(tiny_run) if ".tmp" in f]      # atomic writes left nothing behind
    # the backbone loads into the torchvision-named network under its own keys
    assert all(not k.startswith("fc.") for k in state["backbone"]) and "layer4.1.bn2.running_var" in state["backbone"]


def test_resume_after_interruption_equals_uninterrupted_run(tiny_run, tmp_path):
    out = str(tmp_path / "resumed")
    cmd = ["train_ssl.py"] + TINY + [f"output_dir={out}", "train.stop_at_step=6", "data.workers=1"]
    first = run(cmd)            # stops inside epoch 2 (steps 5..8), as a pre-emption would
    assert "stopped at step 6" in first.stderr and _weights(out)["step"] == 6
    second = run(cmd)                         # the same command resumes
    assert "resuming from" in second.stdout
    a, b = _weights(tiny_run), _weights(out)
    assert b["step"] == 8
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    for k, v in a["optimizer"]["state"].items():
        assert torch.equal(v["momentum_buffer"], b["optimizer"]["state"][k]["momentum_buffer"])
    assert b["ledger"]["local"]["train"] == pytest.approx(a["ledger"]["local"]["train"])


@pytest.mark.parametrize("method", ["simclr", "mocov3"])   # every method: the float64 worker test below
def test_two_rank_first_update_equals_single_process(tmp_path, method):
    """Same global batch of 16 on 1 rank and on 2 ranks x 8 (global-batch BN on both), in float64
    (train.float64): SimCLR's negatives are gathered with gradient, MoCo v3's keys without; both
    must give the 1-rank loss and update (and MoCo v3's EMA key encoder the same target) to ~1e-12.
    (In float32 the two differ by rounding noise of up to ~1e-4 relative after one step: the
    global BN's reductions run in another order than torch's fused BN kernel.)"""
    outs = {}
    for n in (1, 2):
        outs[n] = str(tmp_path / f"ranks{n}")
        run(["train_ssl.py"] + TINY + small_overrides(method)
            + [f"output_dir={outs[n]}", "train.stop_at_step=1", "train.sync_bn=true", "train.float64=true"], nproc=n)
    one, two = _weights(outs[1]), _weights(outs[2])
    assert one["world_size"] == 1 and two["world_size"] == 2
    for k, v in one["model"].items():
        assert v.dtype != torch.float32, k                                     # the run was float64
        assert torch.allclose(v, two["model"][k], atol=1e-12, rtol=1e-10), (k, (v - two["model"][k]).abs().max())
    m1 = [r for r in read_metrics(outs[1]) if "loss" in r][0]
    m2 = [r for r in read_metrics(outs[2]) if "loss" in r][0]
    assert m1["loss"] == pytest.approx(m2["loss"], abs=1e-12)
    assert m1["train_pflops"] == pytest.approx(m2["train_pflops"], rel=1e-6)  # ledger sums the ranks
    # kNN with features extracted by 2 ranks (each half of the images) equals the 1-rank value
    k1, k2 = (read_metrics(outs[n])[0]["knn_top1"] for n in (1, 2))
    assert k1 == pytest.approx(k2, abs=1e-6)
    # the update is not trivially zero: the weights moved away from the seeded initialisation
    import selfsup
    from models import build_backbone
    from train_ssl import parse_config
    cfg = parse_config(TINY)
    torch.manual_seed(cfg.train.seed)
    init = selfsup.build_method(cfg.method, build_backbone(cfg.model)).state_dict()
    delta = (one["model"]["backbone.conv1.weight"] - init["backbone.conv1.weight"]).abs().max()
    assert delta > 1e-6


def test_every_method_interloss_and_hard_augment_update_alike_on_two_ranks_in_float64(tmp_path):
    """Three float64 steps of every method, of the intermediate losses (partial back-propagation +
    hard pairs) and of Hard Augment (4 views, extra targets) on 2 gloo ranks give the state (weights,
    BN statistics, queues, centres) and losses of one process on the same global batches."""
    from conftest import REPO
    one, two = str(tmp_path / "one.pt"), str(tmp_path / "two.pt")
    run(["tests/equal_update_worker.py", REPO, one])
    run(["tests/equal_update_worker.py", REPO, two], nproc=2)
    a, b = torch.load(one, weights_only=True), torch.load(two, weights_only=True)
    assert set(a) == set(b) and len(a) == 13
    for case in a:
        sa, sb = a[case]["state"], b[case]["state"]
        assert a[case]["losses"] == pytest.approx(b[case]["losses"], abs=1e-10), case
        moved = [k for k in sa if sa[k].is_floating_point() and not torch.equal(sa[k], a[case]["init"][k])]
        assert len(moved) > len(sa) // 2, case                # the steps changed most of the state
        for k in sa:
            if sa[k].is_floating_point():
                assert torch.allclose(sa[k], sb[k], atol=1e-11, rtol=1e-9), (case, k, (sa[k] - sb[k]).abs().max())
            else:
                assert torch.equal(sa[k], sb[k]), (case, k)


def test_linear_eval_on_a_tiny_checkpoint(tiny_run):
    ckpt = os.path.join(tiny_run, "checkpoint.pt")
    for augment in ("false", "true"):
        run(["linear_eval.py", "--checkpoint", ckpt, "eval.epochs=3", "eval.batch_size=32",
             f"eval.augment={augment}", "eval.feature=final"])
        with open(os.path.join(tiny_run, "linear_eval.json")) as f:
            res = json.load(f)
        assert 0 <= res["top1"] <= res["top5"] <= 100 and 0 <= res["knn_top1"] <= 100
    run(["linear_eval.py", "--checkpoint", ckpt, "eval.epochs=1", "eval.batch_size=32", "eval.augment=false",
         "eval.feature=block2"])


def test_linear_eval_two_ranks_equal_one(tiny_run, tmp_path):
    import shutil
    results = {}
    for n in (1, 2):
        d = tmp_path / f"r{n}"
        d.mkdir()
        shutil.copy(os.path.join(tiny_run, "checkpoint.pt"), d / "checkpoint.pt")
        run(["linear_eval.py", "--checkpoint", str(d / "checkpoint.pt"), "eval.epochs=3", "eval.batch_size=32",
             "eval.augment=false", "eval.optimizer=sgd", "eval.lr=1.0"], nproc=n)
        with open(d / "linear_eval.json") as f:
            results[n] = json.load(f)
    assert results[1]["knn_top1"] == pytest.approx(results[2]["knn_top1"])
    assert results[1]["top1"] == pytest.approx(results[2]["top1"])
    assert results[1]["top5"] == pytest.approx(results[2]["top5"])


def test_linear_eval_detects_a_backbone_that_changed(tiny_run, monkeypatch):
    import linear_eval
    ckpt, state, cfg = linear_eval.parse(["--checkpoint", os.path.join(tiny_run, "checkpoint.pt"),
                                          "eval.epochs=1", "eval.batch_size=32", "eval.augment=true",
                                          "data.workers=0"])
    orig = linear_eval.FrozenFeatures.forward

    def leaky(self, x):  # a bug that runs the backbone in train mode updates BN statistics
        self.backbone.train()
        return orig(self, x)
    monkeypatch.setattr(linear_eval.FrozenFeatures, "forward", leaky)
    with pytest.raises(RuntimeError, match="frozen backbone changed.*running_mean"):
        linear_eval.main(ckpt, state, cfg)


def test_swav_multicrop_with_queue_resumes_exactly(tmp_path):
    """Multi-crop views, SwAV's queue (filled from step 0, used once full) and the frozen-
    prototype phase: an interrupted and resumed run equals an uninterrupted one."""
    args = TINY + small_overrides("swav") + ["data.local_views=2", "data.local_crop_size=16",
                                             "method.swav.queue_length=48", "method.swav.queue_start_epoch=0",
                                             "method.swav.freeze_prototypes_epochs=0.5"]
    full, cut = str(tmp_path / "full"), str(tmp_path / "cut")
    run(["train_ssl.py"] + args + [f"output_dir={full}"])
    run(["train_ssl.py"] + args + [f"output_dir={cut}", "train.stop_at_step=5"])
    assert "resuming from" in run(["train_ssl.py"] + args + [f"output_dir={cut}"]).stdout
    a, b = _weights(full), _weights(cut)
    assert a["model"]["queue_count"].item() == 48
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k


def test_dino_on_a_vit_with_multicrop_adamw_and_schedules(tmp_path):
    """DINO on a ViT (patch 8 on 32 px) with local crops, AdamW, the cosine weight-decay
    schedule and gradient clipping; checkpoints carry the teacher's backbone, which
    linear_eval.py reads back."""
    out = str(tmp_path / "dino_vit")
    run(["train_ssl.py"] + TINY + small_overrides("dino") + [
        f"output_dir={out}", "model.arch=vit_t16", "model.patch_size=8", "data.local_views=2",
        "data.local_crop_size=16", "optim.name=adamw", "optim.lr=5e-4", "optim.weight_decay=0.04",
        "optim.weight_decay_end=0.4", "optim.clip_grad=3.0", "augment.blur_prob=[1.0,0.1]",
        "augment.solarize_prob=[0.0,0.2]", "augment.local_blur_prob=0.5"])
    state = _weights(out)
    teacher = {k[len("teacher.nets.0."):]: v for k, v in state["model"].items() if k.startswith("teacher.nets.0.")}
    assert teacher.keys() == state["backbone"].keys()
    assert all(torch.equal(teacher[k], state["backbone"][k]) for k in teacher)
    assert not torch.equal(state["model"]["backbone.blocks.0.qkv.weight"], teacher["blocks.0.qkv.weight"])
    rows = [r for r in read_metrics(out) if "loss" in r]
    assert len(rows) == 8 and all(math.isfinite(r["loss"]) for r in rows)
    wd = [r["weight_decay"] for r in rows]                     # cosine 0.04 -> 0.4 over 8 steps
    assert wd[0] == pytest.approx(0.04) and wd == sorted(wd) and wd[-1] == pytest.approx(0.4 - 0.36 * (1 + math.cos(math.pi * 7 / 8)) / 2)
    assert rows[0]["ema"] == pytest.approx(0.996) and rows[0]["teacher_temp"] == pytest.approx(0.04)
    run(["linear_eval.py", "--checkpoint", os.path.join(out, "checkpoint.pt"), "eval.epochs=1",
         "eval.batch_size=32", "eval.optimizer=sgd", "data.workers=0"])
    with open(os.path.join(out, "linear_eval.json")) as f:
        assert 0 <= json.load(f)["top1"] <= 100


def test_report_puts_the_paper_row_beside_finished_and_partial_runs(tiny_run, tmp_path):
    """report.py on a finished run and on a copy cut short (a run still going): both rows appear
    with the paper's figure, ours, the scale and the status; CSV and PNGs are written."""
    import csv
    import shutil
    import report
    partial = tmp_path / "partial"
    shutil.copytree(tiny_run, partial)
    rows = open(partial / "metrics.jsonl").read().splitlines()
    (partial / "metrics.jsonl").write_text("\n".join(rows[:4]) + "\n")   # kNN at start + 3 steps
    out = tmp_path / "report"
    out.mkdir()
    recs = [r for r in report.report([tiny_run, str(partial)], str(out)) if r["run_dir"]]
    by_status = {r["status"]: r for r in recs}
    assert set(by_status) == {"finished", "partial"} and len(recs) == 2
    fin, part = by_status["finished"], by_status["partial"]
    assert fin["ours"] == read_metrics(tiny_run)[-1]["knn_top1"] and fin["epochs_done"] == 2
    assert part["epochs_done"] == 0.75 and "synthetic" in part["scale"] and "width 8" in part["scale"]
    assert sum(1 for r in csv.DictReader(open(out / "report.csv")) if r["run_dir"]) == 2
    assert (out / "report.md").read_text().count("| quickstart on the synthetic dataset |") == 2
    assert any(f.endswith("_knn_over_epochs.png") for f in os.listdir(out))
