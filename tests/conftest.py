import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if os.environ.get("PYTEST_XDIST_WORKER"):
    # the suite runs on pytest-xdist workers, one per core (README): in-process tests take one
    # thread each, as the subprocess runs do (OMP_NUM_THREADS=1 below), so workers do not contend
    import torch
    torch.set_num_threads(1)
sys.path.insert(0, REPO)
CIFAR10 = os.path.join(REPO, "..", "shared", "datasets", "cifar10")

# A run small enough for a test: 4 steps per epoch of a width-8 ResNet-18 on 32 px images. In
# float32 and NCHW (train.amp=none, train.channels_last=false): the auto settings pick bf16 on
# CPUs that compute it natively and NHWC convolutions, which round differently; the tolerances
# of the tests are float32's on any x86 CPU (bf16 / NHWC runs: tests/test_accel.py, test_precision.py).
TINY = ["data.synthetic_train_size=64", "data.synthetic_val_size=40", "model.width=8",
        "train.batch_size=16", "train.epochs=2", "data.workers=0", "knn.k=5", "knn.batch_size=32",
        "train.threads=1", "method.simsiam.proj_dim=32", "method.simsiam.pred_hidden=16", "train.amp=none",
        "train.channels_last=false",
        "train.log_every=1", "train.ckpt_every_steps=0"]


STOPPED = 75   # common/run.py EXIT_STOPPED: a run stopped by a signal, after saving


def run(args, nproc=1, check=True, timeout=300, code=None):
    """Run a repo script (python or torchrun) and return the CompletedProcess. check: fail unless
    it exits with `code` (default 0)."""
    code = 0 if code is None else code
    if nproc > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"] + args
    else:
        cmd = [sys.executable] + args
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    p = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout, env=env)
    if check and p.returncode != code:
        raise AssertionError(f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    return p


def read_metrics(run_dir):
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """One finished tiny SimSiam run, shared by the tests that only read its outputs."""
    out = str(tmp_path_factory.mktemp("tiny_run"))
    run(["train_ssl.py"] + TINY + [f"output_dir={out}"])
    return out
