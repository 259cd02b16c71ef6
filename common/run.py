"""The run skeleton every training script shares: set-up, DDP wrapping, checkpoints with strict
resume, the cross-rank stop flag, the batch stream and the command-line error wrapper.

    rt = run.setup(cfg.train)                           # device, ranks, threads, seed
    ddp = run.wrap_ddp(model, rt)
    ckpt = run.Checkpointer(cfg.output_dir, rt, cfg)
    state = ckpt.restore(model=model, optimizer=optimizer)   # {} when starting fresh
    stop = run.StopFlag(rt.device)                      # SIGTERM / SIGINT / SIGUSR1 -> save and exit
    ...
    stop_requested, diverged = stop.check(loss)         # all ranks, every step
    if diverged:
        raise run.Diverged(step, ckpt.path)              # exit code EXIT_DIVERGED, nothing saved
    if stop_requested:
        ckpt.save(step=step, model=model, optimizer=optimizer)
        raise run.Stopped(step, stop.signum)             # exit code EXIT_STOPPED: resume me

    if __name__ == "__main__":
        run.cli(lambda: main(parse_config(sys.argv[1:])))
"""
import dataclasses
import glob
import multiprocessing
import os
import pickle
import signal
import sys
import zipfile

import torch
from torch.nn.parallel import DistributedDataParallel as DDP

from common import checkpoint, dist
from common.config import ConfigError, InputError, diff_configs

# A run stopped early (pre-emption, time limit warning, Ctrl-C) exits with this code, not 0, so a
# scheduler or requeueing launcher can tell it from a finished run: 75 is EX_TEMPFAIL
# ("temporary failure; the user is invited to retry").
EXIT_STOPPED = 75
# Bad configuration, data or checkpoint: a one-line message and this code.
EXIT_BAD_INPUT = 2
# The loss or the weights became NaN / inf: the last good checkpoint is kept, nothing newer is saved.
EXIT_DIVERGED = 3
# SIGTERM: scancel, Slurm's time limit and pre-emption, `timeout`; SIGINT: Ctrl-C; SIGUSR1:
# `sbatch --signal=USR1@90`; SIGUSR2: submitit's time-limit / pre-emption warning (submit.py).
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2)


class CheckpointError(InputError):
    """A checkpoint that cannot be read or does not belong to this run. The message names it."""


class Diverged(Exception):
    """The loss (or the weights about to be saved) became NaN or inf. Nothing was saved after it."""

    def __init__(self, step, checkpoint_path, what="loss"):
        last = checkpoint_path if os.path.exists(checkpoint_path) else "none written yet"
        super().__init__(f"non-finite {what} at step {step}: the run diverged; last good checkpoint: {last} "
                         f"(lower the learning rate, or resume from it with other settings)")


class Stopped(Exception):
    """Raised after the checkpoint of a run stopped early has been written. By a signal (`signum`:
    pre-emption, time limit): exit code EXIT_STOPPED, so a scheduler or launcher can tell it from
    a finished run. By train.stop_at_step (a planned partial run): exit code 0."""

    def __init__(self, step, signum=None):
        reason = f"{signal.Signals(signum).name} received" if signum else "train.stop_at_step reached"
        super().__init__(f"{reason}: stopped at step {step} after saving; re-run the same command to resume")
        self.step, self.code = step, EXIT_STOPPED if signum else 0


@dataclasses.dataclass
class Runtime:
    device: torch.device
    world: int
    rank: int

    @property
    def is_main(self):
        return self.rank == 0


def setup(train_cfg):
    """Process group (torchrun's environment, or one process), device, threads, cuDNN autotuning
    and the seed that gives every rank the same initial weights."""
    device = dist.init_distributed(train_cfg.device)
    rt = Runtime(device, dist.world_size(), dist.rank())
    batch = train_cfg.batch_size
    if batch <= 0 or batch % rt.world:
        raise ConfigError(f"train.batch_size={batch} must be a positive multiple of the {rt.world} rank(s)")
    if train_cfg.epochs < 0:
        raise ConfigError(f"train.epochs={train_cfg.epochs} must be >= 0")
    if train_cfg.threads:
        torch.set_num_threads(train_cfg.threads)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    torch.manual_seed(train_cfg.seed)
    return rt


def wrap_ddp(model, rt, find_unused_parameters=False):
    """DistributedDataParallel over the ranks (the model itself on one rank). Gradients are
    averaged over ranks, so a loss that is a mean over the local batch gives the global mean."""
    if rt.world == 1:
        return model
    return DDP(model, device_ids=[rt.device.index] if rt.device.type == "cuda" else None,
               find_unused_parameters=find_unused_parameters)


def stream(loader, sampler, start_step):
    """The loader's batches forever, positioned at `start_step` (exact resume): for runs whose
    length is counted in steps rather than passes over one loader."""
    epoch, skip = divmod(start_step, sampler.steps_per_epoch)
    while True:
        sampler.set_epoch(epoch, skip)
        yield from loader
        epoch, skip = epoch + 1, 0


class Checkpointer:
    """output_dir/checkpoint.pt: written atomically by rank 0 (temporary file, fsync, rename),
    read by every rank on resume. Temporary files of a save that was killed are removed on start.
    Every checkpoint carries the resolved config and the git commit."""

    def __init__(self, output_dir, rt, cfg):
        self.dir, self.rt, self.config = output_dir, rt, cfg.to_dict()
        self.path = os.path.join(output_dir, "checkpoint.pt")
        self.commit = checkpoint.git_commit()
        os.makedirs(output_dir, exist_ok=True)
        if rt.is_main:
            for tmp in glob.glob(os.path.join(glob.escape(output_dir), "*.pt.tmp.*")):
                os.remove(tmp)  # a save killed mid-write; the previous checkpoint is intact

    def load(self, path=None):
        return load_checkpoint(path or self.path)

    def restore(self, **objects):
        """Load checkpoint.pt, if any, into `objects` (anything with load_state_dict, strictly)
        and restore the RNG states. Returns the checkpoint's dict ({} when starting fresh)."""
        if not os.path.exists(self.path):
            return {}
        state = self.load()
        changed = diff_configs(state.get("config", {}), self.config)
        for name, obj in objects.items():
            if name not in state:
                raise CheckpointError(f"{self.path} has no '{name}' entry: it was written by another script")
            try:
                obj.load_state_dict(state[name])
            except (RuntimeError, KeyError, ValueError) as e:
                keys = "; ".join(changed[:6]) or "none of the config keys"
                raise CheckpointError(
                    f"{self.dir} holds a different run ({name} does not fit: {str(e).splitlines()[0][:120]}); "
                    f"changed: {keys}. Use another output_dir to start fresh, or the old config to resume") from None
        if "rng" in state:
            checkpoint.set_rng_state(state["rng"])
        if self.rt.is_main:
            print(f"resuming from {self.path} at step {state.get('step', 0)}"
                  + (f"; config changed: {', '.join(changed)}" if changed else ""), flush=True)
        return state

    def save(self, snapshot=None, **entries):
        """Write checkpoint.pt (and `snapshot`, a file name in output_dir, when given) on rank 0.
        Entries with a state_dict() are stored as their state dict."""
        model = entries.get("model")
        if model is not None and not all(torch.isfinite(t).all() for t in model.state_dict().values()
                                         if t.is_floating_point()):
            # every rank holds the same weights, so every rank raises: never overwrite a good checkpoint
            raise Diverged(entries.get("step", "?"), self.path, what="weights")
        if not self.rt.is_main:
            return
        state = {k: (v.state_dict() if hasattr(v, "state_dict") else v) for k, v in entries.items()}
        state.update(rng=checkpoint.rng_state(), config=self.config, git_commit=self.commit,
                     world_size=self.rt.world)
        checkpoint.save_atomic(state, self.path)
        if snapshot:
            checkpoint.save_atomic(state, os.path.join(self.dir, snapshot))


def load_checkpoint(path):
    """torch.load(weights_only=True) with a one-line error naming the file when it is missing,
    truncated or not a checkpoint (never a fall-back to unsafe unpickling)."""
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        state = checkpoint.load(path)
    except (RuntimeError, EOFError, OSError, ValueError, pickle.UnpicklingError, zipfile.BadZipFile) as e:
        raise CheckpointError(f"{path} is not a readable checkpoint ({type(e).__name__}); "
                              f"it may be truncated or not written by this code") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} is not a readable checkpoint (holds a {type(state).__name__})")
    return state


class StopFlag:
    """SIGTERM (Slurm's scancel and time limit, `timeout`), SIGINT (Ctrl-C) and SIGUSR1 (Slurm's
    `--signal=USR1@90` warning) ask the run to stop. Ranks may receive the signal a step apart,
    so `check(loss)` all-reduces the flag with the loss's finiteness (two scalars per step) and every rank stops at the same step.
    Loader workers ignore these signals (data/__init__.py), so a signal sent to the whole process
    group reaches the main process alone in effect."""

    active = None   # the StopFlag of this process, for `cli`'s hand-over

    def __init__(self, device):
        self.device, self.signum = device, None
        # a launcher's own handlers (submitit's checkpoint-and-requeue) run after our checkpoint
        self.previous = {s: signal.getsignal(s) for s in STOP_SIGNALS}
        for s in STOP_SIGNALS:
            signal.signal(s, self._handle)
        StopFlag.active = self

    def hand_over(self):
        """After the checkpoint is written: give the received signal to the handler that was
        installed before ours, if it is a Python function (submit.py's submitit job requeues
        itself there and exits). Default handlers (SIG_DFL / SIG_IGN) are not called."""
        handler = self.previous.get(self.signum)
        if callable(handler):
            handler(self.signum, None)

    def _handle(self, signum, frame):
        self.signum = signum

    def check(self, loss):
        """(stop requested on any rank, loss non-finite on any rank): one all-reduce of two
        scalars, so checking every step costs one small synchronisation."""
        flags = torch.stack([torch.tensor(0.0 if self.signum is None else 1.0, device=loss.device),
                             (~torch.isfinite(loss.detach().float())).float()])
        flags = dist.all_reduce_sum(flags).tolist()
        return flags[0] > 0, flags[1] > 0



def one_line(e):
    """The message of a bad-input error. Raised in a DataLoader worker, torch re-raises it in the
    main process wrapped in the worker's traceback ("Caught DataError in DataLoader worker ...
    Original Traceback ..."): keep only the original message, its last line."""
    msg = str(e)
    if "Original Traceback" in msg:
        msg = msg.strip().splitlines()[-1].split(": ", 1)[-1]   # "data.folder.DataError: <message>"
    return msg


def cli(run_main):
    """Run a script's main: bad input (config, data, checkpoint) is one line on stderr and exit
    code 2; a run stopped early exits with EXIT_STOPPED after its checkpoint was written."""
    code = 0
    try:
        run_main()
    except InputError as e:  # ConfigError, data.DataError, CheckpointError
        print(f"error: {one_line(e)}", file=sys.stderr)
        code = EXIT_BAD_INPUT
    except Diverged as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        code = EXIT_DIVERGED
    except Stopped as e:
        if dist.is_main():
            print(str(e), file=sys.stderr, flush=True)
        code = e.code
        if StopFlag.active is not None:
            dist.cleanup()
            StopFlag.active.hand_over()   # may requeue and exit (submit.py)
    finally:
        dist.cleanup()
        end_loader_workers()
    sys.exit(code)


def end_loader_workers():
    """Loader workers ignore SIGTERM (data.ignore_stop_signals), so multiprocessing's exit hook,
    which terminates leftover daemonic children with SIGTERM and joins them, would wait forever
    for the workers of a loader that an error left open (a corrupt image, say); collecting that
    loader instead waits 5 s per worker in its shutdown. The process is ending: kill the workers
    (torch's SIGCHLD handler, which would call that a worker failure, set aside); the loaders
    left are dropped at interpreter exit, where torch makes their shutdown a no-op."""
    children = multiprocessing.active_children()
    if children:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    for child in children:
        child.kill()
    for child in children:
        child.join(timeout=5)
