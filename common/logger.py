"""Run logging on rank 0: metrics.jsonl (one JSON object per line), tensorboard scalars, and
printed lines. Other ranks get a logger that does nothing."""
import json
import os
import sys
import time

import torch
import yaml

from common import dist
from common.config import Config, save_config
from common.precision import upcast


def write_run_files(output_dir, cfg, **info):
    """The run directory's record of what ran: the resolved config (config.yaml; a resumed run
    whose config differs keeps the earlier one as config.N.yaml, N = 1, 2, ... oldest first) and
    run_info.json (the command line plus `info`: git commit, world size, data, ...)."""
    os.makedirs(output_dir, exist_ok=True)
    path = os.path.join(output_dir, "config.yaml")
    if os.path.exists(path):   # a resumed run: keep the config it ran with if this one differs
        with open(path) as f:
            before = f.read()
        if before != yaml.safe_dump(cfg.to_dict() if isinstance(cfg, Config) else cfg, sort_keys=False):
            n = 1
            while os.path.exists(os.path.join(output_dir, f"config.{n}.yaml")):
                n += 1
            os.replace(path, os.path.join(output_dir, f"config.{n}.yaml"))
    save_config(cfg, path)
    with open(os.path.join(output_dir, "run_info.json"), "w") as f:
        json.dump(dict(info, argv=sys.argv), f, indent=1)


def drop_rows_after(path, step):
    """Rewrite metrics.jsonl without the rows of steps after `step` (atomically): a run resumed
    from its step-`step` checkpoint logs those steps again, and every step must appear once."""
    if not os.path.exists(path):
        return
    with open(path) as f:
        lines = f.readlines()
    keep = []
    for line in lines:
        try:
            if json.loads(line).get("step", 0) <= step:
                keep.append(line)
        except json.JSONDecodeError:  # a line cut by the kill
            pass
    if len(keep) != len(lines):
        tmp = f"{path}.tmp.{os.getpid()}"
        with open(tmp, "w") as f:
            f.writelines(keep)
        os.replace(tmp, path)


class RunLogger:
    """resume_step: the step the run starts from. Rows logged after it by an earlier, killed run
    are dropped (metrics.jsonl) or purged (TensorBoard), so a resumed run leaves one row per step;
    0 (a fresh start) clears the logs of a run that died before its first checkpoint."""

    def __init__(self, output_dir, enabled=True, tensorboard=True, resume_step=None):
        self.enabled = enabled
        self.writer = None
        if not enabled:
            return
        os.makedirs(output_dir, exist_ok=True)
        path = os.path.join(output_dir, "metrics.jsonl")
        if resume_step == 0 and os.path.exists(path):
            os.remove(path)
        elif resume_step is not None:
            drop_rows_after(path, resume_step)
        self.jsonl = open(path, "a", buffering=1)
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
                self.writer = SummaryWriter(os.path.join(output_dir, "tb"),
                                            purge_step=None if resume_step is None else resume_step + 1)
            except ImportError:  # tensorboard is in requirements.txt; a bare torch install still runs
                print("tensorboard not installed: logging to metrics.jsonl only", file=sys.stderr)

    def log(self, metrics, step):
        if not self.enabled:
            return
        record = {"time": round(time.time(), 3), "step": step, **metrics}
        self.jsonl.write(json.dumps(record) + "\n")
        if self.writer is not None:
            for k, v in metrics.items():
                if isinstance(v, (int, float)) and k not in ("step", "epoch"):
                    self.writer.add_scalar(k, v, step)

    def print(self, *args):
        if self.enabled:
            print(*args, flush=True)

    def close(self):
        if self.enabled:
            self.jsonl.close()
            if self.writer is not None:
                self.writer.close()


class LossWindow:
    """The training loss and throughput between two log lines: the loss summed on the device (no
    synchronisation per step), averaged over ranks when the line is written; images/s over all
    ranks per second of wall time, data waits included."""

    def __init__(self, device):
        self.sum, self.steps, self.t = torch.zeros((), device=device, dtype=torch.float64), 0, time.perf_counter()

    def add(self, loss):
        self.sum += upcast(loss.detach())
        self.steps += 1

    def flush(self, global_batch):
        """(mean loss over the window and the ranks, images per second); starts a new window."""
        mean = dist.all_reduce_mean(self.sum / max(self.steps, 1)).item()
        ips = self.steps * global_batch / (time.perf_counter() - self.t)
        self.sum.zero_()
        self.steps, self.t = 0, time.perf_counter()
        return mean, ips
