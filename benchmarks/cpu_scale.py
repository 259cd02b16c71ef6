"""The CPU-scale training set-up shared by the benchmarks that launch train_ssl.py: CIFAR-10 JPEGs
from the folder beside the repo (the synthetic set if it is absent), a narrow CIFAR-stem
ResNet-18, batch 128, no checkpoints or online kNN during the run. Also the seed options and
the mean +- std formatting those benchmarks share (report.py's convention: sample std, n)."""
import os
import statistics

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CIFAR10 = os.path.join(REPO, "..", "shared", "datasets", "cifar10")


def train_ssl_args(per_class, width, threads):
    """train_ssl.py arguments for `per_class` images per class (a fifth of that for validation)."""
    if os.path.isdir(os.path.join(CIFAR10, "train")):
        data = ["--config", "yaml/cifar10_simsiam_cpu.yaml", f"data.root={CIFAR10}",
                f"data.subset_per_class={per_class}", f"data.val_subset_per_class={per_class // 5}"]
    else:
        data = [f"data.synthetic_train_size={10 * per_class}"]
    return data + [f"model.width={width}", "train.batch_size=128", "knn.every_epochs=0", "train.ckpt_every_steps=0",
                   f"train.threads={threads}"]


def add_scale_args(parser):
    """--per-class, --width and --threads (the CPU scale above) and the seed options."""
    parser.add_argument("--per-class", type=int, default=500)
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    add_seed_args(parser)


def add_seed_args(parser):
    """--seeds N and --first-seed F, as benchmarks/wacv_table3_cpu.py takes them."""
    parser.add_argument("--seeds", type=int, default=1,
                        help="run every setting with N seeds (train.seed); figures as mean +- sample std (n)")
    parser.add_argument("--first-seed", type=int, default=0, help="seeds first-seed .. first-seed+N-1")


def seed_list(args):
    return list(range(args.first_seed, args.first_seed + args.seeds))


def mean_std(values, spec=".2f"):
    """'mean +- std (n=N)' with the sample standard deviation; one value alone as itself."""
    values = [float(v) for v in values]
    if len(values) == 1:
        return format(values[0], spec)
    std_spec = spec.replace("+", "")   # a signed mean ("+.2f"), an unsigned std
    return f"{statistics.mean(values):{spec}} +- {statistics.stdev(values):{std_spec}} (n={len(values)})"
