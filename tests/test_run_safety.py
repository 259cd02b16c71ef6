"""Runs that cannot corrupt each other: one run per output_dir (common/run_lock.py), a changed
config refused on resume, the stop contract readable whatever launched the run (exit.json,
signals before training), OS errors and foreign checkpoints as one line, --help that lists the keys."""
import json
import os
import resource
import signal
import socket
import subprocess
import sys
import time

import pytest
import yaml

from common import checkpoint, run_lock
from common.checkpoint import resume_changes
from conftest import REPO, STOPPED, TINY, read_metrics, run

LONG = TINY + ["train.epochs=40"]   # 160 steps: long enough to meet a second run


def _popen(args, out, nproc=1):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"] \
        if nproc > 1 else [sys.executable]
    return subprocess.Popen(launch + ["train_ssl.py"] + args + [f"output_dir={out}"], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def _wait_for_rows(out, proc, rows, timeout=120):
    metrics, deadline = os.path.join(out, "metrics.jsonl"), time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if os.path.exists(metrics) and sum(1 for _ in open(metrics)) >= rows:
            return
        time.sleep(0.05)
    raise AssertionError(f"no {rows} metrics rows in {out}: {proc.poll()}")


def _one_line(p, *words, code=2):
    """Exit `code`, one "error: ..." line holding `words`, no traceback (tqdm's bar may share stderr)."""
    lines = [ln for ln in p.stderr.splitlines() if ln.startswith("error: ")]
    assert p.returncode == code and len(lines) == 1 and "Traceback" not in p.stderr, (p.returncode, p.stderr[-2000:])
    for w in words:
        assert w in lines[0], (w, lines[0])
    return lines[0]


def test_a_second_run_into_a_busy_output_dir_is_refused_and_a_killed_holder_blocks_nothing(tmp_path):
    """Two runs into one folder (a requeued job meeting its predecessor): the second exits 2
    naming the holder, the first is untouched; once the first is SIGKILLed its lock is stale and
    the next run resumes from its checkpoint."""
    out = str(tmp_path / "c")
    first = _popen(LONG + ["train.ckpt_every_steps=4"], out)
    _wait_for_rows(out, first, 6)
    config_before = open(os.path.join(out, "config.yaml")).read()
    # the holder is paused (alive, holding the lock) while the second run tries: on a loaded machine
    # it could otherwise finish its 160 steps first and write exit.json itself
    os.killpg(first.pid, signal.SIGSTOP)
    second = run(["train_ssl.py"] + LONG + ["optim.lr=0.5", f"output_dir={out}"], check=False)
    line = _one_line(second, "is in use by another run", f"pid {first.pid}", socket.gethostname())
    assert first.poll() is None and open(os.path.join(out, "config.yaml")).read() == config_before
    assert not os.path.exists(os.path.join(out, "exit.json")), line   # the refused run wrote nothing
    assert os.path.exists(os.path.join(out, "checkpoint.pt"))         # step 4's, before the 6 rows
    os.killpg(first.pid, signal.SIGKILL)
    first.communicate()
    assert os.path.exists(os.path.join(out, "run.lock"))             # left behind by the dead holder
    third = run(["train_ssl.py"] + LONG + ["train.ckpt_every_steps=4", f"output_dir={out}"])
    assert "resuming from" in third.stdout
    steps = [r["step"] for r in read_metrics(out) if "loss" in r]
    assert steps == list(range(1, 161))                              # every step once, one run's rows
    assert not os.path.exists(os.path.join(out, "run.lock"))
    assert json.load(open(os.path.join(out, "exit.json")))["code"] == 0


def test_a_lock_on_another_host_is_stale_only_once_its_heartbeat_stops(tmp_path):
    lock = tmp_path / "run.lock"
    lock.write_text(json.dumps({"host": "node-17", "pid": 4242, "started": time.time()}))
    with pytest.raises(run_lock.RunLocked, match="host node-17, pid 4242"):
        run_lock.RunLock(str(tmp_path)).acquire()
    old = time.time() - run_lock.STALE_S - 5
    os.utime(lock, (old, old))                                       # the holder's node went away
    held = run_lock.RunLock(str(tmp_path)).acquire()
    assert json.loads(lock.read_text())["pid"] == os.getpid()
    held.release(0, "finished")
    assert not lock.exists() and run_lock.read_exit(str(tmp_path))["reason"] == "finished"
    # same host: a live pid holds the folder, a dead one does not
    dead = subprocess.Popen(["true"])
    dead.wait()
    for pid, free in ((os.getppid(), False), (dead.pid, True)):
        lock.write_text(json.dumps({"host": socket.gethostname(), "pid": pid, "started": time.time()}))
        if free:
            run_lock.RunLock(str(tmp_path)).acquire().release(0, "finished")
        else:
            with pytest.raises(run_lock.RunLocked):
                run_lock.RunLock(str(tmp_path)).acquire()


def test_which_config_changes_a_resume_accepts():
    changed = ["train.batch_size: 16 -> 32", "train.log_every: 1 -> 5", "knn.k: 5 -> 3",
               "optim.lr: 0.05 -> 0.1", "train.epochs: 2 -> 4", "data.workers: 0 -> 2"]
    refused, noted = resume_changes(changed)
    assert [c.split(":")[0] for c in refused] == ["train.batch_size", "optim.lr", "train.epochs"]
    assert [c.split(":")[0] for c in noted] == ["train.log_every", "knn.k", "data.workers"]
    refused, _ = resume_changes(changed, "train.epochs, optim")
    assert [c.split(":")[0] for c in refused] == ["train.batch_size"]
    assert resume_changes(changed, "all")[0] == []
    assert resume_changes(["train.epochs_x: 1 -> 2"], "train.epochs")[0]   # a prefix is not a section


def test_resuming_with_a_changed_config_is_refused_unless_allowed(tmp_path):
    out = str(tmp_path / "x")
    run(["train_ssl.py"] + TINY + ["train.stop_at_step=3", f"output_dir={out}"])
    saved = open(os.path.join(out, "config.yaml")).read()
    p = run(["train_ssl.py"] + TINY + ["train.batch_size=32", f"output_dir={out}"], check=False)
    _one_line(p, "another config", "train.batch_size: 16 -> 32", "train.allow_changes=train.batch_size")
    assert open(os.path.join(out, "config.yaml")).read() == saved and checkpoint.load(
        os.path.join(out, "checkpoint.pt"))["step"] == 3
    # cadence keys pass with a note; train.epochs passes because it is allowed, and the old config is kept
    p = run(["train_ssl.py"] + TINY + ["train.epochs=3", "train.allow_changes=train.epochs", "train.log_every=2",
                                       f"output_dir={out}"])
    assert "config changed: train.allow_changes: '' -> 'train.epochs'" in p.stdout
    assert "train.epochs: 2 -> 3" in p.stdout and "train.log_every: 1 -> 2" in p.stdout
    assert yaml.safe_load(open(os.path.join(out, "config.1.yaml")))["train"]["epochs"] == 2
    assert yaml.safe_load(open(os.path.join(out, "config.yaml")))["train"]["epochs"] == 3
    assert checkpoint.load(os.path.join(out, "checkpoint.pt"))["step"] == 12


def test_torchrun_stop_is_readable_from_exit_json_and_warns_about_per_rank_bn(tmp_path):
    """torchrun answers a SIGTERM with its own code; the run's exit.json says it was a stop after
    saving (75), at which step; the same command resumes from there."""
    out = str(tmp_path / "t")
    args = LONG + ["train.sync_bn=false"]
    proc = _popen(args, out, nproc=2)
    _wait_for_rows(out, proc, 4)
    os.kill(proc.pid, signal.SIGTERM)                                 # to torchrun alone, as `timeout` does
    stdout, stderr = proc.communicate(timeout=120)
    record = run_lock.read_exit(out)
    assert record["code"] == STOPPED and "SIGTERM received" in record["reason"], (record, stderr[-2000:])
    assert checkpoint.load(os.path.join(out, "checkpoint.pt"))["step"] == record["step"] > 0
    assert "normalise with per-rank statistics (2 ranks" in stdout
    assert not os.path.exists(os.path.join(out, "run.lock"))


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_before_training_exits_with_the_stop_code_and_one_line(tmp_path, signum):
    """During the data build and the first kNN (a large synthetic set, so it takes a while)."""
    out = str(tmp_path / "s")
    proc = _popen(TINY + ["data.synthetic_train_size=4000", "data.synthetic_val_size=2000"], out)
    deadline = time.time() + 60
    while time.time() < deadline and not os.path.exists(os.path.join(out, "run.lock")):
        time.sleep(0.02)
    os.killpg(proc.pid, signum)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == STOPPED, stderr[-2000:]
    assert stderr.strip().splitlines() == [f"{signal.Signals(signum).name} received before training started: "
                                           f"nothing to save; re-run the same command to resume"]
    assert run_lock.read_exit(out)["code"] == STOPPED and not os.path.exists(os.path.join(out, "run.lock"))


def test_a_repeated_signal_during_the_stop_still_ends_with_the_stop_code(tmp_path):
    out = str(tmp_path / "r")
    proc = _popen(LONG + ["model.width=32"], out)   # a larger checkpoint: a save worth hitting
    _wait_for_rows(out, proc, 3)
    os.killpg(proc.pid, signal.SIGTERM)
    deadline = time.time() + 30
    while time.time() < deadline and proc.poll() is None:
        if any(".pt.tmp." in f for f in os.listdir(out)):
            break
        time.sleep(0.001)
    for _ in range(3):
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            time.sleep(0.01)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == STOPPED, stderr[-2000:]
    assert checkpoint.load(os.path.join(out, "checkpoint.pt"))["step"] > 0
    assert not [f for f in os.listdir(out) if ".tmp." in f]


def _file_limit(n_bytes):
    return lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (n_bytes, n_bytes))


def test_os_errors_are_one_line_and_lose_nothing(tmp_path):
    # a disk that fills up during a save: one line, exit 2, the last checkpoint intact, no partial file
    out = str(tmp_path / "full")
    run(["train_ssl.py"] + TINY + ["train.stop_at_step=2", f"output_dir={out}"])
    size = os.path.getsize(os.path.join(out, "checkpoint.pt"))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    p = subprocess.run([sys.executable, "train_ssl.py"] + TINY + [f"output_dir={out}"], cwd=REPO, env=env,
                       capture_output=True, text=True, preexec_fn=_file_limit(size // 2), timeout=300)
    _one_line(p, "could not write", "checkpoint.pt", "previous checkpoint is intact")
    assert checkpoint.load(os.path.join(out, "checkpoint.pt"))["step"] == 2
    assert not [f for f in os.listdir(out) if ".tmp." in f]
    # output_dir an existing file
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    _one_line(run(["train_ssl.py"] + TINY + [f"output_dir={not_a_dir}"], check=False), "FileExistsError", str(not_a_dir))


def test_a_checkpoint_of_another_backbone_names_both(tiny_run):
    p = run(["linear_eval.py", "--checkpoint", os.path.join(tiny_run, "checkpoint.pt"), "model.width=16",
             "data.workers=0"], check=False)
    _one_line(p, "holds another backbone", "model.width=8 there, 16 here")


def test_report_skips_broken_and_foreign_run_folders(tiny_run, tmp_path, capsys):
    import report
    broken, foreign = tmp_path / "broken", tmp_path / "foreign"
    broken.mkdir()
    foreign.mkdir()
    (broken / "config.yaml").write_text("train: [unclosed\n")
    (foreign / "config.yaml").write_text("lr: 0.1\n")
    with pytest.raises(SystemExit) as e:
        report.main([str(broken), str(foreign)])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "config.yaml cannot be read (" in err and "names no paper row" in err
    records = report.report([str(broken), tiny_run])
    assert [r["run_dir"] for r in records if r["run_dir"]] == [tiny_run]


def test_help_lists_the_config_keys_and_print_config_resolves_a_file(capsys):
    import train_ssl
    with pytest.raises(SystemExit):
        train_ssl.cli(["--help"])
    out = capsys.readouterr().out
    assert "train: epochs=100 batch_size=512" in out and "method.simsiam: proj_dim=2048" in out
    assert "allow_changes=''" in out
    with pytest.raises(SystemExit) as e:
        train_ssl.cli(["--config", os.path.join(REPO, "yaml/wacv/table2_mocov2plus_efficient.yaml"), "--print-config", "train.epochs=3"])
    tree = yaml.safe_load(capsys.readouterr().out)
    assert e.value.code == 0 and tree["train"]["epochs"] == 3 and tree["train"]["sync_bn"] is False
    assert tree["method"]["name"] == "mocov2plus"


def test_an_empty_jpeg_is_named_in_the_message(tmp_path):
    from data.folder import DataError, ImageFolderImages
    (tmp_path / "cat").mkdir()
    (tmp_path / "cat" / "empty.jpg").write_bytes(b"")
    images = ImageFolderImages(str(tmp_path))
    for read in (images.read, images.load):
        with pytest.raises(DataError) as e:
            read(0)
        assert str(tmp_path / "cat" / "empty.jpg") in str(e.value) and "BytesIO" not in str(e.value)


def test_report_puts_seeds_of_one_configuration_on_one_line(tiny_run, tmp_path):
    """Three copies of a run that differ only in train.seed (and output_dir) -> one line with the
    mean +- sample std over n = 3; a copy with another learning rate stays a line of its own."""
    import shutil
    import report
    values = {0: 40.0, 1: 44.0, 2: 48.0}
    for seed, value in list(values.items()) + [(3, 10.0)]:
        d = tmp_path / f"s{seed}"
        shutil.copytree(tiny_run, d)
        cfg = yaml.safe_load(open(d / "config.yaml"))
        cfg["train"]["seed"], cfg["output_dir"] = seed, str(d)
        if seed == 3:
            cfg["optim"]["lr"] = 0.5
        yaml.safe_dump(cfg, open(d / "config.yaml", "w"), sort_keys=False)
        rows = read_metrics(str(d))
        rows[-1]["knn_top1"] = value
        with open(d / "metrics.jsonl", "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
    recs = [r for r in report.report([str(tmp_path / f"s{i}") for i in range(4)]) if r["run_dir"]]
    grouped = next(r for r in recs if r["n_seeds"] == 3)
    assert grouped["ours"] == pytest.approx(44.0) and grouped["ours_std"] == pytest.approx(4.0)
    assert grouped["seeds"] == [0, 1, 2] and sorted(r["n_seeds"] for r in recs) == [1, 3]
    assert next(r for r in recs if r["n_seeds"] == 1)["ours"] == 10.0
