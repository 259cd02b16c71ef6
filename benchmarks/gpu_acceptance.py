#!/usr/bin/env python
"""GPU acceptance: every mode that only a GPU exercises, through the training scripts' real loops,
in one command and under 8 minutes on one H100 -- the first thing to run in a user's first GPU hour.

    python benchmarks/gpu_acceptance.py                         # one CUDA GPU: all rows, ~30 steps each
    python benchmarks/gpu_acceptance.py --rows 1,5 --out /tmp/acc   # some rows; run dirs + JSON under --out
    python benchmarks/gpu_acceptance.py --smoke                  # the same code paths on the CPU, tiny sizes
    python benchmarks/gpu_acceptance.py --list                   # the rows and their command lines

Each row runs train_ssl.py, train_supervised.py or train_depth_ubn.py itself (on the GPU: a
subprocess per row, `torchrun --nproc-per-node 1` for the nccl + DDP rows; with --smoke: the
script's cli() in this process, a torchrun environment for the DDP rows, gloo) for `--steps`
steps (30; train.stop_at_step) with train.forbid_sync=true, on synthetic data (row 10: JPEGs
written to a temporary ImageFolder), and reads its metrics.jsonl. Sizes: batch 128 (rows 4 and 6:
64; row 9: 32 labeled + 32 unlabeled frames at 128 x 416), synthetic images drawn at 128 px and
cropped to 224 (drawing them at 224 px costs the loader workers 5-13 ms per image, more than the
step), 12 loader workers. --budget-s (480) bounds the whole run: a row that cannot start in time
is TIMEOUT. Rows:

   1  SimSiam ResNet-50 224 px, bf16, channels-last, torchrun (nccl, DDP on one rank)
   2  the same in fp16 with GradScaler (CUDA only)
   3  the same, bf16, train.compile=true
   4  SimSiam ResNet-50, Super Progressive Learning (96 -> 224 px in steps of 32) + Hard Augment
   5  MoCo v3 ViT-S/16 at 240 px, token dropout 0.5, patch size 20, compiled
   6  DINO ResNet-50 multi-crop (2 x 224 + 6 x 96 px)
   7  SimCLR ResNet-50 with intermediate losses, partial back-propagation and hard pairs
   8  train_supervised.py, Fast Online Minibatch Selection (select.method=fast, no warm-up), torchrun
   9  train_depth_ubn.py, DispNet with UBN (ubn.enabled=true), torchrun
  10  row 1's step fed from JPEG files: (a) data.decode=device (nvJPEG), (b) data.decode=worker

Columns (the first logging window -- start-up, cuDNN autotuning, compilation, the FLOP ledger's
counting step -- is skipped; train.log_every=10, so 20 of 30 steps are measured):
  images/s   the scripts' own `images_per_s` over the measured windows (trained images per second
             of wall time, data waits included; supervised: the b trained images, not b-bar
             loaded; depth: the labeled batch), combined as total images / total time
  peak GB    max of the rows' `peak_mem_gb` (torch.cuda.max_memory_allocated); where the log has
             none, the row process's own max_memory_allocated at exit, marked '*'
  MFU        (delta FLOPs / delta time) between the first and the last log row, over the device's
             dense bf16 peak (by torch.cuda.get_device_name: H100 SXM 989, H100 PCIe 756,
             H200 989, A100 312, L40S 362 TFLOP/s; n/a elsewhere, or --peak-tflops). FLOPs: the
             FLOP ledger's analytical `train_pflops` (+ `selection_pflops`: Hard Augment's and
             minibatch selection's no-grad passes, real GPU work); train_depth_ubn.py logs no
             FLOPs, so its row uses the script's --plan count per step (marked '*')
  loop/bare  images/s of the loop over images/s of a bare step measured in this process: the
             same model, optimizer, precision, memory format and compile setting, forward +
             backward + optimizer step on random device tensors of the views' shape, no loader
             and no device-side augmentation (as benchmarks/loop_throughput.py); rows 1 and 5,
             and 10a / 10b against row 1's (same shape). --smoke: the bare steps run eager
  status     ok | FAIL (exit code or error) | NaN (non-finite loss) | SYNC (a host-device
             synchronisation raised under train.forbid_sync) | TIMEOUT | skipped (--smoke: CUDA
             only, with the reason)

Contract checks (a row that ran fine still FAILs when the mode it asked for did not happen):
train.compile=true must leave torch.compile graphs in the row's process, all compiled before the
end of the first log window (the compiled rows have one step shape: a compilation later is a
recompile in steady state); train.forbid_sync=true must call torch.cuda.set_sync_debug_mode("error")
on CUDA and enter common/host_sync.forbid(device, enabled=True) on the CPU. The compiled rows run
last (their compile time is the least predictable part of the budget); the table keeps row order.

Exit code: 0 when every row that ran is ok, 1 otherwise. The JSON (--json-out, default
gpu_acceptance.json in --out or the current directory) holds every number, command and error.
"""
import argparse
import atexit
import contextlib
import dataclasses
import gc
import importlib
import inspect
import io
import json
import math
import multiprocessing
import os
import re
import runpy
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
import warnings

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(REPO, "benchmarks")
THIS = os.path.abspath(__file__)


# ---------------------------------------------------------------------------------------------
# Child mode: `gpu_acceptance.py --child PROBE SCRIPT ARGS...` runs SCRIPT as __main__ (exactly as
# `python SCRIPT ARGS...` would) and, at exit, writes what it saw into PROBE: torch.compile graphs,
# calls of torch.cuda.set_sync_debug_mode("error"), whether common/host_sync.py was imported, and
# the process's own peak CUDA memory. Handled before anything else is imported.

def _probe_state():
    return {"sync_error_calls": 0, "forbid_enabled_calls": 0, "forbid_witness": False, "compile_times": []}


def _install_witnesses(state, compiled):
    """Count the calls that switch train.forbid_sync on: torch.cuda.set_sync_debug_mode("error")
    (CUDA) and common/host_sync.py's forbid(device, enabled=True) (either device); with
    `compiled`, note the time each torch.compile compilation ends. Returns a function that undoes
    the patches."""
    import torch
    undo = []
    if compiled:
        from torch._dynamo.callback import callback_handler

        def compiled_at(*args, **kwargs):
            state["compile_times"].append(time.time())
        callback_handler.register_end_callback(compiled_at)
        undo.append(lambda: callback_handler.remove_end_callback(compiled_at))
    original = torch.cuda.set_sync_debug_mode

    def sync_witness(debug_mode):
        if debug_mode in ("error", 2):
            state["sync_error_calls"] += 1
        return original(debug_mode)
    torch.cuda.set_sync_debug_mode = sync_witness
    undo.append(lambda: setattr(torch.cuda, "set_sync_debug_mode", original))
    try:
        host_sync = importlib.import_module("common.host_sync")
    except ImportError:
        host_sync = None
    if host_sync is not None and callable(getattr(host_sync, "forbid", None)):
        forbid = host_sync.forbid

        def forbid_witness(*args, **kwargs):
            if kwargs.get("enabled", args[1] if len(args) > 1 else True):
                state["forbid_enabled_calls"] += 1
            return forbid(*args, **kwargs)
        host_sync.forbid = forbid_witness
        state["forbid_witness"] = True
        undo.append(lambda: setattr(host_sync, "forbid", forbid))

    def undo_all():
        for u in reversed(undo):
            u()
    return undo_all


def _probe_result(state):
    import torch
    out = dict(state)
    out["host_sync_imported"] = "common.host_sync" in sys.modules
    out["dynamo_graphs"] = None
    if "torch._dynamo" in sys.modules:
        from torch._dynamo.utils import counters
        out["dynamo_graphs"] = int(counters["stats"]["unique_graphs"])
    out["cuda_peak_gb"] = None
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["cuda_peak_gb"] = torch.cuda.max_memory_allocated() / 1e9
    return out


def child(argv):
    probe, script, rest = argv[0], argv[1], argv[2:]
    sys.path[0] = REPO   # as `python SCRIPT` from the repository root
    sys.argv = [script] + rest
    state = _probe_state()
    _install_witnesses(state, "train.compile=true" in rest)

    def write():
        rank = os.environ.get("RANK", "0")
        try:
            with open(f"{probe}.{rank}", "w") as f:
                json.dump(_probe_result(state), f)
        except Exception as e:   # the probe must never change the row's exit code
            print(f"gpu_acceptance probe: {e}", file=sys.stderr)
    atexit.register(write)
    runpy.run_path(os.path.join(REPO, script), run_name="__main__")


if __name__ == "__main__" and len(sys.argv) > 1 and sys.argv[1] == "--child":
    child(sys.argv[2:])
    sys.exit(0)

import torch  # noqa: E402

sys.path.insert(0, REPO)
from accel import compression  # noqa: E402
from common import precision  # noqa: E402
from common import run as run_module  # noqa: E402
from common.optim import build_optimizer  # noqa: E402
from data.augment import train_resolution  # noqa: E402
from report import read_jsonl  # noqa: E402   (tolerates a line being written)
from selfsup.build import build_model  # noqa: E402

# dense bf16 peak TFLOP/s by device name (first match wins); None: not in the table, MFU n/a
PEAK_BF16_TFLOPS = [
    (("H200",), 989.0),
    (("H100", "PCIE"), 756.0),
    (("H100", "NVL"), None),       # not in the table: n/a rather than a guess
    (("H100",), 989.0),            # SXM (HBM3)
    (("A100",), 312.0),
    (("L40S",), 362.0),
]
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2)
EXIT_DIVERGED = getattr(run_module, "EXIT_DIVERGED", 3)
EXIT_HOST_SYNC = getattr(run_module, "EXIT_HOST_SYNC", 4)
SSL, SUP, DEPTH = "train_ssl.py", "train_supervised.py", "train_depth_ubn.py"


def peak_tflops(name):
    up = name.upper()
    for keys, value in PEAK_BF16_TFLOPS:
        if all(k in up for k in keys):
            return value
    return None


# ---------------------------------------------------------------------------------------------
# The rows

@dataclasses.dataclass
class Row:
    id: str
    title: str
    script: str
    config: str                   # YAML file (relative to the repository), the row's recipe
    overrides: list
    torchrun: bool = False        # GPU: torchrun --nproc-per-node 1 (nccl + DDP); --smoke: its environment, gloo
    cuda_only: str = ""           # reason the row cannot run on the CPU (skipped by --smoke)
    bare: bool = False            # also time a bare step of the same shape in this process
    compile: bool = False
    forbid_sync: bool = True
    timeout: int = 150            # seconds (GPU), capped by what is left of --budget-s

    def argv(self):
        return ["--config", os.path.join(REPO, self.config)] + self.overrides


def sizes(args):
    """Everything that differs between the GPU run and --smoke."""
    gpu = not args.smoke
    workers = args.workers if args.workers is not None else (max(2, min(12, (os.cpu_count() or 8) - 4)) if gpu else 0)
    return argparse.Namespace(
        gpu=gpu, steps=args.steps, log_every=args.log_every, workers=workers,
        device="cuda" if gpu else "cpu",
        res=224 if gpu else 32,
        vit_res=240 if gpu else 32, vit_patch=20 if gpu else 8,
        img=128 if gpu else 64,          # synthetic images are drawn at most this size, cropped to `res`
        b=128 if gpu else 4, b_small=64 if gpu else 4, b_depth=32 if gpu else 4,
        backend="inductor" if gpu else "aot_eager",
        r50=[] if gpu else ["model.arch=resnet18", "model.width=8"],
    )


def shared_train(s, batch, amp, channels_last, compile_=False, backend=None):
    out = [f"train.batch_size={batch}", "train.epochs=2", f"train.stop_at_step={s.steps}",
           f"train.log_every={s.log_every}", f"train.check_every={s.log_every}", "train.ckpt_every_steps=0",
           "train.forbid_sync=true", f"train.device={s.device}", f"train.amp={amp}",
           f"train.channels_last={'true' if channels_last else 'false'}", "train.sync_bn=false"]
    if compile_:
        out += ["train.compile=true", f"train.compile_backend={backend}"]
    if not s.gpu:
        out.append("train.threads=1")
    return out


def synthetic_data(s, batch, res):
    """One pass of --steps steps (train.epochs=2, so train.stop_at_step ends the run at the end
    of the first epoch: no epoch-end checkpoint before it, no final kNN pass)."""
    return ["data.name=synthetic", f"data.synthetic_train_size={batch * s.steps}",
            f"data.synthetic_val_size={batch if s.gpu else 4}", f"data.synthetic_image_size={min(res, s.img)}",
            "data.synthetic_classes=10", f"data.crop_size={res}", f"data.eval_resize={res}", f"data.eval_crop={res}",
            f"data.workers={s.workers}", "data.prefetch_factor=2"]


def knn(s, n_train):
    return ["knn.every_epochs=0", f"knn.k={min(20, n_train)}", f"knn.batch_size={256 if s.gpu else 16}"]


def build_rows(args, jpeg_root=None):
    s = sizes(args)
    b, res = s.b, s.res
    simsiam_small = [] if s.gpu else ["method.simsiam.proj_dim=32", "method.simsiam.pred_hidden=16"]
    simsiam = (synthetic_data(s, b, res) + knn(s, b * s.steps) + s.r50 + simsiam_small
               + ["train.snapshot_every_epochs=0"])
    rows = [
        Row("1", "SimSiam R50 bf16 CL, torchrun", SSL, "yaml/imagenette_simsiam.yaml",
            simsiam + shared_train(s, b, "bf16", True), torchrun=True, bare=True),
        Row("2", "SimSiam R50 fp16 + GradScaler", SSL, "yaml/imagenette_simsiam.yaml",
            simsiam + shared_train(s, b, "fp16", True), cuda_only="train.amp=fp16 (GradScaler) is CUDA only"),
        Row("3", "SimSiam R50 bf16 CL, compiled", SSL, "yaml/imagenette_simsiam.yaml",
            simsiam + shared_train(s, b, "bf16", True, True, s.backend), compile=True, timeout=300),
    ]
    # 4: WACV'23 Imagenette efficient recipe: Super Progressive Learning + Hard Augment (+ F1-CLR)
    bs = s.b_small
    # --smoke: 32 -> 48 px (ResNet maps of 1 x 1 pixel from 16 px inputs diverge in CPU bf16 at batch 4)
    r_min, r_step, r_sel, res4 = (96, 32, 64, res) if s.gpu else (32, 16, 24, 48)
    rows.append(Row(
        "4", "SimSiam R50 SPL + Hard Augment", SSL, "yaml/wacv/imagenette_efficient.yaml",
        synthetic_data(s, bs, res4) + knn(s, bs * s.steps) + s.r50 + simsiam_small
        + ["train.snapshot_every_epochs=0", "optim.warmup_epochs=0", "accel.progressive.mode=super",
           f"accel.progressive.r_min={r_min}", f"accel.progressive.step={r_step}", "accel.hard_augment.enabled=true",
           f"accel.hard_augment.views={6 if s.gpu else 3}", f"accel.hard_augment.r_sel={r_sel}"]
        + shared_train(s, bs, "bf16", True)))
    # 5: NeurIPS'24 MoCo v3 ViT with token dropout and a flexible patch size, compiled
    vit = ["model.arch=vit_s16"] if s.gpu else ["model.arch=vit_t16", "method.mocov3.proj_hidden=32",
                                                "method.mocov3.proj_dim=16", "method.mocov3.pred_hidden=32"]
    rows.append(Row(
        "5", f"MoCo v3 ViT-{'S' if s.gpu else 'T'} drop 0.5 patch {s.vit_patch}, compiled", SSL,
        "yaml/vit/in100_mocov3_240px_base.yaml",
        synthetic_data(s, b, s.vit_res) + knn(s, b * s.steps) + vit
        + ["train.snapshot_every_epochs=0", "train.budget=0", "accel.compression.drop_ratio=0.5",
           f"accel.compression.patch_size={s.vit_patch}"]
        + shared_train(s, b, "bf16", False, True, s.backend), bare=True, compile=True, timeout=300))
    # 6: DINO multi-crop (the released ResNet-50 recipe: 2 x 224 + 6 x 96 px, LARS)
    dino_small = [] if s.gpu else ["method.dino.out_dim=64", "method.dino.hidden_dim=32",
                                   "method.dino.bottleneck_dim=16"]
    rows.append(Row(
        "6", "DINO R50 multi-crop 2x224+6x96" if s.gpu else "DINO multi-crop 2x32+2x24", SSL,
        "yaml/methods/imagenet_dino_resnet50.yaml",
        synthetic_data(s, bs, res) + knn(s, bs * s.steps) + s.r50 + dino_small
        + ["train.snapshot_every_epochs=0", "optim.warmup_epochs=0", f"data.local_views={6 if s.gpu else 2}",
           f"data.local_crop_size={96 if s.gpu else 24}"]
        + shared_train(s, bs, "bf16", True)))
    # 7: intermediate losses: partial back-propagation (+ block-wise hard pairs), SimCLR ResNet-50
    # --smoke: 64 px (at 32 px the block-2 hard-pair crops are 3 x 3 maps: non-finite in CPU bf16 at batch 4)
    simclr_small = [] if s.gpu else ["method.simclr.proj_hidden=32", "method.simclr.proj_dim=16"]
    rows.append(Row(
        "7", "SimCLR R50 partial backprop + hard pairs", SSL, "yaml/interloss/imagenet_simclr_accel.yaml",
        synthetic_data(s, b, res if s.gpu else 64) + knn(s, b * s.steps) + s.r50 + simclr_small
        + ["train.snapshot_every_epochs=0", "optim.warmup_epochs=0", "interloss.partial_backprop=true"]
        + shared_train(s, b, "bf16", True)))
    # 8: thesis ch. 4 Fast Online Minibatch Selection, from the first step
    rows.append(Row(
        "8", "supervised R50 select=fast, torchrun", SUP, "yaml/selection/imagenet_resnet50_fast.yaml",
        synthetic_data(s, b, res) + s.r50
        + ["train.snapshot_every_epochs=0", "select.method=fast", "select.warmup_steps=0",
           f"select.resolution={96 if s.gpu else 16}", "select.eval_every_epochs=2.0", "select.target_top1=0.0"]
        + shared_train(s, b, "bf16", True), torchrun=True))
    # 9: thesis ch. 2 UBN on monocular depth (procedural scenes at half KITTI resolution)
    bd = s.b_depth
    h, w = (128, 416) if s.gpu else (32, 96)
    rows.append(Row(
        "9", "depth DispNet UBN, torchrun", DEPTH, "yaml/ubn/kitti_ubn_f0.25.yaml",
        ["data.name=synthetic", f"data.height={h}", f"data.width={w}", f"data.synthetic_train_size={2 * bd * s.steps}",
         f"data.synthetic_test_size={16 if s.gpu else 4}", "data.labeled_fraction=0.25", f"data.workers={s.workers}",
         "ubn.enabled=true", "train.eval_every_epochs=100.0"]
        + ([] if s.gpu else ["model.width=4", "model.levels=5"]) + shared_train(s, bd, "bf16", True), torchrun=True))
    # 10: does the loader keep the GPU fed (benchmarks/loader_gpu.py's question), JPEG files
    root = jpeg_root or "<jpeg folder>"
    for sub, decode in (("a", "device"), ("b", "worker")):
        rows.append(Row(
            "10" + sub, f"row 1 on JPEGs, data.decode={decode}", SSL, "yaml/imagenette_simsiam.yaml",
            ["data.name=imagefolder", f"data.root={root}", f"data.decode={decode}", f"data.crop_size={res}",
             f"data.eval_resize={256 if s.gpu else res}", f"data.eval_crop={res}", f"data.workers={s.workers}",
             "data.prefetch_factor=2", "train.snapshot_every_epochs=0"]
            + knn(s, b * s.steps) + s.r50 + simsiam_small + shared_train(s, b, "bf16", True), bare=True))
    return rows


def select_rows(rows, spec):
    if not spec:
        return rows
    wanted = [x.strip() for x in spec.split(",") if x.strip()]
    out = [r for r in rows if r.id in wanted or r.id.rstrip("ab") in wanted]
    unknown = [w for w in wanted if not any(r.id == w or r.id.rstrip("ab") == w for r in rows)]
    if unknown:
        sys.exit(f"error: unknown row(s) {', '.join(unknown)}; rows are {', '.join(r.id for r in rows)}")
    return out


# ---------------------------------------------------------------------------------------------
# JPEG folder for row 10 (benchmarks/loader_throughput.py's ImageNet-like images)

def _write_jpegs(job):
    from loader_throughput import SIZES, natural_image   # benchmarks/: imports torchvision, only row 10 pays it
    import numpy as np
    root, indices, classes, small = job
    for i in indices:
        rng = np.random.default_rng([0, i])
        w, h = (64, 48) if small else SIZES[i % len(SIZES)]
        d = os.path.join(root, f"class{i % classes:02d}")
        os.makedirs(d, exist_ok=True)
        natural_image(rng, w, h).save(os.path.join(d, f"{i:05d}.jpg"), quality=90)


def write_jpeg_folder(root, n_train, n_val, small, procs):
    """ImageFolder train/ and val/ of benchmarks/loader_throughput.py's natural-looking JPEGs
    (60 % 500 x 375 as ImageNet; --smoke: 64 x 48), written by `procs` processes."""
    if BENCH not in sys.path:
        sys.path.insert(0, BENCH)
    importlib.import_module("loader_throughput")   # once, before the writers fork
    jobs = []
    for split, n in (("train", n_train), ("val", n_val)):
        chunk = max(1, -(-n // max(procs, 1)))
        jobs += [(os.path.join(root, split), list(range(a, min(a + chunk, n))), 10, small) for a in range(0, n, chunk)]
    if procs <= 1:
        for j in jobs:
            _write_jpegs(j)
        return
    with multiprocessing.get_context("fork").Pool(procs) as pool:
        pool.map(_write_jpegs, jobs)


# ---------------------------------------------------------------------------------------------
# Running a row

def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def torchrun_env():
    """The environment torchrun --nproc-per-node 1 gives its one worker."""
    return {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "1", "GROUP_RANK": "0",
            "ROLE_RANK": "0", "ROLE_WORLD_SIZE": "1", "GROUP_WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(free_port()), "TORCHELASTIC_RESTART_COUNT": "0", "TORCHELASTIC_MAX_RESTARTS": "0",
            "TORCHELASTIC_RUN_ID": "gpu_acceptance"}


def error_line(text):
    """The one line that says why a run failed: the script's own `error: ...` line (common/run.py
    cli), else the exception line of the last traceback (not torchrun's ChildFailedError)."""
    segments = [seg for line in text.splitlines() for seg in line.split("\r")]
    # a progress bar may run into the error line (tqdm writes no newline before it)
    own = [seg[seg.index("error: "):].strip() for seg in segments
           if seg.startswith("error: ") or "]error: " in seg or " error: " in seg]
    if own:
        return own[-1]
    exc, in_traceback = None, False
    for seg in segments:
        if seg.startswith("Traceback (most recent call last)"):
            in_traceback = True
        elif in_traceback and seg.strip() and not seg[0].isspace():
            in_traceback = False
            if "ChildFailedError" not in seg:
                exc = seg.strip()
    if exc:
        return exc
    lines = [seg.strip() for seg in segments if seg.strip()]
    return lines[-1] if lines else "(no output)"


def run_subprocess(row, run_dir, timeout):
    probe = os.path.join(run_dir, "probe")
    child_cmd = [THIS, "--child", probe, row.script] + row.argv() + [f"output_dir={run_dir}"]
    if row.torchrun:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "1"] + child_cmd
    else:
        cmd = [sys.executable] + child_cmd
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    log_path = os.path.join(run_dir, "log.txt")
    t = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        timed_out = False
        try:
            code = proc.wait(timeout=max(timeout, 1))
        except subprocess.TimeoutExpired:
            timed_out = True
            os.killpg(proc.pid, signal.SIGTERM)   # the row's own process group: the scripts save and stop
            try:
                code = proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                code = proc.wait()
    with open(log_path, errors="replace") as f:
        output = f.read()
    probe_data = None
    if os.path.exists(probe + ".0"):
        with open(probe + ".0") as f:
            probe_data = json.load(f)
    return {"rc": code, "timed_out": timed_out, "output": output, "probe": probe_data,
            "wall_s": time.perf_counter() - t, "cmd": " ".join(cmd)}


@contextlib.contextmanager
def isolated(env, argv0):
    """What a script run in this process changes, restored afterwards: the environment, signal
    handlers (StopFlag), torch threads, sys.argv, torch._dynamo's caches and config."""
    saved_env, saved_argv, threads = dict(os.environ), sys.argv[:], torch.get_num_threads()
    # common/run.py's cli ends the process's multiprocessing children at exit (loader workers that
    # ignore SIGTERM): here it may only see the run's own, never this process's other children
    before = set(multiprocessing.active_children())
    active_children = multiprocessing.active_children
    multiprocessing.active_children = lambda: [c for c in active_children() if c not in before]
    handlers = {s: signal.getsignal(s) for s in STOP_SIGNALS}
    dynamo_config = None
    dynamo = sys.modules.get("torch._dynamo")
    if dynamo is not None:
        dynamo.reset()
        dynamo.utils.counters.clear()
        dynamo_config = dynamo.config.get_config_copy()
    os.environ.update(env)
    sys.argv = [argv0]
    try:
        yield
    finally:
        multiprocessing.active_children = active_children
        os.environ.clear()
        os.environ.update(saved_env)
        sys.argv = saved_argv
        torch.set_num_threads(threads)
        for s, h in handlers.items():
            signal.signal(s, h)
        dynamo = sys.modules.get("torch._dynamo")
        if dynamo is not None:
            with warnings.catch_warnings():   # reading deprecated keys warns
                warnings.simplefilter("ignore")
                for k, v in (dynamo_config or {}).items():   # what the script set (recompile limits)
                    if getattr(dynamo.config, k) != v:
                        setattr(dynamo.config, k, v)
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.set_sync_debug_mode(0)


def run_inprocess(row, run_dir):
    """The script's cli(argv) under common/run.py's cli wrapper (exit codes, one-line errors), as
    `python SCRIPT ARGS` would run it, in this process."""
    module = importlib.import_module(row.script[:-3])
    argv = row.argv() + [f"output_dir={run_dir}"]
    env = torchrun_env() if row.torchrun else {}
    buf = io.StringIO()
    state = _probe_state()
    t = time.perf_counter()
    code, probe = 1, None
    with isolated(env, row.script):
        undo = _install_witnesses(state, row.compile)
        try:
            with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
                run_module.cli(lambda: module.cli(argv))
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        except KeyboardInterrupt:
            raise
        except BaseException as e:   # what run.cli does not turn into an exit code: a traceback in a subprocess
            buf.write(traceback.format_exc())
            buf.write(f"\n{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}\n")
            code = 1
        finally:
            undo()
            probe = _probe_result(state)
    output = buf.getvalue()
    with open(os.path.join(run_dir, "log.txt"), "w") as f:
        f.write(output)
    return {"rc": code, "timed_out": False, "output": output, "probe": probe, "wall_s": time.perf_counter() - t,
            "cmd": f"{'torchrun --nproc-per-node 1 ' if row.torchrun else 'python '}{row.script} "
                   + " ".join(argv) + "  (in-process)"}


def analyse(metrics, peak_flops, flops_per_step=None):
    """images/s, MFU and peak memory over the log windows after the first; see the docstring."""
    logs = sorted((m for m in metrics if "images_per_s" in m), key=lambda m: m["step"])
    out = {"log_windows": len(logs), "losses": [m.get("loss") for m in logs], "images_per_s": None,
           "mfu": None, "mfu_source": None, "peak_mem_gb": None, "achieved_tflops": None}
    out["nonfinite_loss"] = any(isinstance(v, float) and not math.isfinite(v) for v in out["losses"])
    mems = [m["peak_mem_gb"] for m in logs if isinstance(m.get("peak_mem_gb"), (int, float))]
    out["peak_mem_gb"] = max(mems) if mems else None
    if len(logs) < 2:
        return out
    first, rest = logs[0], logs[1:]
    out["first_log_time"], out["first_log_step"] = first["time"], first["step"]
    steps, seconds, prev = 0, 0.0, first["step"]
    for m in rest:
        n = m["step"] - prev
        prev = m["step"]
        if m["images_per_s"] > 0:
            steps, seconds = steps + n, seconds + n / m["images_per_s"]
    out["images_per_s"] = steps / seconds if seconds > 0 else None
    last = rest[-1]
    dt = last["time"] - first["time"]
    flops = None
    if "train_pflops" in first and "train_pflops" in last:
        flops = (last["train_pflops"] - first["train_pflops"]) * 1e15
        if "selection_pflops" in first and "selection_pflops" in last:
            flops += (last["selection_pflops"] - first["selection_pflops"]) * 1e15
        out["mfu_source"] = "ledger"
    elif flops_per_step:
        flops = flops_per_step * (last["step"] - first["step"])
        out["mfu_source"] = "plan"
    if flops is not None and dt > 0:
        out["achieved_tflops"] = flops / dt / 1e12
        if peak_flops:
            out["mfu"] = flops / dt / peak_flops
    return out


def depth_flops_per_step(row):
    """train_depth_ubn.py logs no FLOPs: its --plan count (meta tensors) per step."""
    try:
        import train_depth_ubn
        p = train_depth_ubn.plan(train_depth_ubn.parse_config(row.argv()))
        return p["train_pflops"] * 1e15 / max(p["steps"], 1)
    except Exception as e:   # noqa: BLE001 -- a config the plan cannot read: MFU n/a, the row says why
        return f"{type(e).__name__}: {e}"


def judge(row, res, analysis, device_type):
    """(status, error line) of a row from its exit code, output, metrics and probe."""
    if res["timed_out"]:
        return "TIMEOUT", f"killed after the row's time limit ({res['limit_s']:.0f} s)"
    if res["rc"] != 0:
        line = error_line(res["output"])
        if res["rc"] == EXIT_DIVERGED or re.search(r"non-finite|\bnan\b", line, re.I):
            return "NaN", line
        if res["rc"] == EXIT_HOST_SYNC or (re.search(r"synchroni[sz]|HostSync", line) and "config key" not in line):
            return "SYNC", line
        return "FAIL", f"exit code {res['rc']}: {line}"
    if analysis["nonfinite_loss"]:
        return "NaN", f"non-finite loss in metrics.jsonl: {analysis['losses']}"
    if analysis["log_windows"] < 2:
        return "FAIL", (f"metrics.jsonl has {analysis['log_windows']} log window(s); 2 or more needed "
                        f"(the first is skipped)")
    probe = res.get("probe") or {}
    if row.compile:
        if not probe.get("dynamo_graphs"):
            return "FAIL", "contract: train.compile=true but torch.compile produced no graph in the run (not wired?)"
        late = [t for t in probe.get("compile_times", []) if t > analysis["first_log_time"]]
        if late:   # the rows that compile have one step shape: every graph exists after the first window
            return "FAIL", (f"contract: torch.compile compiled {len(late)} more graph(s) after the first log window "
                            f"(step {analysis['first_log_step']}; {probe['dynamo_graphs']} graphs in all): "
                            f"recompiling in steady state")
    if row.forbid_sync:
        if device_type == "cuda" and not probe.get("sync_error_calls"):
            return "FAIL", ("contract: train.forbid_sync=true but torch.cuda.set_sync_debug_mode('error') "
                            "was never called (not wired?)")
        if device_type == "cpu":
            if not probe.get("forbid_witness"):
                return "FAIL", "contract: train.forbid_sync=true but common/host_sync.py has no forbid() (not wired?)"
            if not probe.get("forbid_enabled_calls"):
                return "FAIL", ("contract: train.forbid_sync=true but common/host_sync.forbid(device, enabled=True) "
                                "was never entered (not wired?)")
    return "ok", ""


# ---------------------------------------------------------------------------------------------
# The bare step

def bare_key(cfg):
    t = cfg.train
    return json.dumps({"model": cfg.model, "method": cfg.method, "optim": cfg.optim.name, "amp": t.amp,
                       "cl": t.channels_last, "compile": t.get("compile", False), "backend": t.get("compile_backend"),
                       "batch": t.batch_size, "res": train_resolution(cfg),
                       "views": cfg.data.num_views, "local": [cfg.data.local_views, cfg.data.local_crop_size],
                       "compression": cfg.accel.compression}, sort_keys=True, default=str)


def bare_step(cfg, device, warmup, steps, compile_):
    """images/s of forward + backward + optimizer step of train_ssl.py's model on random device
    tensors of the views' shape (benchmarks/loop_throughput.py's bare step, on the row's
    precision, memory format, optimizer, compression and compile setting)."""
    torch.manual_seed(0)
    t = cfg.train
    threads = torch.get_num_threads()
    if t.threads:   # as run.setup: the loop's thread count (oversubscribed cores are slow, not just shared)
        torch.set_num_threads(t.threads)
    cl = t.channels_last is True
    amp = precision.AMP_DTYPES[t.amp]
    model, _ = build_model(cfg)
    model.to(device, memory_format=torch.channels_last if cl else torch.preserve_format)
    model.train()
    b, res = t.batch_size, train_resolution(cfg)
    total = warmup + steps + 1
    model.prepare(total, total)
    comp = compression.CompressionSchedule(cfg, model, b)
    comp.follow(comp.run_length(total))
    kw = {"device": device} if "device" in inspect.signature(build_optimizer).parameters else {}
    opt = build_optimizer(cfg.optim.name, model.param_groups(), cfg.optim.lr, cfg.optim.momentum,
                          cfg.optim.weight_decay, **kw)
    scaler = torch.amp.GradScaler("cuda", enabled=amp is torch.float16)
    fmt = torch.channels_last if cl else torch.contiguous_format
    views = [torch.randn(b, 3, res, res, device=device).contiguous(memory_format=fmt)
             for _ in range(cfg.data.num_views)]
    lc = cfg.data.local_crop_size
    local = [torch.randn(b, 3, lc, lc, device=device).contiguous(memory_format=fmt)
             for _ in range(cfg.data.local_views)] or None
    forward = torch.compile(model, backend=t.get("compile_backend", "inductor")) if compile_ else model
    gen = torch.Generator().manual_seed(0)

    def step(i):
        model.begin_step(i)
        seq = comp.compression(i, gen)
        with precision.autocast(device, amp):
            loss = forward(views, local_views=local, compression=seq)["loss"]
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        model.after_backward(i)
        scaler.step(opt)
        scaler.update()
        model.on_step(i)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    try:
        for i in range(warmup):
            step(i)
        sync()
        start = time.perf_counter()
        for i in range(warmup, warmup + steps):
            step(i)
        sync()
        return b * steps / (time.perf_counter() - start)
    finally:
        torch.set_num_threads(threads)
        del model, opt, views, local, forward
        gc.collect()
        if compile_ and "torch._dynamo" in sys.modules:
            sys.modules["torch._dynamo"].reset()
        if device.type == "cuda":
            torch.cuda.empty_cache()


def measure_bare(row, s, device, cache):
    """Bare images/s for the row's shape (cached: rows 1 and 10 share one), or (None, why)."""
    import train_ssl
    try:
        cfg = train_ssl.parse_config(row.argv())
    except Exception as e:   # noqa: BLE001 -- the row itself reports the config error
        return None, f"bare step: {type(e).__name__}: {e}"
    compile_ = bool(cfg.train.get("compile", False)) and s.gpu   # --smoke: eager bare step (CPU compile time)
    key = bare_key(cfg) + str(compile_)
    if key not in cache:
        try:
            warmup = 5 if s.gpu else 1
            cache[key] = (bare_step(cfg, device, warmup, max(s.steps - s.log_every, 2), compile_), "")
        except Exception as e:   # noqa: BLE001 -- reported in the row, never fatal
            cache[key] = (None, f"bare step: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
    return cache[key]


# ---------------------------------------------------------------------------------------------
# Output

def json_safe(obj):
    """NaN and inf (a diverged row's losses) as strings: the file stays strict JSON."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def fmt(v, spec, na="n/a"):
    return na if v is None else format(v, spec)


def print_table(results, header):
    print()
    print(header)
    cols = f"{'#':<4}{'row':<44}{'images/s':>10}{'peak GB':>9}{'MFU':>8}{'loop/bare':>11}{'wall s':>8}  status"
    print(cols)
    print("-" * len(cols))
    for r in results:
        mem = fmt(r["peak_mem_gb"], ".1f") + ("*" if r.get("peak_mem_source") == "probe" else "")
        mfu = fmt(None if r["mfu"] is None else 100 * r["mfu"], ".1f") + ("%" if r["mfu"] is not None else "")
        mfu += "*" if r.get("mfu_source") == "plan" and r["mfu"] is not None else ""
        status = r["status"] if r["status"] != "skipped" else f"skipped ({r['error']})"
        print(f"{r['id']:<4}{r['title'][:43]:<44}{fmt(r['images_per_s'], '.1f'):>10}{mem:>9}{mfu:>8}"
              f"{fmt(r['loop_bare_ratio'], '.2f'):>11}{fmt(r['wall_s'], '.0f', '-'):>8}  {status}")
    problems = [r for r in results if r["status"] not in ("ok", "skipped")]
    if problems:
        print("\nerrors:")
        for r in problems:
            print(f"  row {r['id']} ({r['script']}): {r['status']}: {r['error']}")
    notes = [(r["id"], n) for r in results for n in r["notes"]]
    if notes:
        print("\nnotes:")
        for rid, n in notes:
            print(f"  row {rid}: {n}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="CPU, tiny sizes, in-process: the same code paths in seconds")
    p.add_argument("--rows", default="", help="comma-separated row ids (e.g. 1,5,10); default: all")
    p.add_argument("--steps", type=int, default=None, help="steps per row (default 30; --smoke 6)")
    p.add_argument("--log-every", type=int, default=None, help="train.log_every and train.check_every "
                   "(default 10; --smoke 3). The first window must hold every kind of step: the set-up step, a step "
                   "that neither logs nor checks (train.forbid_sync's guard on) and a logging step")
    p.add_argument("--workers", type=int, default=None,
                   help="loader workers per loader (default: cores - 4, at most 12; --smoke 0)")
    p.add_argument("--out", default=None,
                   help="folder for the rows' run directories and the JSON (default: a temporary "
                   "folder, deleted at the end, and ./gpu_acceptance.json)")
    p.add_argument("--json-out", default=None, help="JSON path (default: gpu_acceptance.json in --out or the cwd)")
    p.add_argument("--budget-s", type=float, default=None,
                   help="wall-time budget of the whole run (default 480; --smoke none)")
    p.add_argument("--peak-tflops", type=float, default=None,
                   help="dense bf16 peak of the device, when not in the table")
    p.add_argument("--mode", choices=["auto", "subprocess", "inprocess"], default="auto",
                   help="how rows run (auto: subprocess on the GPU, in-process with --smoke)")
    p.add_argument("--no-bare", action="store_true", help="skip the bare-step measurements")
    p.add_argument("--list", action="store_true", help="print the rows' command lines and exit")
    args = p.parse_args(argv)
    args.steps = args.steps or (6 if args.smoke else 30)
    args.log_every = args.log_every or (3 if args.smoke else 10)
    if args.log_every < 3:
        p.error(f"--log-every {args.log_every}: at least 3 (see --help)")
    if args.steps < 2 * args.log_every:
        p.error(f"--steps {args.steps} gives fewer than 2 log windows of {args.log_every} steps (the first is skipped)")
    budget = args.budget_s if args.budget_s is not None else (0.0 if args.smoke else 480.0)
    inprocess = args.mode == "inprocess" or (args.mode == "auto" and args.smoke)
    s = sizes(args)

    if args.list:
        for r in select_rows(build_rows(args), args.rows):
            launch = "torchrun --nproc-per-node 1" if r.torchrun else "python"
            extra = f"   [CUDA only: {r.cuda_only}]" if r.cuda_only else ""
            print(f"{r.id:<4}{r.title}{extra}\n    {launch} {r.script} {' '.join(r.argv())}")
        return 0

    if s.gpu and not torch.cuda.is_available():
        print("error: no CUDA device here; run with --smoke for the CPU version of the same code paths",
              file=sys.stderr)
        return 2
    t_start = time.perf_counter()
    deadline = t_start + budget if budget > 0 else None
    work = args.out or tempfile.mkdtemp(prefix="gpu_acceptance_")
    os.makedirs(work, exist_ok=True)
    json_out = args.json_out or os.path.join(args.out or os.getcwd(), "gpu_acceptance.json")

    results, name, peak, header, failed = [], None, None, "GPU acceptance", []
    try:
        rows = select_rows(build_rows(args), args.rows)
        jpeg_root = None
        if any(r.id.startswith("10") for r in rows):   # before any CUDA use: the writers fork
            jpeg_root = os.path.join(work, "jpegs")
            shutil.rmtree(jpeg_root, ignore_errors=True)
            t = time.perf_counter()
            write_jpeg_folder(jpeg_root, s.b * s.steps, 20 if s.gpu else 10, small=not s.gpu,
                              procs=min(16, os.cpu_count() or 1) if s.gpu else 1)
            print(f"row 10: wrote {s.b * s.steps} + {20 if s.gpu else 10} JPEGs to {jpeg_root} in "
                  f"{time.perf_counter() - t:.1f} s", flush=True)
            rows = select_rows(build_rows(args, jpeg_root), args.rows)
        device = torch.device("cuda" if s.gpu else "cpu")
        if s.gpu:
            torch.backends.cudnn.benchmark = True
            name = torch.cuda.get_device_name(0)
        else:
            name = "CPU (--smoke)"
        peak = (args.peak_tflops or (peak_tflops(name) if s.gpu else None))
        peak_flops = peak * 1e12 if peak else None
        peak_text = f"bf16 dense peak {peak:g} TFLOP/s" if peak else "MFU n/a (peak unknown)"
        header = (f"GPU acceptance on {name}, {peak_text}; "
                  f"torch {torch.__version__}; {s.steps} steps per row, first {s.log_every}-step window skipped; "
                  f"{'in-process' if inprocess else 'one process per row'}")
        if not s.gpu:
            header += ("\nsmoke: CPU, ResNet-18 width 8 for ResNet-50, ViT-T for ViT-S, 32-64 px, batch 4, compile "
                       "backend aot_eager, 0 loader workers, gloo for the torchrun rows, eager bare steps")
        if s.gpu and os.path.isdir("/dev/shm") and shutil.disk_usage("/dev/shm").free < 4e9:
            shm = shutil.disk_usage("/dev/shm").free / 1e9
            header += (f"\nWARNING: /dev/shm has {shm:.1f} GB free: loader workers hand batches over in shared "
                       f"memory (lower --workers if rows die with a bus error)")
        print(header, flush=True)
        bare_cache = {}
        # the compiled rows last: their compile time is the least predictable part of the budget
        order = [r for r in rows if not r.compile] + [r for r in rows if r.compile]
        for i, row in enumerate(order):
            r = {"id": row.id, "index": rows.index(row), "title": row.title, "script": row.script,
                 "torchrun": row.torchrun, "status": "", "error": "", "images_per_s": None, "peak_mem_gb": None,
                 "mfu": None, "bare_images_per_s": None, "loop_bare_ratio": None, "wall_s": None, "notes": []}
            results.append(r)
            prefix = f"[{i + 1:2d}/{len(rows)}] row {row.id:<4}{row.title}"
            if not s.gpu and row.cuda_only:
                r.update(status="skipped", error=f"CUDA only: {row.cuda_only}")
                print(f"{prefix}: skipped (CUDA only: {row.cuda_only})", flush=True)
                continue
            left = deadline - time.perf_counter() if deadline else None
            if left is not None and left < 20:
                r.update(status="TIMEOUT", error=f"not run: the --budget-s {budget:g} s was spent")
                print(f"{prefix}: not run (time budget spent)", flush=True)
                continue
            run_dir = os.path.join(work, f"row{row.id}")
            shutil.rmtree(run_dir, ignore_errors=True)   # a leftover checkpoint would resume instead of train
            os.makedirs(run_dir)
            print(f"{prefix} ...", flush=True)
            limit = row.timeout if left is None else min(row.timeout, left)
            res = run_inprocess(row, run_dir) if inprocess else run_subprocess(row, run_dir, limit)
            res["limit_s"] = limit
            fps = depth_flops_per_step(row) if row.script == DEPTH else None
            if isinstance(fps, str):
                r["notes"].append(f"MFU n/a: the depth plan failed ({fps.splitlines()[0][:160]})")
                fps = None
            a = analyse(read_jsonl(os.path.join(run_dir, "metrics.jsonl")), peak_flops, fps)
            status, error = judge(row, res, a, device.type)
            probe = res.get("probe") or {}
            r.update(status=status, error=error, images_per_s=a["images_per_s"], mfu=a["mfu"],
                     mfu_source=a["mfu_source"], achieved_tflops=a["achieved_tflops"], peak_mem_gb=a["peak_mem_gb"],
                     peak_mem_source="log" if a["peak_mem_gb"] is not None else None, wall_s=res["wall_s"],
                     rc=res["rc"], losses=a["losses"], log_windows=a["log_windows"], probe=probe, cmd=res["cmd"],
                     run_dir=run_dir)
            if s.gpu and a["peak_mem_gb"] is None and probe.get("cuda_peak_gb") is not None:
                r.update(peak_mem_gb=probe["cuda_peak_gb"], peak_mem_source="probe")
                r["notes"].append("metrics.jsonl has no peak_mem_gb: peak GB (*) is the process's max_memory_allocated")
            if a["mfu_source"] == "plan" and a["mfu"] is not None:
                r["notes"].append("MFU (*) from train_depth_ubn.py's --plan FLOPs per step (the script logs none)")
            if row.torchrun and not s.gpu:
                r["notes"].append(("torchrun's environment in this process" if inprocess else "torchrun")
                                  + ", gloo (nccl on the GPU)")
            if status != "ok":
                tail = "\n".join(res["output"].strip().splitlines()[-15:])
                r["output_tail"] = tail
            if row.bare and not args.no_bare:
                left = deadline - time.perf_counter() if deadline else None
                if left is not None and left < (90 if row.compile else 30):
                    r["notes"].append("bare step skipped: time budget")
                else:
                    bare, why = measure_bare(row, s, device, bare_cache)
                    r["bare_images_per_s"] = bare
                    if bare and a["images_per_s"]:
                        r["loop_bare_ratio"] = a["images_per_s"] / bare
                    if why:
                        r["notes"].append(why)
                    if not s.gpu and row.compile:
                        r["notes"].append("--smoke: the bare step runs eager")
            print(f"{prefix}: {status} in {res['wall_s']:.1f} s, {fmt(a['images_per_s'], '.1f')} images/s"
                  + (f" -- {error}" if error else ""), flush=True)
    finally:
        wall = time.perf_counter() - t_start
        results.sort(key=lambda r: r["index"])
        failed = [r for r in results if r["status"] not in ("ok", "skipped")]
        if results:
            print_table(results, header + f"\n{len(results)} rows in {wall:.0f} s")
        report = {"device": name, "torch": torch.__version__, "smoke": args.smoke,
                  "steps": s.steps, "log_every": s.log_every, "peak_bf16_tflops": peak,
                  "mode": "inprocess" if inprocess else "subprocess", "budget_s": budget, "wall_s": wall,
                  "ok": not failed and bool(results), "rows": results}
        os.makedirs(os.path.dirname(os.path.abspath(json_out)), exist_ok=True)
        with open(json_out, "w") as f:
            json.dump(json_safe(report), f, indent=1, default=str)
        print(f"\nJSON: {json_out}")
        if args.out is None:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"run directories: {work}")
    if failed:
        print(f"FAILED: {len(failed)} of {len(results)} rows ({', '.join(r['id'] for r in failed)})")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
