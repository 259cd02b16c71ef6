"""Run logging on rank 0: metrics.jsonl (one JSON object per line), tensorboard scalars, and
printed lines. Other ranks get a logger that does nothing."""
import json
import os
import sys
import time


def write_run_files(output_dir, cfg, **info):
    """The run directory's record of what ran: the resolved config (config.yaml) and
    run_info.json (the command line plus `info`: git commit, world size, data, ...)."""
    from common.config import save_config
    os.makedirs(output_dir, exist_ok=True)
    save_config(cfg, os.path.join(output_dir, "config.yaml"))
    with open(os.path.join(output_dir, "run_info.json"), "w") as f:
        json.dump(dict(info, argv=sys.argv), f, indent=1)


class RunLogger:
    def __init__(self, output_dir, enabled=True, tensorboard=True):
        self.enabled = enabled
        self.writer = None
        if not enabled:
            return
        os.makedirs(output_dir, exist_ok=True)
        self.jsonl = open(os.path.join(output_dir, "metrics.jsonl"), "a", buffering=1)
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
                self.writer = SummaryWriter(os.path.join(output_dir, "tb"))
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
