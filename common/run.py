"""The run skeleton every training script shares: set-up, DDP wrapping, compilation, the batch
stream, the cross-rank stop flag and the command-line error wrapper (checkpoints:
common/checkpoint.py).

    rt = run.setup(cfg.train)                           # device, ranks, threads, seed
    ddp = run.wrap_ddp(model, rt)
    ckpt = checkpoint.Checkpointer(cfg.output_dir, rt, cfg)   # common/checkpoint.py
    state = ckpt.restore(model=model, optimizer=optimizer)   # {} when starting fresh
    logger = run.start(cfg, rt, ckpt, state.get("step", 0), banner)   # run files, metrics.jsonl
    stop = run.StopFlag(rt.device, cfg.train.check_every)   # any of STOP_SIGNALS -> save and exit
    ...
    stop_requested, diverged = stop.check(loss, step, force=saving)   # reads every check_every steps
    if diverged:
        raise checkpoint.Diverged(diverged, ckpt.path)   # exit code EXIT_DIVERGED, nothing saved
    if stop_requested:
        ckpt.save(step=step, model=model, optimizer=optimizer)
        raise run.Stopped(step, stop.signum)             # exit code EXIT_STOPPED: resume me

    if __name__ == "__main__":
        run.cli(lambda: main(parse_config(sys.argv[1:])))
"""
import ctypes
import dataclasses
import multiprocessing
import signal
import sys

import torch
from torch.nn.parallel import DistributedDataParallel as DDP

from common import dist, host_sync, run_lock
from common.checkpoint import Diverged, os_error_line
from common.config import ConfigError, InputError
from common.host_sync import HostSyncError
from common.logger import RunLogger, write_run_files

# A run stopped early (pre-emption, time limit warning, Ctrl-C) exits with this code, not 0, so a
# scheduler or requeueing launcher can tell it from a finished run: 75 is EX_TEMPFAIL
# ("temporary failure; the user is invited to retry").
EXIT_STOPPED = 75
# Bad configuration, data or checkpoint: a one-line message and this code.
EXIT_BAD_INPUT = 2
# The loss or the weights became NaN / inf: the last good checkpoint is kept, nothing newer is saved.
EXIT_DIVERGED = 3
# A step that does not log synchronised the host with the device under train.forbid_sync=true.
EXIT_HOST_SYNC = 4
# SIGTERM: scancel, Slurm's time limit and pre-emption, `timeout`; SIGINT: Ctrl-C; SIGUSR1:
# `sbatch --signal=USR1@90`; SIGUSR2: submitit's time-limit / pre-emption warning (submit.py).
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2)


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
    else:
        keep_freed_memory()
    torch.manual_seed(train_cfg.seed)
    return rt


def keep_freed_memory():
    """On the CPU a step's tensors (a batch of views, activations: tens of MB each) are allocated
    and freed every step. glibc's malloc hands blocks above its mmap threshold back to the system
    when they are freed and maps them again, zero-filled page by page, on the next allocation,
    so each step pays its page faults again (benchmarks/step_overhead.py measured SimSiam's loop
    overhead at batch 256 falling from 94 to 31-42 ms per step with these settings, most of it in
    the device augmentation). Keep such blocks in the heap for reuse: blocks up to 256 MB come
    from the heap (M_MMAP_THRESHOLD), which is given back only beyond 1 GB free (M_TRIM_THRESHOLD).
    Loader workers forked afterwards inherit it. Other C libraries (musl, macOS): left alone."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3   # malloc.h
    return bool(libc.mallopt(m_mmap_threshold, 256 << 20)) and bool(libc.mallopt(m_trim_threshold, 1 << 30))


def wrap_ddp(model, rt, find_unused_parameters=False):
    """DistributedDataParallel whenever a process group is up (torchrun, one rank included: the
    nccl / gloo path then runs as on a node); the model itself otherwise. Gradients are averaged
    over ranks, so a loss that is a mean over the local batch gives the global mean.
    gradient_as_bucket_view: gradients live in the all-reduce buckets (no copy, less memory).
    static_graph: the same parameters get gradients every step, which lets DDP skip its per-step
    search for unused ones; not with partial back-propagation (find_unused_parameters), where
    blocks and heads sit out some steps."""
    if not dist.is_dist():
        return model
    per_rank = sum(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and not getattr(m, "global_stats", False)
                   and not isinstance(m, torch.nn.SyncBatchNorm) for m in model.modules())
    if per_rank and rt.world > 1 and rt.is_main:
        print(f"warning: {per_rank} BatchNorm layer(s) normalise with per-rank statistics ({rt.world} ranks, "
              f"train.sync_bn=false): the run is not the 1-rank run split over ranks (MoCo's shuffle BN means "
              f"it; other methods' paper recipes use train.sync_bn=true)", flush=True)
    return DDP(model, device_ids=[rt.device.index] if rt.device.type == "cuda" else None,
               find_unused_parameters=find_unused_parameters, gradient_as_bucket_view=True,
               static_graph=not find_unused_parameters)


def compile_units(model):
    """The modules train.compile compiles: each backbone's repeated blocks (`compile_units()`:
    ResNet stages, ViT blocks), wherever they sit (online and momentum encoders, classifiers), so
    sequence compression, partial back-propagation and losses stay eager between them; a model
    without such blocks is compiled whole."""
    units = [u for m in model.modules() if hasattr(m, "compile_units") for u in m.compile_units()]
    return units or [model]


class Compiled:
    """train.compile: torch.compile each unit in place (nn.Module.compile: state_dict keys
    unchanged), one graph per distinct input shape (dynamic=False: the schedules change shapes in
    a few stages, each worth its own static graph). `shapes`: how many distinct step shapes the
    run's schedules produce (resolutions x compression stages); the recompile limit is set from it
    (x4: training / evaluation mode, with / without gradient) and hitting it is an error, never a
    silent fall-back to eager. Units of one class share compiled code (ResNet stages are all
    nn.Sequential), so the limit also counts the distinct units (by parameter shapes; a ViT's
    blocks are one). `report(step)` returns a line when new graphs were compiled."""

    def __init__(self, model, train_cfg, shapes=1):
        import torch._dynamo
        self.enabled = bool(train_cfg.compile)
        self.graphs = 0
        if not self.enabled:
            return
        units = compile_units(model)
        kinds = len({(type(u), tuple(p.shape for p in u.parameters())) for u in units})
        # x2 with train.forbid_sync on the CPU: its TorchFunctionMode is part of dynamo's guards
        self.limit = 4 * max(1, int(shapes)) * kinds * (2 if train_cfg.get("forbid_sync") else 1) + 8
        torch._dynamo.config.recompile_limit = self.limit
        torch._dynamo.config.accumulated_recompile_limit = max(256, 4 * self.limit)
        torch._dynamo.config.fail_on_recompile_limit_hit = True
        for unit in units:
            unit.compile(backend=train_cfg.compile_backend, dynamic=False)

    def metrics(self):
        return {"compiled_graphs": self.graphs} if self.enabled else {}

    def report(self, step):
        if not self.enabled:
            return None
        from torch._dynamo.utils import counters
        graphs = counters["stats"]["unique_graphs"]
        if graphs == self.graphs:
            return None
        self.graphs = graphs
        return f"torch.compile: {graphs} graph(s) after step {step} (recompile limit {self.limit} per unit)"


def memory_metrics(device):
    """Peak device memory since the start, for log lines (CUDA only)."""
    if device.type != "cuda":
        return {}
    return {"peak_mem_gb": torch.cuda.max_memory_allocated(device) / 2 ** 30}


def start(cfg, rt, ckpt, step, banner, **info):
    """The start every training script makes once its state is restored (or fresh, step 0):
    metrics.jsonl and TensorBoard opened at `step` (a resumed run drops rows past it), the run
    directory's record written by rank 0 (config.yaml, run_info.json with the git commit, world
    size and `info`), and the run's banner. Returns the RunLogger."""
    logger = RunLogger(cfg.output_dir, rt.is_main, resume_step=step)
    if rt.is_main:
        write_run_files(cfg.output_dir, cfg, git_commit=ckpt.commit, world_size=rt.world, **info)
    logger.print(banner)
    return logger


def stream(loader, sampler, start_step):
    """The loader's batches forever, positioned at `start_step` (exact resume): for runs whose
    length is counted in steps rather than passes over one loader."""
    epoch, skip = divmod(start_step, sampler.steps_per_epoch)
    while True:
        sampler.set_epoch(epoch, skip)
        batches = iter(loader)
        while True:
            with host_sync.allowed():   # the loader's work (in this process with workers=0) is host data
                batch = next(batches, None)
            if batch is None:
                break
            yield batch
        epoch, skip = epoch + 1, 0


class StopFlag:
    """SIGTERM (Slurm's scancel and time limit, `timeout`), SIGINT (Ctrl-C), SIGUSR1 (Slurm's
    `--signal=USR1@90` warning) and SIGUSR2 (submitit) ask the run to stop; a non-finite loss
    ends it (Diverged). Ranks may receive the signal a step apart, so the flags are all-reduced and
    every rank stops at the same step.

    Reading the flags waits for the device (common/host_sync.py), so `check(loss, step)` only
    marks a non-finite loss on the device, and reads the flags every `every` steps
    (train.check_every) or when forced (log lines, saves, the last step): a signal stops the run
    within `every` steps. A diverged run is reported with the first step whose loss was not
    finite; nothing is saved after it, because every save forces a check first and
    Checkpointer.save refuses non-finite weights.
    Loader workers ignore these signals (data/__init__.py), so a signal sent to the whole process
    group reaches the main process alone in effect."""

    active = None   # the StopFlag of this process, for `cli`'s hand-over
    NONE = 2.0 ** 52   # "no non-finite loss yet": larger than any step, exact in float64

    def __init__(self, device, every=1):
        if every < 1:
            raise ConfigError(f"train.check_every={every} must be >= 1")
        self.device, self.every, self.signum = device, every, None
        self.first_bad = torch.full((), self.NONE, dtype=torch.float64, device=device)
        # a launcher's own handlers (submitit's checkpoint-and-requeue) run after our checkpoint
        self.previous = {s: _LAUNCHER_HANDLERS.get(s, signal.getsignal(s)) for s in STOP_SIGNALS}
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

    def due(self, step):
        """Whether `check` reads the flags after `step` steps without being forced."""
        return step % self.every == 0

    def check(self, loss, step, force=False):
        """After `step` steps (the loss of the last one given): (stop requested on any rank, the
        first step with a non-finite loss on any rank or None). Reads the flags (one all-reduce
        and one device-to-host copy) only when due or forced; otherwise (False, None) and no
        synchronisation."""
        bad = ~torch.isfinite(loss.detach().float())
        self.first_bad = torch.where(bad, self.first_bad.clamp(max=step), self.first_bad)
        if not (force or self.due(step)):
            return False, None
        signalled = torch.full((), 0.0 if self.signum is None else 1.0, dtype=torch.float64, device=self.device)
        # one MAX all-reduce: the stop flag, and minus the earliest diverged step over ranks
        flags = dist.all_reduce_max(torch.stack([signalled, -self.first_bad])).tolist()
        first = -flags[1]
        return flags[0] > 0, (int(first) if first < self.NONE else None)


def one_line(e):
    """The message of a bad-input error. Raised in a DataLoader worker, torch re-raises it in the
    main process wrapped in the worker's traceback ("Caught DataError in DataLoader worker ...
    Original Traceback ..."): keep only the original message, its last line."""
    msg = str(e)
    if "Original Traceback" in msg:
        msg = msg.strip().splitlines()[-1].split(": ", 1)[-1]   # "data.folder.DataError: <message>"
    return msg


class Interrupted(BaseException):
    """A stop signal before the training loop's StopFlag took over (set-up, data, the first kNN):
    nothing was trained since the last checkpoint, so the run stops at once. A BaseException,
    like KeyboardInterrupt, so no `except Exception` on the way turns it into another error."""

    def __init__(self, signum):
        super().__init__(f"{signal.Signals(signum).name} received before training started: nothing to save; "
                         f"re-run the same command to resume")


# The handlers a launcher installed before `cli` (submitit's requeue handler on SIGUSR2):
# StopFlag hands a received signal over to them after its checkpoint is written.
_LAUNCHER_HANDLERS = {}


def _interrupt(signum, frame):
    raise Interrupted(signum)


def cli(run_main):
    """Run a script's main with the exit contract a launcher relies on: bad input (config, data,
    checkpoint, an OS error such as a full disk or an output_dir that cannot be written) is one
    line on stderr and code 2; a run stopped by a signal exits EXIT_STOPPED after its checkpoint
    was written, or at once when the signal came before training started. The exit code and its
    reason also go to output_dir/exit.json (common/run_lock.py), which torchrun does not hide."""
    for s in STOP_SIGNALS:
        _LAUNCHER_HANDLERS[s] = signal.getsignal(s)
        signal.signal(s, _interrupt)
    code, reason, step = 1, "crashed", None
    try:
        run_main()
        code, reason = 0, "finished"
    except InputError as e:  # ConfigError, data.DataError, CheckpointError
        code, reason = EXIT_BAD_INPUT, _error_line(one_line(e))
    except OSError as e:   # a full disk, an unwritable or misplaced output_dir: nothing lost (atomic saves)
        code, reason = EXIT_BAD_INPUT, _error_line(os_error_line(e))
    except Diverged as e:
        code, reason = EXIT_DIVERGED, _error_line(str(e))
    except HostSyncError as e:
        code, reason = EXIT_HOST_SYNC, _error_line(str(e))
    except (Stopped, Interrupted) as e:
        if dist.is_main():
            _close_progress_bars()
            print(str(e), file=sys.stderr, flush=True)
        code, reason, step = getattr(e, "code", EXIT_STOPPED), str(e), getattr(e, "step", None)
    except BaseException as e:   # a bug: the traceback follows; exit.json says it was not a stop
        reason = f"crashed: {type(e).__name__}: {str(e)[:200]}"
        raise
    finally:
        lock = run_lock.RunLock.held
        if lock is not None:
            lock.release(code, reason, step=step)
        for s in STOP_SIGNALS:   # a signal from here on: the run is ending anyway
            signal.signal(s, signal.SIG_IGN if code == EXIT_STOPPED else _LAUNCHER_HANDLERS[s])
        dist.cleanup()
        end_loader_workers()
    if code == EXIT_STOPPED and StopFlag.active is not None and StopFlag.active.signum is not None:
        StopFlag.active.hand_over()   # may requeue and exit (submit.py)
    sys.exit(code)


def _close_progress_bars():
    """End tqdm's bar (it writes without a newline), so a message starts on its own line."""
    from tqdm import tqdm
    for bar in list(getattr(tqdm, "_instances", ())):
        bar.close()


def _error_line(message):
    _close_progress_bars()
    print(f"error: {message}", file=sys.stderr, flush=True)
    return message


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
