"""train_supervised.py: Fast Online Minibatch Selection in the loop (thesis ch. 4)."""
import os

import pytest
import torch

import lr_finder
from common import checkpoint
from conftest import STOPPED, TINY, read_metrics, run
from models.resnet import ResNet
from models.classifier import Classifier, build_classifier
from models.vit import ViT

SUP = ["data.synthetic_train_size=128", "data.synthetic_val_size=40", "model.width=8", "train.batch_size=16",
       "train.epochs=2", "data.workers=0", "train.threads=1", "train.amp=none",
       "train.channels_last=false", "train.log_every=1", "select.resolution=16",
       "select.warmup_steps=3", "select.cooldown_fraction=0.25", "select.eval_every_epochs=1.0"]


def test_selection_pass_is_at_r_hat_without_autograd_and_keeps_bn_statistics():
    from train_supervised import selection_losses
    model = Classifier(ResNet("resnet18", width=8, cifar_stem=True), 10)
    seen = []
    model.register_forward_pre_hook(lambda m, a: seen.append((tuple(a[0].shape), torch.is_grad_enabled())))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    losses = selection_losses(model, torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,)), 16)
    assert seen == [((8, 3, 16, 16), False)]
    assert losses.shape == (8,) and not losses.requires_grad
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_warmup_and_cooldown_steps_are_uniform_and_selection_is_charged(tmp_path):
    out = str(tmp_path / "fast")
    run(["train_supervised.py"] + SUP + [f"output_dir={out}", "select.method=fast"])
    rows = [r for r in read_metrics(out) if "loss" in r]
    assert [r["selection_steps"] for r in rows] == [0] * 3 + [1] * 9 + [0] * 4   # 16 steps: 3 warm-up, 4 cool-down
    assert rows[-1]["selection_pflops"] > 0 and 0 < rows[-1]["selection_overhead"] < 1
    evals = [r for r in read_metrics(out) if "top1" in r]
    assert [r["step"] for r in evals] == [8, 16] and all(0 <= r["top1"] <= 100 for r in evals)
    uni = str(tmp_path / "uniform")
    run(["train_supervised.py"] + SUP + [f"output_dir={uni}", "select.method=uniform"])
    assert all(r["selection_steps"] == 0 for r in read_metrics(uni) if "loss" in r)
    assert read_metrics(uni)[-1]["selection_pflops"] == 0


def test_two_rank_selection_run_trains(tmp_path):
    out = str(tmp_path / "ddp")
    for method in ("fast", "selective_backprop", "greedy"):
        run(["train_supervised.py"] + SUP + [f"output_dir={out}_{method}", f"select.method={method}",
                                             "train.sync_bn=true", "train.epochs=1"], nproc=2)
        state = checkpoint.load(os.path.join(f"{out}_{method}", "checkpoint.pt"))
        assert state["step"] == 8 and state["world_size"] == 2   # 3 warm-up, 3 ranked, 2 cool-down steps
        rows = [r for r in read_metrics(f"{out}_{method}") if "loss" in r]
        assert all(torch.isfinite(torch.tensor(r["loss"])) for r in rows)


def test_bad_selection_settings_are_one_line_errors():
    p = run(["train_supervised.py"] + SUP + ["select.method=fast", "select.large_batch_factor=1.5"], check=False)
    assert p.returncode == 2 and "select.large_batch_factor=1.5 must be >= 1 + select.beta" in p.stderr


def test_classifier_backbones_take_any_resolution():
    vit = ViT("vit_t16")
    assert vit(torch.randn(1, 3, 96, 96)).shape == vit(torch.randn(1, 3, 224, 224)).shape == (1, 192)
    from common.config import Config
    cfg = Config(arch="resnet18", width=8, cifar_stem=True, zero_init_residual=False)
    assert build_classifier(cfg, 7)(torch.randn(2, 3, 32, 32)).shape == (2, 7)


def test_interrupted_selection_run_resumes_to_the_same_weights(tmp_path):
    args = SUP + ["select.method=fast", "select.eval_every_epochs=2.0"]
    full, cut = str(tmp_path / "full"), str(tmp_path / "cut")
    run(["train_supervised.py"] + args + [f"output_dir={full}"])
    first = run(["train_supervised.py"] + args + [f"output_dir={cut}", "train.stop_at_step=11"])
    assert "stopped at step 11" in first.stderr          # inside loader epoch 2, after selection started
    run(["train_supervised.py"] + args + [f"output_dir={cut}", "train.stop_at_step=11"])
    a = checkpoint.load(os.path.join(full, "checkpoint.pt"))
    b = checkpoint.load(os.path.join(cut, "checkpoint.pt"))
    assert a["step"] == b["step"] == 16
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k


def test_fine_tuning_starts_from_the_pretrained_backbone(tiny_run, tmp_path):
    """model.pretrained (full fine-tuning, NeurIPS'24 'FT'): the classifier's backbone starts
    from the train_ssl.py checkpoint's backbone; a checkpoint of another architecture is a clear
    error naming the file."""
    import pytest
    from common.config import ConfigError, _to_config
    from models.classifier import load_pretrained_backbone
    from selfsup.config import ssl_defaults
    ckpt = os.path.join(tiny_run, "checkpoint.pt")
    cfg = _to_config(ssl_defaults())
    cfg.model.update(width=8, arch="resnet18")
    model = load_pretrained_backbone(build_classifier(cfg.model, 10), ckpt, cfg.model)
    pretrained = checkpoint.load(ckpt)["backbone"]
    assert all(torch.equal(v, model.backbone.state_dict()[k]) for k, v in pretrained.items())
    cfg.model.width = 16
    with pytest.raises(ConfigError, match="checkpoint.pt holds another backbone: model.width=8 there, 16 here"):
        load_pretrained_backbone(build_classifier(cfg.model, 10), ckpt, cfg.model)
    out = str(tmp_path / "ft")
    run(["train_supervised.py"] + SUP + [f"output_dir={out}", f"model.pretrained={ckpt}", "train.epochs=1"])
    assert [r for r in read_metrics(out) if "top1" in r]


def test_keys_of_other_scripts_are_unknown_here():
    """train_supervised.py's tree is the shared sections plus model.pretrained, select.*, ubn.*:
    the SSL script's keys are one-line errors naming the key."""
    import pytest
    from common.config import ConfigError
    from train_supervised import parse_config
    for key in ("accel.progressive.mode=super", "method.name=dino", "interloss.partial_backprop=true"):
        with pytest.raises(ConfigError, match=f"unknown config key '{key.split('=')[0]}'"):
            parse_config([key])   # (exit code 2 and the one line: tests/test_structure.py)
    assert parse_config(["select.method=greedy", "ubn.enabled=true", "model.pretrained=x.pt"]).select.method == "greedy"


def test_snapshots_amp_and_channels_last(tmp_path):
    """train.snapshot_every_epochs keeps ckpt_XXXX.pt at epoch ends; train.amp=bf16 (autocast on
    the CPU) and train.channels_last train; fp16 needs CUDA."""
    out = str(tmp_path / "bf16")
    run(["train_supervised.py"] + SUP + [f"output_dir={out}", "select.method=fast", "train.snapshot_every_epochs=1",
                                         "train.amp=bf16", "train.channels_last=true"])
    for epoch, step in ((1, 8), (2, 16)):
        assert checkpoint.load(os.path.join(out, f"ckpt_{epoch:04d}.pt"))["step"] == step
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in read_metrics(out) if "loss" in r)
    if not torch.cuda.is_available():
        p = run(["train_supervised.py"] + SUP + ["train.amp=fp16", "train.device=cpu"], check=False)
        assert p.returncode == 2 and "train.amp=fp16 needs CUDA" in p.stderr


def test_sigterm_saves_and_exits_for_a_resume(tmp_path):
    """SIGTERM (pre-emption): the run finishes its step, saves, exits with EXIT_STOPPED (75), and
    the same command resumes from that step."""
    import signal
    import subprocess
    import sys
    import time
    from conftest import REPO
    out = str(tmp_path / "term")
    cmd = [sys.executable, "train_supervised.py"] + SUP + [f"output_dir={out}", "train.epochs=20"]
    p = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env=dict(os.environ, OMP_NUM_THREADS="1"))
    metrics = os.path.join(out, "metrics.jsonl")
    deadline = time.time() + 120
    while time.time() < deadline and p.poll() is None and not (
            os.path.exists(metrics) and sum(1 for _ in open(metrics)) >= 2):
        time.sleep(0.2)
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=120)
    assert p.returncode == STOPPED, err
    step = checkpoint.load(os.path.join(out, "checkpoint.pt"))["step"]
    assert 2 <= step < 160 and f"SIGTERM received: stopped at step {step}" in err
    again = run(cmd[1:] + [f"train.stop_at_step={step + 1}"])   # a planned stop: exit code 0
    assert f"resuming from {out}" in again.stdout and f"stopped at step {step + 1}" in again.stderr
    assert checkpoint.load(os.path.join(out, "checkpoint.pt"))["step"] == step + 1


def test_divergence_stops_the_run_without_saving(tmp_path):
    out = str(tmp_path / "div")
    p = run(["train_supervised.py"] + SUP + [f"output_dir={out}", "optim.lr=1e30"], code=3)   # EXIT_DIVERGED
    assert "non-finite loss at step" in p.stderr and not os.path.exists(os.path.join(out, "checkpoint.pt"))


def _main_in_process(argv, monkeypatch, forwards):
    """train_supervised.main in this process (one rank, CPU); records (batch, autograd on) of every
    forward of the classifier: autograd forwards are the training steps, the others selection passes."""
    import signal
    import train_supervised
    from common.run import STOP_SIGNALS, Stopped

    def build(model_cfg, classes):
        model = build_classifier(model_cfg, classes)
        model.register_forward_pre_hook(lambda m, a: forwards.append((a[0].shape[0], torch.is_grad_enabled())))
        return model
    monkeypatch.setattr(train_supervised, "build_classifier", build)
    threads, handlers = torch.get_num_threads(), {s: signal.getsignal(s) for s in STOP_SIGNALS}
    try:
        train_supervised.main(train_supervised.parse_config(argv))
    except Stopped:
        pass
    finally:
        torch.set_num_threads(threads)
        for s, h in handlers.items():
            signal.signal(s, h)


def test_selective_backprop_steps_on_full_batches_and_its_buffer_survives_a_resume(tmp_path, monkeypatch):
    """Jiang et al.: selected samples accumulate across loader batches until b are collected; every
    optimizer step sees exactly b; the buffer and loader position are in the checkpoint."""
    args = SUP + ["select.method=selective_backprop", "select.beta=2.0",   # keeps ~1/3 of a 32-image loader batch
                  "select.eval_every_epochs=2.0", "train.log_every=100"]
    full, cut = str(tmp_path / "full"), str(tmp_path / "cut")
    fwd = []
    _main_in_process(args + [f"output_dir={full}"], monkeypatch, fwd)
    train = [n for n, grad in fwd if grad]
    selection_passes = [n for n, grad in fwd if not grad and n == 32]   # large batches b-bar = 32 (not val's)
    assert train == [16] * 16                                           # 16 steps, each exactly b = 16
    assert len(selection_passes) > 9                                    # 9 ranked steps took more loader batches
    a = checkpoint.load(os.path.join(full, "checkpoint.pt"))
    assert a["sb_state"][0]["buffer"]["batches"] == 3 + len(selection_passes) + 4   # warm-up, ranked, cool-down
    # interrupt where the buffer holds selected samples, resume: the same weights as uninterrupted
    stop = 7
    _main_in_process(args + [f"output_dir={cut}", f"train.stop_at_step={stop}"], monkeypatch, [])
    mid = checkpoint.load(os.path.join(cut, "checkpoint.pt"))
    held = mid["sb_state"][0]["buffer"]
    assert mid["step"] == stop and held["y"] is not None and 0 < len(held["y"]) < 16 and held["x"].shape[0] == len(held["y"])
    _main_in_process(args + [f"output_dir={cut}"], monkeypatch, [])
    b = checkpoint.load(os.path.join(cut, "checkpoint.pt"))
    assert b["step"] == 16 and b["sb_state"][0]["buffer"]["batches"] == a["sb_state"][0]["buffer"]["batches"]
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k


@pytest.mark.parametrize("rule,factor", [("sqrt", 0.25), ("linear", 1 / 16), ("none", 1.0)])
def test_lr_scaling_gives_the_same_lr_in_every_script(tmp_path, rule, factor):
    """optim.lr_scaling resolves once (common/schedules.base_lr): a batch of 16 trains at
    lr x sqrt(16/256) = lr / 4 under sqrt, lr / 16 under linear, in train_ssl.py, train_supervised.py
    and lr_finder.py alike (sqrt used to act as none in the latter two and fail in the first)."""
    args = ["optim.lr=0.4", f"optim.lr_scaling={rule}", "optim.schedule=constant", "optim.warmup_epochs=0",
            "train.batch_size=16", "train.stop_at_step=1", "train.log_every=1"]
    lrs = {}
    for script, base in (("train_ssl.py", TINY), ("train_supervised.py", SUP)):
        out = str(tmp_path / script)
        run([script] + base + args + [f"output_dir={out}"])
        lrs[script] = next(r["lr"] for r in read_metrics(out) if "lr" in r)
    lrs["lr_finder.py"] = lr_finder.base_lr(lr_finder.parse_config(TINY + args))
    assert lrs == pytest.approx({s: 0.4 * factor for s in lrs}, rel=1e-12)
    p = run(["train_supervised.py"] + SUP + ["optim.lr_scaling=cubic", "--plan"], check=False)
    assert p.returncode == 2 and "optim.lr_scaling 'cubic'" in p.stderr
