"""Checkpoints: written atomically, read safely, resumed strictly, and the RNG state that makes a
resumed run continue exactly.

    ckpt = checkpoint.Checkpointer(cfg.output_dir, rt, cfg)    # takes output_dir's run lock
    state = ckpt.restore(model=model, optimizer=optimizer)    # {} when starting fresh
    ckpt.save(step=step, model=model, optimizer=optimizer)    # rank 0, atomically

A checkpoint is written to a temporary file in the same folder, flushed to disk and renamed
over the old one, so a run killed while saving leaves the previous checkpoint intact. It holds
only tensors, numbers, strings and containers, so it loads with torch.load(weights_only=True).
Every checkpoint carries the resolved config and the git commit; a resume with another config
is refused unless train.allow_changes names the change.
"""
import glob
import os
import pickle
import random
import subprocess
import zipfile

import numpy as np
import torch

from common import dist, run_lock
from common.config import InputError, diff_configs


class CheckpointError(InputError):
    """A checkpoint that cannot be read or does not belong to this run. The message names it."""


class Diverged(Exception):
    """The loss (or the weights about to be saved) became NaN or inf. Nothing was saved after it."""

    def __init__(self, step, checkpoint_path, what="loss"):
        last = checkpoint_path if os.path.exists(checkpoint_path) else "none written yet"
        super().__init__(f"non-finite {what} at step {step}: the run diverged; last good checkpoint: {last} "
                         f"(lower the learning rate, or resume from it with other settings)")


def save_atomic(obj, path):
    tmp = f"{path}.tmp.{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:   # a full disk, a signal: drop the partial file, the old checkpoint stays
        try:
            os.remove(tmp)
        except OSError:
            pass
        raise


def load(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def rng_state():
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state):
    random.setstate(state["python"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def git_commit():
    """HEAD of the repo this code lives in ('+dirty' if it has uncommitted changes), or 'unknown'."""
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True,
                             timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return (sha + ("+dirty" if dirty else "")) if sha else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def os_error_line(e):
    """One line for an OSError: what failed, on which file, and the system's reason."""
    name = f" {e.filename}" if getattr(e, "filename", None) else ""
    return f"{type(e).__name__}{name}: {e.strerror or e}"


class Checkpointer:
    """output_dir/checkpoint.pt: written atomically by rank 0 (temporary file, fsync, rename),
    read by every rank on resume. Temporary files of a save that was killed are removed on start.
    Every checkpoint carries the resolved config and the git commit."""

    def __init__(self, output_dir, rt, cfg):
        self.dir, self.rt, self.config = output_dir, rt, cfg.to_dict()
        self.path = os.path.join(output_dir, "checkpoint.pt")
        self.commit = git_commit()
        self.allow = str(cfg.train.get("allow_changes") or "")
        take_lock(output_dir, rt)   # one run per output_dir (common/run_lock.py), before anything is written
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
        refused, noted = resume_changes(changed, self.allow)
        if refused:
            raise CheckpointError(
                f"{self.dir} holds a run with another config: {'; '.join(refused[:6])}"
                f"{f' (+{len(refused) - 6} more)' if len(refused) > 6 else ''}. Resume with the saved values, "
                f"use another output_dir, or allow the change: train.allow_changes="
                f"{','.join(c.split(':')[0] for c in refused)}")
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
            set_rng_state(state["rng"])
        if self.rt.is_main:
            print(f"resuming from {self.path} at step {state.get('step', 0)}"
                  + (f"; config changed: {', '.join(noted)}" if noted else ""), flush=True)
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
        state.update(rng=rng_state(), config=self.config, git_commit=self.commit,
                     world_size=self.rt.world)
        for path in [self.path] + ([os.path.join(self.dir, snapshot)] if snapshot else []):
            try:
                save_atomic(state, path)
            except (OSError, RuntimeError) as e:   # torch reports a failed write as a RuntimeError
                reason = os_error_line(e) if isinstance(e, OSError) else \
                    f"the write stopped short: disk full or a file-size limit? torch: {str(e).splitlines()[0][:120]}"
                raise CheckpointError(f"could not write {path} ({reason}); the previous checkpoint is "
                                      f"intact: free space or fix the folder, then re-run to resume") from None


# Keys that cannot change a run's trajectory (where it logs, saves, checks and evaluates, how many
# workers and threads serve it, how it is compiled): changed on resume, they pass with a note.
# Any other change is refused unless train.allow_changes names it (a key, a section, or "all").
FREE_ON_RESUME = ("output_dir", "paper", "knn.", "eval.", "data.workers", "data.prefetch_factor",
                  "train.log_every", "train.check_every", "train.forbid_sync", "train.ckpt_every_steps",
                  "train.snapshot_every_epochs", "train.stop_at_step", "train.threads", "train.compile",
                  "train.compile_backend", "train.allow_changes", "train.eval_every_epochs")


def _matches(key, names):
    return any(key == n or key.startswith(n if n.endswith(".") else n + ".") for n in names)


def resume_changes(changed, allow=""):
    """Split diff_configs lines ("key: old -> new") into (refused, noted): changes that could
    move the trajectory and train.allow_changes does not allow, and the rest."""
    allowed = tuple(a.strip() for a in str(allow).split(",") if a.strip())
    refused, noted = [], []
    for line in changed:
        key = line.split(":")[0]
        free = _matches(key, FREE_ON_RESUME) or "all" in allowed or _matches(key, allowed)
        (noted if free else refused).append(line)
    return refused, noted


def take_lock(output_dir, rt):
    """Rank 0 takes output_dir's run lock; every rank learns whether it did (one all-reduce), so
    a refused run ends on every rank with the holder's line."""
    error = None
    if rt.is_main:
        try:
            run_lock.RunLock(output_dir).acquire()
        except (run_lock.RunLocked, OSError) as e:   # OSError: output_dir a file, not writable, ...
            error = e
    refused = dist.all_reduce_max(torch.tensor(float(error is not None), device=rt.device)).item()
    if error is not None:
        raise error
    if refused:
        raise run_lock.RunLocked(f"rank 0 could not take {output_dir} (its error names why)")


def load_checkpoint(path):
    """torch.load(weights_only=True) with a one-line error naming the file when it is missing,
    truncated or not a checkpoint (never a fall-back to unsafe unpickling)."""
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        state = load(path)
    except (RuntimeError, EOFError, OSError, ValueError, pickle.UnpicklingError, zipfile.BadZipFile) as e:
        raise CheckpointError(f"{path} is not a readable checkpoint ({type(e).__name__}); "
                              f"it may be truncated or not written by this code") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} is not a readable checkpoint (holds a {type(state).__name__})")
    return state
