#!/usr/bin/env python
"""Host time per step of each training script's real loop with a near-free model, against a bare
loop (forward + backward + optimizer step) of the same model on pre-made tensors, in ms per step,
broken down by part. Target: at most 1 ms per step beyond the bare loop at batch 256 on the CPU.

    python benchmarks/step_overhead.py                       # this repository
    python benchmarks/step_overhead.py --repo /tmp/other     # another checkout (e.g. the code before a change)
    python benchmarks/step_overhead.py --rows ssl,ssl_ha --steps 200 --rounds 5
    python benchmarks/step_overhead.py --smoke               # seconds: batch 16, 6 steps, one round

Each row runs the script's own `main(cfg)` in this process on its synthetic data, with the
model builder replaced by a tiny module of the same interface (SSL: a pool + Linear(3, 8)
backbone inside the real method class, so the method's hooks run; supervised: pool + Linear;
depth: BN and a weighted sum of the pooled input, repeated to DispNet's 4 output scales; depth
images are DEPTH_HW), kNN / validation replaced by stubs (they run
outside the loop), and timers wrapped around the loop's parts (see PARTS). The loop is timed
from the start of train_step number `--warmup` + 1 to the start of the last one, so start-up,
the FLOP ledger's first (counted) step and everything after the last step are left out; every
part's time is exclusive of the parts nested in it.

Columns (ms per step, medians over the rounds; rows and their bare loops alternate):
  loop      wall time per step of the loop
  bare      the same model, optimizer and input shapes: forward, loss, backward, step, nothing else
  overhead  loop - loader - bare  (the figure the 1 ms target is about)
  loader    waiting in the DataLoader iterator's __next__ (loader workers, or loading itself with 0 workers)
  sched     schedules (train_ssl Schedules.apply, train_supervised set_schedules)
  augment   device augmentation (DeviceAugment.__call__; depth: flip)
  select    Hard Augment's pick (hard_augment.select) / minibatch selection (choose_minibatch), no ledger
  ledger    FlopLedger.count's enter and exit (not its body) and FlopLedger.add
  check     StopFlag.check (stop signal and divergence)
  log       LossWindow.add / flush, RunLogger.log, Schedules.metrics / flop_metrics, the tqdm bar
  in_step   time inside train_step outside every part, minus bare: what the step adds around the
            model's forward/backward/optimizer (device_batch, autocast, method hooks, rng, ...),
            and the model's own work running slower in the loop than in the tight bare loop
            (fresh input tensors, caches cold after loading and augmenting)
  glue      loop time outside train_step and outside every part (the loop's own Python, and
            freeing the previous batch where the loop variable lets go of it)
overhead = sched + augment + select + ledger + check + log + in_step + glue for one round; the
medians of the columns need not add up exactly. On the CPU, augment and select are compute
(device work on a GPU): the notes also give the overhead without them.

Loader workers: --workers 0 by default. On the 2-core CPU, busy loader workers (the near-free
model makes every row loader-bound) take the cores from the main process while it runs the
loop's parts, but not while it runs the bare loop afterwards: with 2 workers, SimSiam's in_step
read ~19 ms/step against ~1.6 ms with 0 on the same machine. With 0 the loading runs in the main
process, inside __next__, and is subtracted as loader time. `--workers 2` times the real setting.
The synthetic images are generated for IMAGE_CACHE distinct indices and then reused (index mod
IMAGE_CACHE; crops, flips and colour draws are still made per view), which halves the loader's
time and the benchmark's wall time; --fresh-images generates all of them.

Memory: the figures include glibc's handling of the multi-MB tensors each step allocates and
frees (returned to the OS and faulted back in, per step); MALLOC_* variables in the environment
are printed in the header, as they change the figures a lot (MALLOC_MMAP_THRESHOLD_=268435456
MALLOC_TRIM_THRESHOLD_=1073741824 halved SimSiam's overhead on the 2-core CPU).
"""
import argparse
import contextlib
import gc
import io
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections import defaultdict

DEFAULT_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROWS = {
    "ssl": "train_ssl SimSiam",
    "ssl_ha": "train_ssl SimSiam + Hard Augment",
    "sup_fast": "train_supervised select=fast",
    "depth_ubn": "train_depth_ubn UBN",
}
PARTS = ["sched", "augment", "select", "ledger", "check", "log"]
# depth images: the script's own multi-scale loss (in the bare step too) costs ~22 ms per step at
# 32 x 64 and batch 256 on the 2-core CPU, ~5 ms at 16 x 32: the smaller size keeps the bare step's
# noise below the 1 ms the figures are about
DEPTH_HW = (16, 32)
COLUMNS = ["loop", "bare", "overhead", "loader"] + PARTS + ["in_step", "glue"]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repo", default=DEFAULT_REPO, help="checkout whose scripts run (default: this one)")
    p.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated, of {', '.join(ROWS)}")
    p.add_argument("--batch", type=int, default=256, help="global batch (train.batch_size)")
    p.add_argument("--steps", type=int, default=50, help="timed steps per row and round")
    p.add_argument("--warmup", type=int, default=5, help="steps before the timed ones")
    p.add_argument("--rounds", type=int, default=3, help="rounds; the rows alternate within each")
    p.add_argument("--threads", type=int, default=1, help="train.threads (torch intra-op threads)")
    p.add_argument("--workers", type=int, default=0,
                   help="data.workers (loader processes; default 0: see 'Loader workers' above)")
    p.add_argument("--fresh-images", action="store_true",
                   help=f"generate every synthetic image (default: {IMAGE_CACHE} distinct ones, cached)")
    p.add_argument("--smoke", action="store_true", help="batch 16, 6 steps, 2 warm-up, one round")
    p.add_argument("--verbose", action="store_true", help="show the scripts' own output")
    args = p.parse_args(argv)
    if args.smoke:
        args.batch, args.steps, args.warmup, args.rounds = 16, 6, 2, 1
    args.repo = os.path.abspath(args.repo)
    args.rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    unknown = [r for r in args.rows if r not in ROWS]
    if unknown:
        p.error(f"unknown row(s) {unknown}; rows are {', '.join(ROWS)}")
    if args.steps < 1 or args.warmup < 1 or args.rounds < 1 or args.batch < 2:
        p.error("--steps, --warmup and --rounds must be >= 1, --batch >= 2")
    return args


IMAGE_CACHE = 256
ARGS = parse_args() if __name__ == "__main__" else None
# the scripts' modules come from --repo: its path goes first, before any project import
if ARGS is not None:
    sys.path.insert(0, ARGS.repo)

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import torch.utils.data.dataloader as torch_dataloader  # noqa: E402


# ---------------------------------------------------------------------------------------------
# timers

class Timers:
    """Exclusive time per part: a part's time excludes the timed parts running inside it."""

    def __init__(self):
        self.acc, self.calls, self.stack = defaultdict(float), defaultdict(int), []
        self.n_steps, self.warmup = 0, 1
        self.first = self.last = None     # (time, acc snapshot, calls snapshot, step number)

    def enter(self, name):
        self.stack.append([name, time.perf_counter(), 0.0])

    def exit(self):
        name, t0, child = self.stack.pop()
        d = time.perf_counter() - t0
        self.acc[name] += d - child
        self.calls[name] += 1
        if self.stack:
            self.stack[-1][2] += d

    def gc_callback(self, phase, info):
        """gc.callbacks: Python's cyclic collections, as 'gc:<part running when it started>'
        (their time also stays in that part's)."""
        if phase == "start":
            self.gc_start = time.perf_counter()
        elif getattr(self, "gc_start", None) is not None:
            part = self.stack[-1][0] if self.stack else "glue"
            self.acc[f"gc:{part}"] += time.perf_counter() - self.gc_start
            self.gc_start = None

    def step_start(self):
        """Called at the start of every train_step: the window runs from the start of step
        warmup + 1 to the start of the last step."""
        self.n_steps += 1
        if self.n_steps > self.warmup:
            mark = (time.perf_counter(), dict(self.acc), dict(self.calls), self.n_steps)
            if self.first is None:
                self.first = mark
            else:
                self.last = mark

    def window(self):
        """(steps, seconds, {part: seconds}, {part: calls}) between the first and last marks."""
        if self.first is None or self.last is None:
            return None
        (t0, a0, c0, n0), (t1, a1, c1, n1) = self.first, self.last
        parts = {k: a1.get(k, 0.0) - a0.get(k, 0.0) for k in set(a0) | set(a1)}
        calls = {k: c1.get(k, 0) - c0.get(k, 0) for k in set(c0) | set(c1)}
        return n1 - n0, t1 - t0, parts, calls


class TimedContext:
    """A context manager whose __enter__ and __exit__ (not the body) count as `name`."""

    def __init__(self, timers, name, cm):
        self.timers, self.name, self.cm = timers, name, cm

    def __enter__(self):
        self.timers.enter(self.name)
        try:
            return self.cm.__enter__()
        finally:
            self.timers.exit()

    def __exit__(self, *exc):
        self.timers.enter(self.name)
        try:
            return self.cm.__exit__(*exc)
        finally:
            self.timers.exit()


class Patcher:
    """Replaces attributes for one row and puts every original back afterwards."""

    def __init__(self, timers):
        self.timers, self.saved = timers, []

    def set(self, obj, name, value):
        own = not isinstance(obj, type) or name in vars(obj)
        self.saved.append((obj, name, vars(obj)[name] if isinstance(obj, type) and own else getattr(obj, name), own))
        setattr(obj, name, value)

    def wrap(self, obj, name, part, context=False):
        """Time calls of obj.name as `part` (context=True: a context-manager factory, whose
        creation, enter and exit are timed but not its body). False when obj has no such attribute."""
        if obj is None or not hasattr(obj, name):
            return False
        orig, timers = getattr(obj, name), self.timers
        if isinstance(obj, type):
            orig = vars(obj)[name] if name in vars(obj) else getattr(obj, name)

        if context:
            def wrapper(*a, **k):
                timers.enter(part)
                try:
                    cm = orig(*a, **k)
                finally:
                    timers.exit()
                return TimedContext(timers, part, cm)
        else:
            def wrapper(*a, **k):
                timers.enter(part)
                try:
                    return orig(*a, **k)
                finally:
                    timers.exit()
        wrapper.__wrapped__ = orig
        self.set(obj, name, wrapper)
        return True

    def restore(self):
        for obj, name, value, own in reversed(self.saved):
            if own:
                setattr(obj, name, value)
            else:
                delattr(obj, name)
        self.saved.clear()


def instrumentation_cost():
    """Seconds one timed call adds (the wrapper's bookkeeping), measured on a no-op."""
    timers = Timers()
    box = type("Box", (), {"f": lambda self: None})
    p = Patcher(timers)
    p.wrap(box, "f", "x")
    obj, n, best = box(), 20000, float("inf")
    for _ in range(3):
        t = time.perf_counter()
        for _ in range(n):
            obj.f()
        timed = time.perf_counter() - t
        p.restore()
        t = time.perf_counter()
        for _ in range(n):
            obj.f()
        plain = time.perf_counter() - t
        p.wrap(box, "f", "x")
        best = min(best, (timed - plain) / n)
    p.restore()
    return max(best, 0.0)


# ---------------------------------------------------------------------------------------------
# near-free models

class TinyBackbone(nn.Module):
    """Global average pool + Linear(3, 8): an SSL backbone with `num_features` and no compute."""
    num_features = 8

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, self.num_features)

    def forward(self, x):
        return self.fc(x.mean((2, 3)))


class TinyClassifier(nn.Module):
    def __init__(self, num_classes):
        super().__init__()
        self.backbone = TinyBackbone()
        self.fc = nn.Linear(TinyBackbone.num_features, num_classes)

    def forward(self, x):
        return self.fc(self.backbone(x))


class TinyDispNet(nn.Module):
    """DispNet's output format at next to no cost: a list of `scales` depth maps
    [B, 1, H / 2^k, W / 2^k], finest first, depth by Eq. 2.5, from logits computed on the input
    average-pooled by 8 (BatchNorm there, so UBN has a layer to act on; a per-channel weighted
    sum, not a 1x1 convolution, whose CPU kernel alone costs ~0.3 s at batch 256) and repeated
    back up to each scale (a broadcast: F.interpolate's nearest kernel is ~6x slower)."""

    def __init__(self, scales=4, scale=0.4, min_disp=0.0125, pool=8):
        super().__init__()
        self.bn = nn.BatchNorm2d(3)
        self.weight, self.bias = nn.Parameter(torch.randn(3) / 3), nn.Parameter(torch.zeros(1))
        self.scales, self.scale, self.min_disp, self.pool = scales, scale, min_disp, pool

    def forward(self, x):
        h, w = x.shape[-2:]
        small = self.bn(F.adaptive_avg_pool2d(x, (max(1, h // self.pool), max(1, w // self.pool))))
        logits = (small * self.weight.view(1, -1, 1, 1)).sum(1, keepdim=True) + self.bias
        outs = []
        for k in range(self.scales):
            size, (hs, ws) = (max(1, h // 2 ** k), max(1, w // 2 ** k)), logits.shape[-2:]
            if size[0] % hs == 0 and size[1] % ws == 0:
                fh, fw = size[0] // hs, size[1] // ws
                up = logits[:, :, :, None, :, None].expand(-1, -1, -1, fh, -1, fw).reshape(-1, 1, *size)
            else:
                up = F.interpolate(logits, size=size, mode="nearest")
            outs.append(1.0 / (self.scale * torch.sigmoid(up) + self.min_disp))
        return outs


# ---------------------------------------------------------------------------------------------
# rows: config, patches and bare loop per script

def common_overrides(args, out, defaults):
    """Overrides every row takes; float32 and contiguous activations pinned where the script has
    the keys (train.amp=auto could pick bf16 on a CPU with native bf16, and the bare loop is float32)."""
    pins = [f"train.{k}={v}" for k, v in (("amp", "none"), ("channels_last", "false"))
            if k in defaults.get("train", {})]
    return [f"output_dir={out}", f"train.batch_size={args.batch}", f"train.threads={args.threads}",
            "train.epochs=1", "train.log_every=50", "train.ckpt_every_steps=0", "train.device=cpu",
            f"data.workers={args.workers}"] + pins


def setup_ssl(args, out, total, patcher, captured, hard_augment_on):
    import selfsup
    import train_ssl
    from data.augment import train_resolution
    overrides = common_overrides(args, out, train_ssl.ssl_defaults()) + [
        "data.name=synthetic", f"data.synthetic_train_size={args.batch * total}", "data.synthetic_val_size=16",
        "data.crop_size=32", "method.name=simsiam", "method.simsiam.proj_dim=8", "method.simsiam.pred_hidden=4",
        "method.simsiam.proj_layers=2", "knn.every_epochs=0"]
    if hard_augment_on:
        overrides += ["accel.hard_augment.enabled=true", "accel.hard_augment.views=4", "accel.hard_augment.r_sel=16"]
    cfg = train_ssl.parse_config(overrides)

    def build_model(cfg, *a, **k):
        captured["model"] = selfsup.build_method(cfg.method, TinyBackbone())
        return captured["model"], False
    patcher.set(train_ssl, "build_model", build_model)
    patcher.set(train_ssl, "knn_top1", lambda *a, **k: 0.0)   # kNN runs at start and end, outside the loop
    # selfsup/schedules.py since the structure pass; train_ssl.py itself before it
    schedules = getattr(sys.modules.get("selfsup.schedules"), "Schedules", None) or getattr(train_ssl, "Schedules", None)
    patcher.wrap(schedules, "apply", "sched")
    patcher.wrap(schedules, "metrics", "log") or patcher.wrap(train_ssl, "step_metrics", "log")
    tq = getattr(train_ssl, "tqdm", None)
    if isinstance(tq, type):
        patcher.wrap(tq, "update", "log")
        patcher.wrap(tq, "set_postfix", "log")
    res = train_resolution(cfg)

    def bare_inputs():
        return {"views": [torch.randn(args.batch, 3, res, res) for _ in range(2)]}

    def bare_step(model, opt, inp):
        loss = model(inp["views"])["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return train_ssl, cfg, bare_inputs, bare_step


def setup_supervised(args, out, total, patcher, captured):
    import train_supervised
    from data.augment import train_resolution
    overrides = common_overrides(args, out, train_supervised.SUPERVISED_DEFAULTS) + [
        "data.name=synthetic", f"data.synthetic_train_size={args.batch * total}", "data.synthetic_val_size=16",
        "data.crop_size=32", "select.method=fast", "select.warmup_steps=0", "select.cooldown_fraction=0",
        "select.eval_every_epochs=1"]
    cfg = train_supervised.parse_config(overrides)

    def build_classifier(model_cfg, num_classes, *a, **k):
        captured["model"] = TinyClassifier(num_classes)
        captured["num_classes"] = num_classes
        return captured["model"]
    patcher.set(train_supervised, "build_classifier", build_classifier)
    patcher.set(train_supervised, "evaluate", lambda *a, **k: (0.0, 0.0))   # validation: outside the loop
    patcher.wrap(train_supervised, "set_schedules", "sched")
    patcher.wrap(train_supervised, "choose_minibatch", "select")
    patcher.wrap(train_supervised, "selective_backprop_batch", "select")
    patcher.wrap(train_supervised, "flop_metrics", "log")
    res = train_resolution(cfg)

    def bare_inputs():
        return {"x": torch.randn(args.batch, 3, res, res),
                "y": torch.randint(captured.get("num_classes", 10), (args.batch,))}

    def bare_step(model, opt, inp):
        loss = F.cross_entropy(model(inp["x"]), inp["y"])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return train_supervised, cfg, bare_inputs, bare_step


def setup_depth(args, out, total, patcher, captured):
    import train_depth_ubn
    from models import ubn
    overrides = common_overrides(args, out, train_depth_ubn.DEPTH_DEFAULTS) + [
        "data.name=synthetic", f"data.height={DEPTH_HW[0]}", f"data.width={DEPTH_HW[1]}",
        f"data.synthetic_train_size={args.batch * total}", "data.synthetic_test_size=16", "ubn.enabled=true",
        "train.eval_every_epochs=1"]
    cfg = train_depth_ubn.parse_config(overrides)

    def build_dispnet(model_cfg, *a, **k):
        captured["model"] = TinyDispNet(model_cfg.scales, model_cfg.scale, model_cfg.min_disp)
        return captured["model"]
    names = getattr(train_depth_ubn, "NAMES", ("delta1", "abs_rel", "rmse"))
    patcher.set(train_depth_ubn, "build_dispnet", build_dispnet)
    patcher.set(train_depth_ubn, "evaluate", lambda *a, **k: {n: 0.0 for n in names})   # outside the loop
    patcher.wrap(train_depth_ubn, "flip", "augment")
    h, w, b = cfg.data.height, cfg.data.width, args.batch
    u = cfg.ubn.unlabeled_batch_size or b
    loss_fn = train_depth_ubn.multiscale_loss

    def bare_inputs():
        return {"x": torch.randn(b, 3, h, w), "u": torch.randn(u, 3, h, w), "gt": torch.rand(b, 1, h, w) * 80}

    def bare_step(model, opt, inp):   # UBN's two passes are the method: in the bare step too
        depths = ubn.forward(model, inp["x"], inp["u"], cfg.ubn.grad_through_stats)
        loss = loss_fn(depths, inp["gt"], cfg.loss.kind, cfg.loss.max_depth)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return train_depth_ubn, cfg, bare_inputs, bare_step


def wrap_shared(patcher):
    """The parts every script shares (common/, data/, accel/, torch's loader)."""
    from common import run
    from common.flops import FlopLedger
    from common.logger import LossWindow, RunLogger
    from data.augment import DeviceAugment
    patcher.wrap(torch_dataloader._BaseDataLoaderIter, "__next__", "loader")
    patcher.wrap(torch_dataloader.DataLoader, "__iter__", "loader_start")   # a new pass: worker (re)start
    patcher.wrap(DeviceAugment, "__call__", "augment")
    patcher.wrap(FlopLedger, "count", "ledger", context=True)
    patcher.wrap(FlopLedger, "add", "ledger")
    patcher.wrap(run.StopFlag, "check", "check")
    for name in ("add", "flush"):
        patcher.wrap(LossWindow, name, "log")
    patcher.wrap(RunLogger, "log", "log")
    try:
        from accel import hard_augment
        patcher.wrap(hard_augment, "select", "select")
    except ImportError:
        pass


_IMAGES = {}


def cache_images(patcher):
    """The synthetic generators (pure functions of the index and the settings) computed for
    IMAGE_CACHE distinct indices, then served from memory (loader workers fork with the cache)."""
    for mod_name, fn_name in (("data.synthetic", "make_image"), ("data.synthetic_depth", "make_scene")):
        try:
            mod = __import__(mod_name, fromlist=[fn_name])
        except ImportError:
            continue
        orig = getattr(mod, fn_name, None)
        if orig is None:
            continue

        def cached(index, *a, _orig=orig, _name=fn_name, **k):
            key = (_name, index % IMAGE_CACHE, a, tuple(sorted(k.items())))
            if key not in _IMAGES:
                _IMAGES[key] = _orig(index % IMAGE_CACHE, *a, **k)
            return _IMAGES[key]
        patcher.set(mod, fn_name, cached)


def run_row(row, args, inst_cost):
    """One row, one round: the script's main with timers, then the bare loop. Returns a dict of
    ms/step by column, or raises RuntimeError with the reason."""
    from common import run
    timers = Timers()
    timers.warmup = args.warmup
    patcher, captured, optimizers = Patcher(timers), {}, []
    total = args.warmup + 1 + args.steps      # the window: start of step warmup+1 to start of the last
    saved_signals = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2)}
    orig_opt_init = torch.optim.Optimizer.__init__

    def opt_init(self, *a, **k):
        orig_opt_init(self, *a, **k)
        optimizers.append(self)

    out_buf = io.StringIO()
    with tempfile.TemporaryDirectory(prefix="step_overhead_") as out:
        try:
            if row in ("ssl", "ssl_ha"):
                module, cfg, bare_inputs, bare_step = setup_ssl(args, out, total, patcher, captured, row == "ssl_ha")
            elif row == "sup_fast":
                module, cfg, bare_inputs, bare_step = setup_supervised(args, out, total, patcher, captured)
            else:
                module, cfg, bare_inputs, bare_step = setup_depth(args, out, total, patcher, captured)
            if not hasattr(module, "train_step"):
                raise RuntimeError(f"{module.__name__} has no train_step to time the loop by")
            orig_step = module.train_step

            def train_step(*a, **k):
                timers.step_start()
                timers.enter("step")
                try:
                    return orig_step(*a, **k)
                finally:
                    timers.exit()
            patcher.set(module, "train_step", train_step)
            wrap_shared(patcher)
            if not args.fresh_images:
                cache_images(patcher)
            patcher.set(torch.optim.Optimizer, "__init__", opt_init)
            error = None
            gc.callbacks.append(timers.gc_callback)
            redirect = contextlib.nullcontext() if args.verbose else contextlib.ExitStack()
            if not args.verbose:
                redirect.enter_context(contextlib.redirect_stdout(out_buf))
                redirect.enter_context(contextlib.redirect_stderr(out_buf))
            with redirect:
                try:
                    module.main(cfg)
                except run.Stopped:
                    pass
                except (Exception, SystemExit) as e:   # measurements taken before it still count
                    error = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
                    if args.verbose:
                        traceback.print_exc()
        except ImportError as e:
            raise RuntimeError(f"import failed: {e}") from None
        finally:
            if timers.gc_callback in gc.callbacks:
                gc.callbacks.remove(timers.gc_callback)
            patcher.restore()
            for s, h in saved_signals.items():   # StopFlag installed its handlers
                signal.signal(s, h)
            gc.collect()                          # persistent loader workers end with their loader
    win = timers.window()
    if win is None or win[0] < 1:
        tail = out_buf.getvalue().strip().splitlines()[-3:]
        raise RuntimeError(error or f"the loop ran {timers.n_steps} steps: too few to time "
                           f"({' | '.join(tail) or 'no output'})")
    steps, seconds, parts, calls = win
    gc_parts = {k[3:]: parts.pop(k) for k in list(parts) if k.startswith("gc:")}
    model = captured.get("model")
    params = {id(p) for p in model.parameters()} if model is not None else set()
    opt = next((o for o in reversed(optimizers)
                if any(id(p) in params for g in o.param_groups for p in g["params"])), None)
    if model is None or opt is None:
        raise RuntimeError("the model or its optimizer was not seen (builder renamed?)")

    # ---- the bare loop: same model, optimizer and shapes, same thread count, nothing else
    torch.set_num_threads(args.threads)
    model.train()
    inp = bare_inputs()
    for _ in range(args.warmup):
        bare_step(model, opt, inp)
    t = time.perf_counter()
    for _ in range(steps):
        bare_step(model, opt, inp)
    bare = (time.perf_counter() - t) / steps

    ms = lambda s: 1000.0 * s / steps   # noqa: E731
    r = {"loop": ms(seconds), "bare": 1000.0 * bare,
         "loader": ms(parts.get("loader", 0.0) + parts.get("loader_start", 0.0)),
         "loader_start": ms(parts.get("loader_start", 0.0))}
    r["overhead"] = r["loop"] - r["loader"] - r["bare"]
    for p in PARTS:
        r[p] = ms(parts.get(p, 0.0)) if calls.get(p, 0) else None   # None: not called in the window
    r["in_step"] = ms(parts.get("step", 0.0)) - r["bare"]
    r["glue"] = ms(seconds - sum(parts.values()))
    r["instr"] = 1000.0 * inst_cost * sum(calls.values()) / steps
    r["gc"] = ms(sum(gc_parts.values()))
    r["gc_loader"] = ms(gc_parts.get("loader", 0.0) + gc_parts.get("loader_start", 0.0))
    r["steps"], r["error"] = steps, error
    return r


# ---------------------------------------------------------------------------------------------
# report

def repo_state(repo):
    def git(*a):
        try:
            return subprocess.run(["git", "-C", repo, *a], capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""
    sha = git("rev-parse", "--short", "HEAD") or "unknown"
    return sha + ("+dirty" if git("status", "--porcelain", "--untracked-files=no") else "")


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def fmt(v, width=9):
    return f"{'-':>{width}}" if v is None else f"{v:>{width}.2f}"


def report(args, results, wall, inst_cost):
    print(f"step overhead: repo {args.repo} @ {repo_state(args.repo)}; CPU {cpu_name()} "
          f"({os.cpu_count()} cores); torch {torch.__version__}")
    print(f"batch {args.batch}, {args.steps} timed steps after {args.warmup} warm-up, {args.rounds} round(s), "
          f"train.threads={args.threads}, data.workers={args.workers}; ms per step, median over rounds"
          + "".join(f"; {k}={v}" for k, v in sorted(os.environ.items()) if k.startswith("MALLOC_")))
    name_w = max(len(ROWS[r]) for r in args.rows) + 2
    print(f"{'row':<{name_w}}" + "".join(f"{c:>9}" for c in COLUMNS))
    notes = []
    for row in args.rows:
        rounds = results[row]
        ok = [r for r in rounds if isinstance(r, dict)]
        if not ok:
            print(f"{ROWS[row]:<{name_w}}" + f"{'n/a':>9}" + f"  ({rounds[0]})")
            continue
        med = {}
        for c in COLUMNS + ["instr", "loader_start", "gc", "gc_loader"]:
            vals = [r[c] for r in ok if r.get(c) is not None]
            med[c] = statistics.median(vals) if vals else None
        print(f"{ROWS[row]:<{name_w}}" + "".join(fmt(med[c]) for c in COLUMNS))
        by_round = ", ".join(f"{r['overhead']:.2f}" if isinstance(r, dict) else "failed" for r in rounds)
        compute = statistics.median(r["overhead"] - (r["augment"] or 0.0) - (r["select"] or 0.0) for r in ok)
        notes.append(f"  {ROWS[row]}: overhead by round {by_round} ms/step; timers' own cost ~{med['instr']:.3f} "
                     f"ms/step (included); without augment and select {compute:.2f} ms/step; Python's cyclic "
                     f"GC {med['gc']:.2f} ms/step ({med['gc_loader']:.2f} of it in the loader)"
                     + (f"; loader includes {med['loader_start']:.2f} ms/step of starting new passes over the "
                        f"data (iter(loader), workers started anew where not persistent)"
                        if med["loader_start"] >= 0.01 else ""))
        for r in rounds:
            if isinstance(r, dict) and r["error"]:
                notes.append(f"  {ROWS[row]}: main ended with {r['error']} (after the timed window)")
            elif not isinstance(r, dict):
                notes.append(f"  {ROWS[row]}: a round failed: {r}")
    print("\n".join(notes))
    print(f"'-': not called in the timed window (no such part in this row or code version). Target: overhead "
          f"<= 1 ms/step at batch 256. Timer cost {1e6 * inst_cost:.2f} us per timed call. Wall {wall:.1f} s.")


def main(args):
    import train_ssl  # noqa: F401  (fail early, and check where the modules come from)
    where = os.path.dirname(os.path.abspath(sys.modules["train_ssl"].__file__))
    if os.path.realpath(where) != os.path.realpath(args.repo):
        sys.exit(f"error: train_ssl was imported from {where}, not from --repo {args.repo}")
    t0 = time.perf_counter()
    inst_cost = instrumentation_cost()
    results = {row: [] for row in args.rows}
    for _ in range(args.rounds):
        for row in args.rows:
            try:
                results[row].append(run_row(row, args, inst_cost))
            except RuntimeError as e:
                results[row].append(str(e))
            except (Exception, SystemExit) as e:   # a code version this benchmark does not fit: n/a, why
                results[row].append(f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
    report(args, results, time.perf_counter() - t0, inst_cost)


if __name__ == "__main__":
    main(ARGS)
