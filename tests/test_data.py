import os

import numpy as np
import pytest
import torch
from PIL import Image

from common.config import load_config
from conftest import CIFAR10, TINY, read_metrics, run
from data import DataError, build_images
from data.augment import DeviceAugment
from data.folder import ImageFolderImages
from data.multiview import N_RAND, MultiViewDataset
from data.sampler import EpochSampler
from data.synthetic import SyntheticImages, make_image
from selfsup.config import ssl_defaults


def test_synthetic_data_is_deterministic():
    a, la = make_image(123, seed=0, split=0)
    b, lb = make_image(123, seed=0, split=0)
    assert np.array_equal(a, b) and la == lb == 3
    assert not np.array_equal(a, make_image(123, seed=1, split=0)[0])   # another seed
    assert not np.array_equal(a, make_image(123, seed=0, split=1)[0])   # the held-out split differs
    ds = SyntheticImages(40, num_classes=10)
    img, label = ds.load(7)
    assert img.dtype == torch.uint8 and img.shape == (3, 32, 32) and label == 7
    assert np.bincount(ds.targets).tolist() == [4] * 10                 # balanced classes


def test_views_are_a_function_of_seed_epoch_and_index():
    ds = MultiViewDataset(SyntheticImages(10), num_views=3, crop_size=24)
    a, b = ds[(4, 0)], ds[(4, 0)]
    assert a["views"].shape == (3, 3, 24, 24) and a["rand"].shape == (3, N_RAND)
    assert torch.equal(a["views"], b["views"]) and torch.equal(a["rand"], b["rand"])
    assert not torch.equal(a["views"], ds[(4, 1)]["views"])            # next epoch: new crops
    assert not torch.equal(a["views"][0], a["views"][1])               # views differ


def test_sampler_two_ranks_cover_the_one_rank_global_batch():
    one = list(EpochSampler(50, 8, world_size=1, rank=0, seed=3))
    r0 = list(EpochSampler(50, 4, world_size=2, rank=0, seed=3))
    r1 = list(EpochSampler(50, 4, world_size=2, rank=1, seed=3))
    assert len(one) == 48 and len(r0) == len(r1) == 24                  # 6 full global batches
    for k in range(6):
        assert sorted(one[8 * k:8 * k + 8]) == sorted(r0[4 * k:4 * k + 4] + r1[4 * k:4 * k + 4])
    s = EpochSampler(50, 8, seed=3)
    s.set_epoch(0, skip_steps=2)
    assert list(s) == one[16:]                                          # resume skips trained batches
    s.set_epoch(1)
    assert [e for _, e in s] == [1] * 48 and list(s) != [(i, 1) for i, _ in one]


def _augment(magnitude):
    cfg = load_config(ssl_defaults())
    aug = DeviceAugment(cfg.augment)
    views = torch.randint(0, 256, (16, 2, 3, 20, 20), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    rand = torch.rand(16, 2, N_RAND, generator=torch.Generator().manual_seed(0))
    out = torch.stack(aug(views, rand, magnitude, resolution=20), 1)
    plain = aug.normalize(views.flatten(0, 1).float() / 255).view_as(out)
    return out, plain


def test_magnitude_zero_is_identity_and_strength_grows_with_m():
    out, plain = _augment(0.0)
    assert torch.allclose(out, plain, atol=1e-6)
    change = [(_augment(m)[0] - plain).abs().mean().item() for m in (1.0, 3.0, 5.0, 8.0)]
    assert all(a < b for a, b in zip(change, change[1:])), change


def test_resolution_is_applied_on_the_device():
    cfg = load_config(ssl_defaults())
    aug = DeviceAugment(cfg.augment)
    views = torch.randint(0, 256, (2, 3, 3, 32, 32), dtype=torch.uint8)
    out = aug(views, torch.rand(2, 3, N_RAND), 5.0, resolution=16)
    assert len(out) == 3 and out[0].shape == (2, 3, 16, 16)


def _folder(tmp_path, classes):
    for c, files in classes.items():
        os.makedirs(tmp_path / c, exist_ok=True)
        for f in files:
            Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / c / f)
    return str(tmp_path)


def test_image_folder_errors_name_the_folder_or_file(tmp_path):
    with pytest.raises(DataError, match="dataset folder not found: .*missing"):
        ImageFolderImages(str(tmp_path / "missing"))
    root = _folder(tmp_path / "a", {"cat": ["1.png"], "dog": []})
    with pytest.raises(DataError, match=r"class folder .*dog holds no images"):
        ImageFolderImages(root)
    root = _folder(tmp_path / "b", {"cat": ["1.png"]})
    (tmp_path / "b" / "cat" / "2.jpg").write_bytes(b"not a jpeg")
    ds = ImageFolderImages(root)
    assert ds.load(0)[0].shape == (3, 8, 8)
    with pytest.raises(DataError, match=r"cannot read image .*2.jpg"):
        ds.load(1)


def test_train_ssl_reports_bad_input_in_one_line(tmp_path):
    p = run(["train_ssl.py", "optim.lrr=0.1"], check=False)
    assert p.returncode == 2 and "unknown config key 'optim.lrr' (did you mean 'optim.lr'?)" in p.stderr
    p = run(["train_ssl.py", "data.name=imagefolder", f"data.root={tmp_path}/nope"], check=False)
    assert p.returncode == 2 and f"dataset folder not found: {tmp_path}/nope/train" in p.stderr
    assert "Traceback" not in p.stderr


@pytest.mark.skipif(not os.path.isdir(os.path.join(CIFAR10, "train")),
                    reason=f"CIFAR-10 image folder not found at {CIFAR10} (shared/datasets is not mounted)")
def test_cifar10_through_the_imagefolder_path(tmp_path):
    cfg = load_config(ssl_defaults(), None, ["data.name=imagefolder", f"data.root={CIFAR10}",
                                       "data.subset_per_class=3", "data.val_subset_per_class=2"])
    train, val, n = build_images(cfg.data)
    assert n == 10 and len(train) == 30 and len(val) == 20 and train.classes[0] == "airplane"
    assert train.load(0)[0].shape == (3, 32, 32)
    out = str(tmp_path / "run")
    run(["train_ssl.py", "--config", "yaml/cifar10_simsiam.yaml", f"data.root={CIFAR10}", f"output_dir={out}",
         "data.subset_per_class=8", "data.val_subset_per_class=4"] + TINY[2:] + ["train.epochs=1"])
    m = read_metrics(out)
    # 8 images x 10 classes in batches of 16: 5 steps; kNN over the 4 x 10 validation images: steps of 2.5 %
    assert [r["step"] for r in m if "loss" in r][-1] == 5 and all(np.isfinite(r["loss"]) for r in m if "loss" in r)
    assert all(abs(r["knn_top1"] / 2.5 - round(r["knn_top1"] / 2.5)) < 1e-4 for r in m if "knn_top1" in r)
