"""The CPU-scale training set-up shared by the benchmarks that launch train_ssl.py: CIFAR-10 JPEGs
from the folder beside the repo (the synthetic set if it is absent), a narrow CIFAR-stem
ResNet-18, batch 128, no checkpoints or online kNN during the run."""
import os

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
