"""What happens to a run on a cluster: signals to the whole process group (Slurm's scancel and
time limit, `timeout`, its USR1 warning), a run that diverges, checkpoints that are cut or belong
to another run, restarts that must not duplicate log rows, and bad numbers in the config."""
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from common import checkpoint
from conftest import REPO, STOPPED, TINY, read_metrics, run

DIVERGED = 3   # common/run.py EXIT_DIVERGED


def _state(run_dir, name="checkpoint.pt"):
    return checkpoint.load(os.path.join(run_dir, name))


def _children(pid):
    """Process ids whose parent is `pid` (Linux /proc)."""
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                stat = open(f"/proc/{d}/stat").read()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(d))
    return out


def _one_line_error(p, *words):
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), p.stderr[-2000:]
    for w in words:
        assert w in lines[0], (w, lines[0])


SIX_EPOCHS = TINY + ["train.epochs=6"]   # 24 steps: long enough to be interrupted


@pytest.fixture(scope="module")
def six_epoch_run(tmp_path_factory):
    """The uninterrupted reference run of the interruption tests."""
    out = str(tmp_path_factory.mktemp("six_epochs"))
    run(["train_ssl.py"] + SIX_EPOCHS + [f"output_dir={out}"])
    return out


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGUSR1])
def test_signal_to_the_process_group_saves_and_resumes_to_the_same_weights(six_epoch_run, tmp_path, signum):
    """The signal goes to every process of the run's group, loader workers included (as Slurm,
    `timeout` and Ctrl-C deliver it). The run stops within a step with its checkpoint written and
    exit code STOPPED; the same command resumes, and the result equals an uninterrupted run. Every
    step appears once in metrics.jsonl."""
    args, full, cut = SIX_EPOCHS, six_epoch_run, str(tmp_path / "cut")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "train_ssl.py"] + args + [f"output_dir={cut}", "data.workers=2"],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)   # its own process group, as under a scheduler
    metrics, deadline = os.path.join(cut, "metrics.jsonl"), time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if os.path.exists(metrics) and sum(1 for _ in open(metrics)) >= 3:   # kNN line + 2 steps
            break
        time.sleep(0.05)
    os.killpg(proc.pid, signum)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == STOPPED, stderr[-3000:]
    assert "killed by signal" not in stderr and f"{signal.Signals(signum).name} received" in stderr
    stopped = _state(cut)["step"]
    assert 0 < stopped < 24
    rows = [r["step"] for r in read_metrics(cut) if "loss" in r]
    assert rows == list(range(1, stopped + 1))          # stopped within one step of the signal
    second = run(["train_ssl.py"] + args + [f"output_dir={cut}"])
    assert f"at step {stopped}" in second.stdout
    a, b = _state(full), _state(cut)
    assert b["step"] == 24
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    steps = [r["step"] for r in read_metrics(cut) if "loss" in r]
    assert steps == list(range(1, 25))                  # no duplicate rows after the resume


def test_a_diverging_run_stops_and_keeps_its_last_good_checkpoint(tmp_path):
    out = str(tmp_path / "nan")
    args = ["train_ssl.py"] + TINY + [f"output_dir={out}", "train.epochs=20", "train.ckpt_every_steps=2",
                                      "optim.lr=1e9", "optim.lr_scaling=none", "optim.schedule=constant"]
    p = run(args, check=False)
    assert p.returncode == DIVERGED, p.stderr[-2000:]
    line = p.stderr.strip().splitlines()[-1]
    assert "non-finite" in line and "at step" in line and "checkpoint" in line, line
    saved = os.path.join(out, "checkpoint.pt")
    if os.path.exists(saved):   # the last good checkpoint is named, and holds finite weights only
        assert saved in line
        assert all(torch.isfinite(v).all() for v in _state(out)["model"].values() if v.is_floating_point())
    else:
        assert "none written yet" in line


def test_bad_checkpoints_and_foreign_run_directories_are_one_line_errors(tiny_run, tmp_path):
    garbage = tmp_path / "garbage"
    garbage.mkdir()
    (garbage / "checkpoint.pt").write_bytes(b"\x80\x02not a checkpoint")
    _one_line_error(run(["train_ssl.py"] + TINY + [f"output_dir={garbage}"], check=False),
                    str(garbage / "checkpoint.pt"), "not a readable checkpoint")
    # a truncated copy of a real checkpoint, passed to linear_eval.py
    cut = tmp_path / "cut.pt"
    data = open(os.path.join(tiny_run, "checkpoint.pt"), "rb").read()
    cut.write_bytes(data[: len(data) // 2])
    p = run(["linear_eval.py", "--checkpoint", str(cut)], check=False)
    _one_line_error(p, str(cut), "not a readable checkpoint")
    assert "weights_only" not in p.stderr
    # the output_dir of another run (another width): say so, and which keys differ
    other = tmp_path / "other"
    other.mkdir()
    (other / "checkpoint.pt").write_bytes(data)
    _one_line_error(run(["train_ssl.py"] + TINY + [f"output_dir={other}", "model.width=16"], check=False),
                    "another config", "model.width: 8 -> 16")


def test_a_save_killed_mid_write_leaves_nothing_behind_after_a_restart(tmp_path):
    out = tmp_path / "tmpfiles"
    out.mkdir()
    (out / "checkpoint.pt.tmp.12345").write_bytes(b"half a checkpoint")
    run(["train_ssl.py"] + TINY + [f"output_dir={out}", "train.epochs=1"])
    assert not [f for f in os.listdir(out) if ".tmp." in f]


@pytest.mark.parametrize("override", ["train.batch_size=0", "train.batch_size=-16", "train.epochs=-1"])
def test_impossible_run_lengths_are_config_errors(override):
    """(These reach the user as one line with exit code 2, like every ConfigError: test_structure.py.)"""
    from common import run as run_
    from common.config import ConfigError
    from train_ssl import parse_config
    with pytest.raises(ConfigError, match=override):
        run_.setup(parse_config(TINY + [override]).train)


def test_submitit_job_interrupted_is_requeued_and_ends_with_the_uninterrupted_weights(six_epoch_run, tmp_path,
                                                                                   monkeypatch):
    """submit.py through submitit's local executor: the time-limit signal (USR2) mid-run makes the
    job save, requeue itself and resume; its final weights equal an uninterrupted run's."""
    submitit = pytest.importorskip("submitit")   # optional dependency (requirements-dev.txt)
    import submit
    monkeypatch.setenv("PYTHONPATH", REPO)       # the task process unpickles submit.Job
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    out = str(tmp_path / "job")
    ex = submitit.LocalExecutor(folder=str(tmp_path / "submitit"))
    ex.update_parameters(timeout_min=10, tasks_per_node=1, nodes=1)
    job = ex.submit(submit.Job("train_ssl.py", SIX_EPOCHS + [f"output_dir={out}"]))
    metrics, deadline = os.path.join(out, "metrics.jsonl"), time.time() + 120
    while time.time() < deadline and job.state == "RUNNING":
        if os.path.exists(metrics) and sum(1 for _ in open(metrics)) >= 3:
            break
        time.sleep(0.05)
    # what submitit's controller sends the task before the time limit (its own timer, made short)
    from submitit.local.local import LocalJobEnvironment
    os.kill(_children(job._process.pid)[0], LocalJobEnvironment._usr_sig())
    assert job.result() == "finished"
    log = open(job.paths.stderr).read()
    assert "USR2 received" in log and "resuming from" in open(job.paths.stdout).read()
    a, b = _state(six_epoch_run), _state(out)
    assert b["step"] == 24
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k


def _free_port():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_torchrun_nodes_give_the_one_process_update(tmp_path):
    """Multi-node launch: two torchrun 'nodes' of one rank each, meeting through a c10d
    rendezvous on 127.0.0.1, compute the update of a single process (float64, global BN)."""
    args = TINY + ["train.stop_at_step=2", "train.sync_bn=true", "train.float64=true"]
    single, multi = str(tmp_path / "single"), str(tmp_path / "nodes")
    run(["train_ssl.py"] + args + [f"output_dir={single}"])
    port, env = _free_port(), dict(os.environ, OMP_NUM_THREADS="1")
    node = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc-per-node=1",
            "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}", f"--rdzv-id=test{port}",
            "train_ssl.py"] + args + [f"output_dir={multi}"]
    procs = [subprocess.Popen(node, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    a, b = _state(single), _state(multi)
    assert b["world_size"] == 2 and b["step"] == 2
    for k, v in a["model"].items():
        assert torch.allclose(v, b["model"][k], atol=1e-12, rtol=1e-10), k


def test_torchrun_restarts_a_killed_rank_and_ends_with_the_uninterrupted_weights(tmp_path):
    """`torchrun --max-restarts=1`: one rank dies (SIGKILL) mid-run; torchrun restarts the group,
    which resumes from the last checkpoint and ends with the weights of an uninterrupted run."""
    args = TINY + ["train.epochs=6", "train.ckpt_every_steps=2"]
    full, cut = str(tmp_path / "full"), str(tmp_path / "cut")
    run(["train_ssl.py"] + args + [f"output_dir={full}"], nproc=2)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                             "--max-restarts=1", "--monitor-interval=0.5", "train_ssl.py"] + args
                            + [f"output_dir={cut}"], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    ckpt, deadline = os.path.join(cut, "checkpoint.pt"), time.time() + 120
    while time.time() < deadline and proc.poll() is None and not os.path.exists(ckpt):
        time.sleep(0.05)
    workers = [c for c in _children(proc.pid) if "train_ssl.py" in open(f"/proc/{c}/cmdline").read()]
    assert len(workers) == 2
    os.kill(workers[-1], signal.SIGKILL)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    assert "resuming from" in out
    a, b = _state(full), _state(cut)
    assert b["step"] == 24
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k


def test_a_corrupt_jpeg_among_good_ones_is_one_line_and_the_run_exits(tmp_path):
    """Loader workers raise it; the message names the file, without the worker's traceback, and
    the process exits (the workers ignore SIGTERM, so they must not be left to the exit hook)."""
    import numpy as np
    from PIL import Image
    for split in ("train", "val"):
        for c in "ab":
            os.makedirs(tmp_path / split / c)
            for i in range(8):
                Image.fromarray((np.random.default_rng(i).random((40, 40, 3)) * 255).astype("uint8")).save(
                    tmp_path / split / c / f"{i}.jpg", quality=90)
    bad = tmp_path / "train" / "b" / "3.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    p = run(["train_ssl.py", "data.name=imagefolder", f"data.root={tmp_path}", "data.workers=2",
             "train.batch_size=8", "train.epochs=1", f"output_dir={tmp_path}/run", "model.width=8", "knn.k=3"],
            check=False, timeout=120)
    errors = [line for line in p.stderr.splitlines() if line.startswith("error:")]
    assert p.returncode == 2 and len(errors) == 1 and str(bad) in errors[0], p.stderr[-2000:]
    assert "Traceback" not in p.stderr and "Caught" not in p.stderr
