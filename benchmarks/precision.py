#!/usr/bin/env python
"""Where do bf16 autocast, channels_last and torch.compile pay off? Images/s of a bare training
step (forward + backward + SGD step on random tensors, no data pipeline) for two models, each
setting measured side by side in one run (settings alternate within every round; medians over
rounds), with ratios to the fp32 eager contiguous step:

  (a) SimSiam, CIFAR-stem ResNet-18 width 64, batch 128, two 32 px views (the bare step of
      benchmarks/loop_throughput.py);
  (b) MoCo v3, ViT-Tiny at patch 8, batch 64, two 48 px views (yaml/vit/cifar10_vit_tiny_cpu.yaml).

Part 1: fp32 vs bf16 autocast (torch.autocast(device_type, dtype=torch.bfloat16)), each with the
model and inputs contiguous or channels_last.
Part 2: eager vs torch.compile(method, dynamic=False) (inductor; the whole method module, whose
forward includes the loss; AOTAutograd compiles the backward) in bf16 with the faster memory
format of part 1: steady-state images/s, and compile seconds = the compiling steps' time minus as
many eager steps. The shape then changes (ResNet 24 px, as Super Progressive Learning does; ViT
32 px) and back, counting the graphs compiled at each change. The inductor cache is a fresh
temporary directory, so the seconds are those of a cold first run (a training run that finds
inductor's default /tmp/torchinductor_$USER cache warm compiles faster).

    python benchmarks/precision.py                         # both models, 2 threads, CPU
    python benchmarks/precision.py --models resnet18 --no-compile --steps 5 --rounds 5
    python benchmarks/precision.py --device cuda --threads 8

On the CPU the figures depend on native bf16 (AVX512-BF16 / AMX: common/precision.py); on a
shared machine the spread column says how much the rounds disagree.
"""
import atexit
import os
import shutil
import tempfile

# a cold inductor / AOTAutograd cache, so compile seconds are those of a first run
_CACHE = tempfile.mkdtemp(prefix="precision_inductor_")
os.environ["TORCHINDUCTOR_CACHE_DIR"] = _CACHE
atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)

import argparse  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import selfsup  # noqa: E402
from models import build_backbone  # noqa: E402
from train_ssl import parse_config  # noqa: E402

MODELS = {
    "resnet18": {
        "label": "SimSiam, CIFAR-stem ResNet-18 width 64",
        "argv": ["model.width=64", "method.simsiam.proj_dim=2048", "method.simsiam.pred_hidden=512",
                 "method.simsiam.proj_layers=2"],
        "batch": 128, "res": 32, "res2": 24,
    },
    "vit_tiny": {
        "label": "MoCo v3, ViT-Tiny patch 8 (yaml/vit/cifar10_vit_tiny_cpu.yaml)",
        "argv": ["--config", "yaml/vit/cifar10_vit_tiny_cpu.yaml"],
        "batch": None, "res": None, "res2": 32,      # None: the YAML's train.batch_size / data.crop_size
    },
}
FORMATS = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}
TOTAL_STEPS = 100_000   # length of the methods' per-step arrays (MoCo v3's EMA momentum)


def device_name(device):
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        name = next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except (OSError, subprocess.CalledProcessError, StopIteration):
        name = platform.processor() or "unknown CPU"
    return f"{name}, {os.cpu_count()} logical CPUs"


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def n_graphs():
    """Graphs Dynamo has compiled in this process so far (each recompile adds one)."""
    return torch._dynamo.utils.counters["stats"]["unique_graphs"]


def n_graph_breaks():
    return sum(torch._dynamo.utils.counters["graph_break"].values())


class Setting:
    """One model copy (same seed for all), its optimizer and inputs, stepped in one configuration."""

    def __init__(self, cfg, batch, device, amp, fmt, compiled=False):
        self.device, self.batch, self.fmt, self.compiled = device, batch, fmt, compiled
        self.amp = torch.bfloat16 if amp == "bf16" else None
        self.name = f"{amp} {'compiled' if compiled else 'eager'} {fmt}"
        torch.manual_seed(0)
        self.model = selfsup.build_method(cfg.method, build_backbone(cfg.model))
        self.model.to(device, memory_format=FORMATS[fmt])
        self.model.prepare(TOTAL_STEPS, TOTAL_STEPS)
        self.opt = torch.optim.SGD([p for p in self.model.parameters() if p.requires_grad], lr=0.01, momentum=0.9)
        self.fn = torch.compile(self.model, dynamic=False) if compiled else self.model
        self.views, self.i = {}, 0

    def inputs(self, res):
        if res not in self.views:
            g = torch.Generator().manual_seed(res)
            self.views[res] = [torch.randn(self.batch, 3, res, res, generator=g).to(self.device).contiguous(
                memory_format=FORMATS[self.fmt]) for _ in range(2)]
        return self.views[res]

    def step(self, res):
        views = self.inputs(res)
        self.model.begin_step(self.i)
        with torch.autocast(self.device.type, dtype=self.amp or torch.bfloat16, enabled=self.amp is not None):
            loss = self.fn(views)["loss"]
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.model.on_step(self.i)
        self.i += 1

    def timed(self, res, steps):
        """Seconds per step over `steps` steps (device synchronised before both clock reads)."""
        sync(self.device)
        t = time.perf_counter()
        for _ in range(steps):
            self.step(res)
        sync(self.device)
        return (time.perf_counter() - t) / steps


def rounds(settings, res, args):
    """Every setting `args.steps` steps per round, alternating, `args.rounds` rounds; per setting
    the median seconds per step and the spread (max - min) / median of the rounds."""
    per = {s.name: [] for s in settings}
    for r in range(args.rounds):
        order = settings if r % 2 == 0 else settings[::-1]   # no setting always runs first
        for s in order:
            per[s.name].append(s.timed(res, args.steps))
    return {k: (statistics.median(v), (max(v) - min(v)) / statistics.median(v)) for k, v in per.items()}


def compile_warmup(s, res, max_steps=4):
    """Step the compiled setting at `res` until a step compiles nothing new. Returns the compiling
    steps' count and seconds, the graphs Dynamo compiled and its graph breaks (compile seconds =
    those seconds minus as many eager steps, subtracted once the eager step is measured)."""
    g0, b0, times = n_graphs(), n_graph_breaks(), []
    for _ in range(max_steps):
        g = n_graphs()
        t = s.timed(res, 1)
        if n_graphs() == g and times:   # steady (the first step always counts: it may hit a cache)
            break
        times.append(t)
    return {"res": res, "steps": len(times), "seconds": sum(times), "graphs": n_graphs() - g0,
            "breaks": n_graph_breaks() - b0}


def with_eager(c, eager_step):
    return dict(c, eager=eager_step, compile=c["seconds"] - c["steps"] * eager_step)


def first_line(e):
    lines = [ln for ln in str(e).splitlines() if ln.strip()]
    return f"{type(e).__name__}: {lines[0] if lines else ''}"


def bench_model(key, args, device):
    spec = MODELS[key]
    cfg = parse_config(spec["argv"])
    batch, res = spec["batch"] or cfg.train.batch_size, spec["res"] or cfg.data.crop_size
    out = {"label": spec["label"], "batch": batch, "res": res, "res2": spec["res2"]}
    log = lambda msg: print(f"  [{key}] {msg}", file=sys.stderr, flush=True)  # noqa: E731

    # ---- part 1: precision x memory format, eager
    settings = [Setting(cfg, batch, device, amp, fmt) for amp in ("fp32", "bf16") for fmt in FORMATS]
    for s in settings:
        s.timed(res, args.warmup)
    log(f"part 1: {len(settings)} settings x {args.rounds} rounds x {args.steps} steps")
    out["part1"] = rounds(settings, res, args)
    fp32 = settings[0]
    bf16 = min(settings[2:], key=lambda s: out["part1"][s.name][0])
    out["best_fmt"] = bf16.fmt
    for s in settings:
        if s not in (fp32, bf16):
            del s.model, s.opt, s.fn, s.views
    if args.no_compile:
        return out

    # ---- part 2: eager vs compiled, bf16 in the faster memory format
    comp = Setting(cfg, batch, device, "bf16", bf16.fmt, compiled=True)
    log(f"part 2: compiling ({bf16.fmt}, {res} px)")
    torch._dynamo.reset()
    try:
        first = compile_warmup(comp, res)
    except Exception as e:  # noqa: BLE001 -- a compile error is a result to report
        out["compile_error"] = first_line(e)
        log(f"compile failed: {out['compile_error']}")
        return out
    log(f"part 2: {args.rounds} rounds at {res} px")
    out["part2"] = rounds([fp32, bf16, comp], res, args)
    eager_step = out["part2"][bf16.name][0]
    out["compile"] = [with_eager(first, eager_step)]
    res2 = spec["res2"]
    if res2:
        log(f"part 2: shape change to {res2} px and back")
        try:
            bf16.timed(res2, args.warmup)
            second = compile_warmup(comp, res2)
            out["part2_res2"] = rounds([bf16, comp], res2, args)
            out["compile"].append(with_eager(second, out["part2_res2"][bf16.name][0]))
            back = compile_warmup(comp, res, max_steps=1)
            out["compile"].append(dict(with_eager(back, eager_step), back=True))
        except Exception as e:  # noqa: BLE001
            out["compile_error"] = f"at {res2} px: {first_line(e)}"
    return out


def print_part1(results, args):
    print("\n1. Precision and memory format, eager (images/s: median of rounds; spread: (max-min)/median)")
    for key, r in results.items():
        print(f"\n{r['label']}, batch {r['batch']}, 2 views x {r['res']} px")
        print(f"{'precision':<11}{'memory format':<16}{'images/s':>10}{'vs fp32 eager':>15}{'spread':>9}")
        ref = r["part1"]["fp32 eager contiguous"][0]
        for name, (sec, spread) in r["part1"].items():
            amp, _, fmt = name.split()
            print(f"{amp:<11}{fmt:<16}{r['batch'] / sec:>10.1f}{ref / sec:>15.2f}{spread:>8.0%}")
        p = r["part1"]
        cl = {amp: p[f"{amp} eager contiguous"][0] / p[f"{amp} eager channels_last"][0] for amp in ("fp32", "bf16")}
        print(f"channels_last speed-up over contiguous: fp32 {cl['fp32']:.2f}x, bf16 {cl['bf16']:.2f}x")


def print_part2(results, args):
    done = {k: r for k, r in results.items() if "part1" in r}
    print("\n2. torch.compile (inductor, dynamic=False, whole method module), bf16 in the faster memory format")
    print(f"{'model':<10}{'px':>4}  {'setting':<30}{'images/s':>10}{'vs fp32 eager':>15}{'vs bf16 eager':>15}{'spread':>9}")
    for key, r in done.items():
        if "compile_error" in r and "part2" not in r:
            print(f"{key:<10}{r['res']:>4}  compile failed: {r['compile_error']}")
            continue
        ref, eager = r["part2"]["fp32 eager contiguous"][0], r["part2"][f"bf16 eager {r['best_fmt']}"][0]
        for name, (sec, spread) in r["part2"].items():
            print(f"{key:<10}{r['res']:>4}  {name:<30}{r['batch'] / sec:>10.1f}{ref / sec:>15.2f}{eager / sec:>15.2f}"
                  f"{spread:>8.0%}")
        if "part2_res2" in r:
            eager2 = r["part2_res2"][f"bf16 eager {r['best_fmt']}"][0]
            for name, (sec, spread) in r["part2_res2"].items():
                print(f"{key:<10}{r['res2']:>4}  {name:<30}{r['batch'] / sec:>10.1f}{'-':>15}{eager2 / sec:>15.2f}"
                      f"{spread:>8.0%}")
        if "compile_error" in r:
            print(f"{key:<10}{'':>4}  {r['compile_error']}")
    print("\nCompile time (cold cache): the compiling steps' seconds minus as many eager bf16 steps at that shape")
    print(f"{'model':<10}{'shape':<20}{'steps':>6}{'step(s) s':>11}{'eager step s':>14}{'compile s':>12}"
          f"{'graphs':>8}{'breaks':>8}")
    for key, r in done.items():
        for c in r.get("compile", []):
            shape = f"{c['res']} px" + (" (back)" if c.get("back") else " (first)" if c is r["compile"][0] else " (new)")
            comp = f"{c['compile']:.1f}" if c["graphs"] else "0 (cached)"
            print(f"{key:<10}{shape:<20}{c['steps']:>6}{c['seconds']:>11.1f}{c['eager']:>14.2f}{comp:>12}"
                  f"{c['graphs']:>8}{c['breaks']:>8}")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=2, help="timed steps per setting per round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1, help="untimed eager steps per setting (and per new shape)")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--models", default="resnet18,vit_tiny", help=f"comma-separated, of: {', '.join(MODELS)}")
    p.add_argument("--no-compile", action="store_true", help="part 1 only")
    args = p.parse_args()
    keys = [k.strip() for k in args.models.split(",") if k.strip()]
    unknown = [k for k in keys if k not in MODELS]
    if unknown:
        p.error(f"unknown model(s) {', '.join(unknown)}; choose from {', '.join(MODELS)}")
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device is visible")
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True   # as common/run.py sets for training
    load0, t0 = os.getloadavg()[0], time.perf_counter()
    results = {key: bench_model(key, args, device) for key in keys}
    print(f"device: {args.device} ({device_name(device)}), torch {torch.__version__}, {args.threads} threads, "
          f"{args.steps} steps x {args.rounds} rounds per setting, SGD (momentum 0.9), random inputs")
    if device.type == "cpu":
        print(f"load average (1 min): {load0:.1f} at the start, {os.getloadavg()[0]:.1f} at the end; "
              f"run took {(time.perf_counter() - t0) / 60:.0f} min")
    print_part1(results, args)
    if not args.no_compile:
        print_part2(results, args)


if __name__ == "__main__":
    main()
