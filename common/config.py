"""Configuration: a tree of defaults per script, YAML files that override it, `key.sub=value` on the command line.

Precedence (lowest first): the defaults in this file (and the per-method defaults that each
`selfsup/<method>.py` declares), the YAML file chain (a file may name a `base:` file it
inherits from), then command-line overrides. Every key must exist in the defaults: an unknown
key is an error that names the key and the closest valid one. Values are type-checked against
the default's type (an int is accepted where a float is expected; a default of "auto" also
accepts true / false; a default of None accepts anything).
"""
import argparse
import copy
import difflib
import os

import yaml


class InputError(ValueError):
    """Bad input from the user (config, data, checkpoint): reported as one line naming the key,
    file or value, exit code 2 (common/run.py's `cli`)."""


class ConfigError(InputError):
    """A bad key, value or file in the configuration. The message names it."""


# The sections every image-classification-style script shares (data, augment, model, optim,
# train). Each script composes its own tree from these and its own sections (`compose`), so a key
# that a script does not read is an unknown key there. train_depth_ubn.py has a tree of its own.
SHARED = {
    "output_dir": "runs/quickstart",
    # The paper row an experiment file reproduces (paper, table, row, the paper's own figures):
    # free-form, never read by training; kept in the run's config.yaml for report.py.
    "paper": None,
    "data": {
        "name": "synthetic",          # synthetic | imagefolder | cifar10
        "root": None,                 # folder with train/ and val/ or test/ (imagefolder), or cifar10 root
        "download": False,            # cifar10 only: let torchvision download it
        "train_split": "train",
        "val_split": None,            # None: val/ if it exists, else test/
        "subset_per_class": 0,        # >0: keep only the first N images of each class (CPU-scale runs)
        "val_subset_per_class": 0,
        "synthetic_train_size": 2000,
        "synthetic_val_size": 1000,
        "synthetic_image_size": 32,
        "synthetic_classes": 10,
        "crop_size": 32,              # side of the crops the loader workers produce (largest training resolution)
        "crop_scale": [0.2, 1.0],     # RandomResizedCrop area range (SimSiam / MoCo v2 use 0.2-1.0)
        "eval_resize": 32,            # kNN / linear eval: resize shorter side to this, then ...
        "eval_crop": 32,              # ... center crop to this (ImageNet: 256 / 224)
        "workers": 2,                 # loader worker processes per rank
        # image folders: worker (loader workers decode and crop) | device (workers read the file bytes;
        # the training device decodes the JPEGs and crops the views: data/decode.py)
        "decode": "worker",
        "prefetch_factor": 4,
    },
    "augment": {
        # Photometric operations run batched on the training device (data/augment.py).
        # Colour strength scales linearly with the magnitude m; m = 5 is the standard
        # SimCLR/SimSiam strength (WACV'23 sec. 4: "scale the colour jittering linearly where the
        # standard scale is defined as 5"); m = 0 leaves colour untouched.
        "magnitude": 5.0,
        "jitter": [0.4, 0.4, 0.4, 0.1],   # brightness, contrast, saturation, hue at m = 5
        "jitter_prob": 0.8,
        "grayscale_prob": 0.2,            # at m = 5; scaled with m like the jitter
        # Blur and solarisation probabilities, one value for all global views or one per view
        # (BYOL / DINO's asymmetric recipes: blur [1.0, 0.1], solarize [0.0, 0.2]); views past
        # the list's end take its last value. ImageNet SimCLR / SimSiam: blur [0.5].
        "blur_prob": [0.0],
        "blur_sigma": [0.1, 2.0],
        "solarize_prob": [0.0],
        "local_blur_prob": 0.0,           # multi-crop's small views (DINO: 0.5)
        "local_solarize_prob": 0.0,
        "flip_prob": 0.5,
        "mean": [0.485, 0.456, 0.406],
        "std": [0.229, 0.224, 0.225],
        "resolution": 0,                  # training resolution; 0 = data.crop_size
    },
    "model": {
        "arch": "resnet18",           # resnet18 | resnet34 | resnet50 | resnet101 | resnet152 (torchvision) | vit_t16 | vit_s16 | vit_b16
        "cifar_stem": True,           # 3x3 stride-1 conv, no max-pool: for 32-64 px images
        "width": 64,                  # channels of the first stage (torchvision: 64); smaller for CPU runs
        "zero_init_residual": False,
        "patch_size": 16,             # ViTs (vit_t16 | vit_s16 | vit_b16): patch side in pixels
        "freeze_patch_embed": False,  # ViTs: fixed random patch projection (MoCo v3 sec. 4.2)
    },
    "optim": {
        "name": "sgd",                # sgd | lars | adamw
        "lr": 0.05,                   # base learning rate; see lr_scaling
        "lr_scaling": "linear",       # linear: lr x global_batch / 256 (SimSiam, MoCo); sqrt: lr x
                                      # sqrt(global_batch / 256); none: as given (common/schedules.base_lr)
        "momentum": 0.9,
        "weight_decay": 1e-4,
        # None: constant weight decay; a number: cosine from weight_decay to this value over
        # training (DINO's ViT recipe: 0.04 -> 0.4). Never applied to biases and norm parameters
        # under lars / adamw (they are excluded from decay there).
        "weight_decay_end": None,
        "clip_grad": 0.0,             # > 0: clip the global gradient norm to this (DINO ViT: 3.0)
        # cosine: WACV'23 Eq. 5 (Eq. 6 with warmup_epochs > 0) | constant | poly (warm-up, then
        # (1 - s)^poly_power) | f1clr: Eq. 8, warm-up of warmup_epochs, anti-phased momentum |
        # onecycle: Eq. 7, first phase onecycle_pct of training (common/schedules.py)
        "schedule": "cosine",
        "warmup_epochs": 0.0,
        "warmup_fraction": 0.0,       # >0: warm-up as this fraction of training (of train.budget), instead of warmup_epochs
        "final_lr": 0.0,
        "momentum_low": 0.85,         # f1clr / onecycle: momentum falls to this while lr peaks
        "momentum_high": 0.95,
        "onecycle_pct": 0.3,
        "poly_power": 2.0,
    },
    "train": {
        "epochs": 100,
        "batch_size": 512,            # global batch, split evenly across ranks
        "seed": 0,
        "device": "auto",             # auto | cpu | cuda
        # auto | none | bf16 | fp16 (CUDA only). auto: bf16 on CUDA devices that compute it natively,
        # none elsewhere and with train.float64 (on CPUs bf16 cost the quickstart accuracy:
        # common/precision.py). Autocast keeps losses, softmax and normalisations in float32; weights,
        # optimizer state, EMA targets and queues stay float32 (common/precision.py). The value
        # actually used is written back here, so config.yaml and checkpoints record it.
        "amp": "auto",
        # auto | true | false: channels-last activations. auto: on for convolutional backbones on
        # the CPU and under bf16 / fp16 autocast on CUDA, off for ViTs (common/precision.py).
        "channels_last": "auto",
        # torch.compile the model's training forward and backward (one graph per distinct step
        # shape; the recompile limit is set from the run's schedules, and hitting it is an error,
        # never a silent fall-back to eager). compile_backend: inductor, or aot_eager / eager to debug.
        "compile": False,
        "compile_backend": "inductor",
        # Steps between reads of the cross-rank stop / divergence flags: each read waits for the
        # device, so a step that neither logs nor checks never does (a signal stops the run within
        # this many steps; log lines, saves and the last step check too). 1: every step.
        "check_every": 10,
        # true: a step that does not log raises at any host-device synchronisation (CUDA:
        # torch.cuda.set_sync_debug_mode("error"); CPU: reads of tensor values, common/host_sync.py)
        "forbid_sync": False,
        "sync_bn": False,             # all BatchNorm layers use global-batch statistics
        "threads": 0,                 # torch intra-op threads per rank; 0 = torch default
        "log_every": 10,              # steps between metrics.jsonl lines
        "ckpt_every_steps": 200,      # checkpoint.pt refresh inside an epoch (0: end of epoch only)
        "snapshot_every_epochs": 0,   # also keep ckpt_XXXX.pt every N epochs (0: never)
        "stop_at_step": 0,            # >0: save and exit after this global step, as a pre-emption would
        # Resuming with a config that differs from the checkpoint's is refused (exit 2), except for keys
        # that cannot change the trajectory (logging, saving, kNN / eval cadence, workers: common/run.py
        # FREE_ON_RESUME). To change others on purpose (extend train.epochs, say), name them here:
        # comma-separated keys or sections ("train.epochs,optim"), or "all". Earlier configs are kept
        # as config.1.yaml, config.2.yaml, ... next to config.yaml.
        "allow_changes": "",
    },
}


def compose(base, **sections):
    """A new defaults tree: `base` deep-copied, each keyword a section to add or, for a section
    `base` already has, keys to add to it (a key already there is an error: one place per default)."""
    out = copy.deepcopy(base)
    for name, section in sections.items():
        if isinstance(out.get(name), dict):
            clash = set(section) & set(out[name])
            if clash:
                raise ValueError(f"compose: {name}.{sorted(clash)[0]} has a default already")
            out[name].update(copy.deepcopy(section))
        elif name in out:
            raise ValueError(f"compose: {name} has a default already")
        else:
            out[name] = copy.deepcopy(section)
    return out


class Config(dict):
    """A dict whose keys are also attributes (cfg.optim.lr)."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name, value):
        self[name] = value

    def to_dict(self):
        return {k: v.to_dict() if isinstance(v, Config) else copy.deepcopy(v) for k, v in self.items()}


def _to_config(d):
    return Config({k: _to_config(v) if isinstance(v, dict) else v for k, v in d.items()})


def _flat_keys(d, prefix=""):
    for k, v in d.items():
        key = prefix + k
        if isinstance(v, dict) and v:
            yield from _flat_keys(v, key + ".")
        yield key


def _unknown(key, defaults):
    close = difflib.get_close_matches(key, list(_flat_keys(defaults)), n=1, cutoff=0.5)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return ConfigError(f"unknown config key '{key}'{hint}")


def _coerce(key, value, default):
    """Check `value` against the type of `default`; return the value to store."""
    if default is None or value is None:
        return value
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        raise ConfigError(f"config key '{key}' expects true or false, got {value!r}")
    if isinstance(default, int):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"config key '{key}' expects an integer, got {value!r}")
    if isinstance(default, float):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads '1e-4' as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"config key '{key}' expects a number, got {value!r}")
    if isinstance(default, str):
        if isinstance(value, str) or (default == "auto" and isinstance(value, bool)):
            return value   # a key whose default is "auto" also takes true / false
        raise ConfigError(f"config key '{key}' expects a string, got {value!r}")
    if isinstance(default, list):
        if not isinstance(value, list):
            raise ConfigError(f"config key '{key}' expects a list, got {value!r}")
        if default:
            return [_coerce(f"{key}[{i}]", v, default[0]) for i, v in enumerate(value)]
        return value
    return value


def _merge(base, update, defaults, root, prefix=""):
    """Merge `update` into `base` (in place), checking keys and types against `defaults`
    (the subtree at `prefix` of the whole tree `root`, which error hints search)."""
    for k, v in update.items():
        key = prefix + str(k)
        if k not in defaults:
            while isinstance(v, dict) and len(v) == 1:   # name the whole key: interloss.partial_backprop
                (sub_k, v), = v.items()
                key += f".{sub_k}"
            raise _unknown(key, root)
        d = defaults[k]
        if isinstance(d, dict):
            if not isinstance(v, dict):
                raise ConfigError(f"config key '{key}' is a section; give its keys, not {v!r}")
            _merge(base[k], v, d, root, key + ".")
        else:
            base[k] = _coerce(key, v, d)


def _read_yaml(path, seen=()):
    """Read a YAML file and the chain of `base:` files it inherits from (nearest wins)."""
    if not os.path.isfile(path):
        raise ConfigError(f"config file not found: {path}")
    if os.path.abspath(path) in seen:
        raise ConfigError(f"config file {path} inherits from itself")
    try:
        with open(path) as f:
            data = yaml.safe_load(f) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of keys, not {type(data).__name__}")
    chain = []
    base = data.pop("base", None)
    if base is not None:
        base_path = os.path.join(os.path.dirname(path), base)
        chain = _read_yaml(base_path, seen + (os.path.abspath(path),))
    return chain + [(path, data)]


def parse_override(text):
    """'optim.lr=0.1' -> ('optim.lr', 0.1); the value is read as YAML (so [1,2], true, null work)."""
    if "=" not in text:
        raise ConfigError(f"command-line override '{text}' is not of the form key.sub=value")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def _nest(key, value):
    out = value
    for part in reversed(key.split(".")):
        out = {part: out}
    return out


def load_config(defaults, config_file=None, overrides=(), base=None):
    """Resolve defaults <- `base` (a stored config, e.g. a checkpoint's) <- YAML chain <-
    `key=value` overrides into a Config."""
    cfg = copy.deepcopy(defaults)
    if base is not None:
        try:
            _merge(cfg, base, defaults, defaults)
        except ConfigError as e:
            raise ConfigError(f"stored config: {e}") from None
    if config_file:
        for path, data in _read_yaml(config_file):
            try:
                _merge(cfg, data, defaults, defaults)
            except ConfigError as e:
                raise ConfigError(f"{path}: {e}") from None
    for text in overrides:
        key, value = parse_override(text)
        _merge(cfg, _nest(key, value), defaults, defaults)
    return _to_config(cfg)


def diff_configs(a, b, prefix=""):
    """Keys whose values differ between two config dicts (for the resume warning)."""
    out = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += diff_configs(va, vb, prefix + k + ".")
        elif va != vb:
            out.append(f"{prefix}{k}: {va!r} -> {vb!r}")
    return out


def save_config(cfg, path):
    with open(path, "w") as f:
        yaml.safe_dump(cfg.to_dict() if isinstance(cfg, Config) else cfg, f, sort_keys=False)


def parse_cli(argv, defaults, default_config, description, plan=False):
    """A script's command line: `--config FILE` (default `default_config`) and `key.sub=value`
    overrides, in any order -> the resolved Config. plan=True also takes `--plan` / `--json`
    (common/plan.py) and returns (Config, argparse namespace with .config, .plan, .json)."""
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=keys_help(defaults))
    p.add_argument("--config", default=default_config,
                   help=f"YAML experiment file (default: {os.path.relpath(default_config)})")
    p.add_argument("--print-config", action="store_true",
                   help="print the resolved config (defaults <- --config <- overrides) as YAML and exit")
    if plan:
        p.add_argument("--plan", action="store_true", help="print the run's plan (steps, schedules, FLOPs, "
                       "speed-up vs the file's baseline) without data or training, and exit")
        p.add_argument("--json", action="store_true", help="with --plan: as JSON")
    p.add_argument("overrides", nargs="*", metavar="key.sub=value", help="override a config value")
    args = p.parse_intermixed_args(argv)
    cfg = load_config(defaults, args.config, args.overrides)
    if args.print_config:
        print(f"# {args.config or 'defaults'}{' + ' + ' '.join(args.overrides) if args.overrides else ''}")
        print(yaml.safe_dump(cfg.to_dict(), sort_keys=False), end="")
        raise SystemExit(0)
    return (cfg, args) if plan else cfg


def keys_help(defaults, width=100):
    """--help's list of every config key, one line (wrapped) per section, with its default."""
    lines = ["config keys (key=default; set any with key.sub=value; --print-config shows a file's resolved "
             "values; meanings: the comments beside each default in common/config.py, the script and "
             "selfsup/<method>.py):"]

    def section(name, tree):
        leaves = [f"{k}={v!r}" for k, v in tree.items() if not isinstance(v, dict)]
        if leaves:
            line = f"  {name}: "
            for item in leaves:
                if len(line) + len(item) > width:
                    lines.append(line.rstrip())
                    line = " " * (len(name) + 4)
                line += item + " "
            lines.append(line.rstrip())
        for k, v in tree.items():
            if isinstance(v, dict):
                section(f"{name}.{k}", v)

    section("(top)", {k: v for k, v in defaults.items() if not isinstance(v, dict)})
    for k, v in defaults.items():
        if isinstance(v, dict):
            section(k, v)
    return "\n".join(lines)
