"""The ImageNet-size data path (data/multiview.py, data/decode.py): the views keep their law
(RandomResizedCrop area and log-uniform aspect ratio, flip rate) whatever the decoding; JPEG
draft decoding keeps each crop's geometry; data.decode=device gives the worker path's views;
the sampler hands each item the resolution of its step."""
import io
import json
import math
import os

import numpy as np
import pytest
import torch
from PIL import Image

from common import rng
from common.config import ConfigError
from conftest import TINY, read_metrics, run
from data.decode import collate, device_batch
from data.folder import ImageFolderImages
from data.multiview import (EvalDataset, MultiViewDataset, decode_for_resize, decode_scaled, draft_scale, jpeg_views,
                            pil_views, tensor_views)
from data.sampler import EpochSampler

RATIO = (3 / 4, 4 / 3)


def natural_jpeg(path, width, height, seed):
    """Smoothed noise at two scales + a gradient + grain: JPEG q90 with photo-like statistics."""
    r = np.random.default_rng(seed)
    img = np.zeros((height, width, 3), np.float32)
    for cells, amp in ((4, 80.0), (16, 40.0)):
        small = (r.random((max(2, cells * height // width), cells, 3)) * 255).astype(np.uint8)
        img += (np.asarray(Image.fromarray(small).resize((width, height), Image.Resampling.BICUBIC), np.float32) - 128) * amp / 128
    img += 128 + np.linspace(-40, 40, width)[None, :, None] + r.normal(0, 4, img.shape)
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(path, quality=90)


@pytest.fixture(scope="module")
def jpeg_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("jpegs")
    sizes = [(200, 150), (150, 200), (320, 240), (160, 120)]
    for i in range(12):
        os.makedirs(root / f"c{i % 2}", exist_ok=True)
        natural_jpeg(root / f"c{i % 2}" / f"{i:03d}.jpg", *sizes[i % 4], seed=i)
    return str(root)


def reference_boxes(n, height, width, scale, seed):
    """The specified law in numpy (Inception crop): area fraction U(scale), log aspect
    U(log ratio), 10 tries to fit, else the central crop within the ratio range."""
    r = np.random.default_rng(seed)
    out = np.zeros((n, 2))
    for k in range(n):
        for _ in range(10):
            target = height * width * r.uniform(*scale)
            aspect = math.exp(r.uniform(math.log(RATIO[0]), math.log(RATIO[1])))
            w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
            if 0 < w <= width and 0 < h <= height:
                break
        else:
            ar = width / height
            w, h = (width, round(width / RATIO[0])) if ar < RATIO[0] else \
                (round(height * RATIO[1]), height) if ar > RATIO[1] else (width, height)
        out[k] = h * w / (height * width), w / h
    return out


def ks(a, b):
    """Two-sample Kolmogorov-Smirnov statistic and its alpha = 0.001 critical value."""
    grid = np.sort(np.concatenate([a, b]))
    d = np.abs(np.searchsorted(np.sort(a), grid, "right") / len(a) -
               np.searchsorted(np.sort(b), grid, "right") / len(b)).max()
    return d, 1.95 * math.sqrt((len(a) + len(b)) / (len(a) * len(b)))


def drawn(height, width, scale, n_images=2000, views=2):
    """The loader's own draws (MultiViewDataset.draw with its per-image generators)."""
    ds = MultiViewDataset(None, views, 224, crop_scale=scale)
    area, aspect, flips = [], [], []
    for i in range(n_images):
        boxes, f, _ = ds.draw(height, width, views, scale, rng.generator(0, rng.Stream.DATA, 0, i))
        area += [h * w / (height * width) for _, _, h, w in boxes]
        aspect += [w / h for _, _, h, w in boxes]
        flips += f
    return np.array(area), np.array(aspect), np.array(flips)


def test_crop_area_aspect_and_flip_follow_the_specified_law():
    # multi-crop's local scale on a 500x375 image: every try fits, so the law is analytic:
    # area fraction U(0.05, 0.14), log aspect U(log 3/4, log 4/3) (slack: integer rounding of w, h)
    area, aspect, flips = drawn(375, 500, (0.05, 0.14))
    n = len(area)
    for x, lo, hi in ((area, 0.05, 0.14), (np.log(aspect), math.log(RATIO[0]), math.log(RATIO[1]))):
        xs = np.sort(x)
        d = np.abs(np.arange(1, n + 1) / n - np.clip((xs - lo) / (hi - lo), 0, 1)).max()
        assert d < 1.95 / math.sqrt(n) + 0.015, d
    # flip rate 0.5 within 4 sigma
    assert abs(flips.mean() - 0.5) < 4 * math.sqrt(0.25 / n), flips.mean()
    # global scale (0.2, 1): tries are rejected, so compare with the numpy reference law
    area, aspect, flips = drawn(375, 500, (0.2, 1.0))
    ref = reference_boxes(8000, 375, 500, (0.2, 1.0), seed=1)
    for ours, theirs in ((area, ref[:, 0]), (np.log(aspect), np.log(ref[:, 1]))):
        d, crit = ks(ours, theirs)
        assert d < crit, (d, crit)
    # a chi-square on 10 equal-probability bins of the reference agrees
    edges = np.quantile(ref[:, 0], np.linspace(0, 1, 11)[1:-1])
    counts = np.bincount(np.searchsorted(edges, area), minlength=10)
    chi2 = ((counts - len(area) / 10) ** 2 / (len(area) / 10)).sum()
    assert chi2 < 27.9, chi2          # chi-square, 9 degrees of freedom, alpha = 0.001
    assert abs(flips.mean() - 0.5) < 4 * math.sqrt(0.25 / len(flips))
    # the same tests reject a slightly different law (scale 0.25-1): they can fail
    d, crit = ks(area, reference_boxes(8000, 375, 500, (0.25, 1.0), seed=1)[:, 0])
    assert d > 2 * crit


def test_draft_scale_keeps_every_crop_at_least_its_output_size():
    assert draft_scale([(0, 0, 200, 300)], [96]) == 2        # 200 / 2 >= 96
    assert draft_scale([(0, 0, 400, 400)], [96]) == 4
    assert draft_scale([(0, 0, 800, 800)] * 2, [96, 96]) == 8
    assert draft_scale([(0, 0, 200, 300), (0, 0, 150, 150)], [96, 96]) == 1   # one small crop: full size
    assert draft_scale([(0, 0, 200, 300), (0, 0, 150, 150)], [96, 32]) == 2   # each crop against its own size


def test_draft_decoding_keeps_each_crops_geometry(jpeg_folder):
    images = ImageFolderImages(jpeg_folder)
    boxes = [(10, 20, 120, 140), (40, 30, 100, 100)]
    full, _ = images.load(1)                                        # c0/002.jpg, 320x240, at full size
    assert full.shape == (3, 240, 320)
    encoded, (height, width), _ = images.read(1)
    assert encoded.dim() == 1 and (height, width) == (240, 320)     # the file's bytes, the header's size
    assert draft_scale(boxes, [32, 32]) == 2
    hwc, scale = decode_scaled(encoded, 2)
    assert scale == (2.0, 2.0) and hwc.shape == (120, 160, 3)          # decoded at half size
    with Image.open(io.BytesIO(encoded.numpy())) as img:              # the pixels of Pillow's draft decode
        img.draft("RGB", (160, 120))
        assert np.array_equal(hwc, np.asarray(img.convert("RGB")))
    views = pil_views(Image.fromarray(hwc), scale, boxes, [False, True], 32).float()
    assert torch.equal(jpeg_views(encoded, [(boxes, [False, True], 32)])[0], views.to(torch.uint8))
    ref = tensor_views(full, boxes, [False, True], 32).float()
    assert (views - ref).abs().mean() < 1.5, (views - ref).abs().mean()
    # a crop shifted by 8 px, or flipped the other way, is far off: the check has teeth
    shifted = tensor_views(full, [(18, 28, 120, 140), (40, 30, 100, 100)], [False, True], 32).float()
    assert (views - shifted)[0].abs().mean() > 3 * (views - ref)[0].abs().mean()
    assert (views - ref.flip(-1)).abs().mean() > 3 * (views - ref).abs().mean()


def test_a_batch_assembled_in_place_equals_the_collated_items(jpeg_folder):
    """MultiViewDataset.__getitems__ resamples every view straight into one batch buffer (in
    shared memory inside a worker): exactly collate([ds[k] for k in keys]), for JPEGs decoded at
    full and at draft scale, multi-crop and decoded-tensor sources, in a worker too."""
    from torch.utils.data import DataLoader
    from data.synthetic import SyntheticImages
    kw = dict(local_views=2, local_crop_size=24, local_crop_scale=(0.05, 0.3))
    sources = [ImageFolderImages(jpeg_folder), SyntheticImages(8, split=0, seed=0, image_size=48, num_classes=2)]
    for images in sources:
        ds = MultiViewDataset(images, 3, 40, **kw)
        for size in (40, 24):                  # 24: draft decoding for most of the JPEGs
            keys = [(i, 1, size) for i in range(8)]
            ref = collate([ds[k] for k in keys])
            for batch in (ds.__getitems__(keys),
                          next(iter(DataLoader(ds, batch_size=8, sampler=keys, num_workers=1, collate_fn=collate)))):
                assert set(batch) == set(ref)
                assert all(torch.equal(batch[k], ref[k]) for k in ref)
            assert batch["views"].shape == (8, 3, 3, size, size) and batch["local_views"].shape == (8, 2, 3, 24, 24)
    with pytest.raises(ValueError, match="several view sizes"):
        ds.__getitems__([(0, 1, 40), (1, 1, 24)])


def test_eval_view_of_a_jpeg_is_the_resize_and_centre_crop_of_the_full_image(jpeg_folder):
    """EvalDataset decodes image files with libjpeg-turbo, at a DCT scale where the shorter side
    stays >= the resize; the view is still resize(shorter side) + centre crop of the full image,
    to within the DCT scaling's difference (measured mean |diff| 0.3-0.6 grey levels drafted, 0 at full scale)."""
    from torchvision.transforms.v2 import functional as TF
    images = ImageFolderImages(jpeg_folder)
    encoded, (height, width), _ = images.read(1)                       # 320x240
    assert decode_for_resize(encoded, height, width, 64).shape == (3, 120, 160)    # 240 >= 2 x 64
    assert decode_for_resize(encoded, height, width, 121).shape == (3, 240, 320)   # 240 < 2 x 121: full
    for resize, crop in ((64, 56), (150, 128)):   # 64: every image drafted to 1/2; 150: full scale
        ds = EvalDataset(images, resize, crop)
        for i in range(4):                        # 200x150, 320x240, 200x150, 320x240
            full, label = images.load(i)
            ref = TF.center_crop(TF.resize(full, resize, antialias=True), [crop, crop]).float()
            out = ds[i]
            assert out["image"].shape == (3, crop, crop) and out["label"] == label
            diff = (out["image"].float() - ref).abs().mean()
            assert diff < 1.0, (resize, i, diff)
            assert (out["image"].float() - ref.flip(-1)).abs().mean() > 4 * diff + 1   # the check has teeth


def test_device_decode_gives_the_worker_paths_views_on_the_cpu(jpeg_folder):
    """Tolerance: mean |difference| < 0.5 grey levels, under 0.1 % of pixels off by more than
    8 (libjpeg-turbo through torchvision vs Pillow, PIL's vs torch's antialiased resize on
    drafted images; measured ~0.2 mean, max ~15 on edges)."""
    images = ImageFolderImages(jpeg_folder)
    kw = dict(local_views=2, local_crop_size=24, local_crop_scale=(0.05, 0.3))
    worker = MultiViewDataset(images, 3, 64, **kw)
    device = MultiViewDataset(images, 3, 64, decode="device", **kw)
    for size in (64, 32):            # 32: the step's resolution, where draft decoding applies
        keys = [(i, 1, size) for i in range(len(images))]
        items = [worker[k] for k in keys]
        batch = device_batch(collate([device[k] for k in keys]), torch.device("cpu"))
        for p in ("", "local_"):
            ours = torch.stack([it[p + "views"] for it in items])
            assert batch[p + "views"].shape == ours.shape and batch[p + "views"].dtype == torch.uint8
            diff = (batch[p + "views"].float() - ours.float()).abs()
            assert diff.mean() < 0.5 and (diff > 8).float().mean() < 1e-3, (size, p, diff.mean(), diff.max())
            assert torch.equal(batch[p + "rand"], torch.stack([it[p + "rand"] for it in items]))
        # another epoch draws other boxes: the comparison is not trivially passed
        other = torch.stack([worker[(i, 2, size)]["views"] for i in range(len(images))]).float()
        assert (other - batch["views"].float()).abs().mean() > 10 * diff.mean()
    assert batch["views"].shape[-1] == 32 and batch["local_views"].shape[-1] == 24


def test_sampler_gives_each_item_its_steps_resolution():
    sizes = np.array([224] * 5 + [96] * 3 + [128] * 4)   # 12 steps: 4 per epoch x 3 epochs
    for world in (1, 2):
        for rank in range(world):
            s = EpochSampler(40, 10 // world, world_size=world, rank=rank, seed=1)
            s.set_sizes(sizes)
            s.set_epoch(1, skip_steps=1)                 # resume at step 5
            keys = list(s)
            assert [k[2] for k in keys] == [int(sizes[5 + j // (10 // world)]) for j in range(len(keys))]
            s.set_sizes(None)                            # the same items, without sizes
            assert [k[:2] for k in keys] == list(s)
    s.set_sizes(sizes[:9])                               # steps 8..11, past the schedule's end from 9
    s.set_epoch(2)
    assert [k[2] for k in s] == [128] * 20
    s.set_sizes(sizes[:8])
    assert [k[2] for k in s] == [96] * 20
    ds = MultiViewDataset(None, 2, 64)
    ds.images = type("Src", (), {"load": lambda self, i: (torch.zeros(3, 80, 60, dtype=torch.uint8), 0),
                                 "__len__": lambda self: 1})()
    assert ds[(0, 0, 32)]["views"].shape == (2, 3, 32, 32)
    assert ds[(0, 0, 224)]["views"].shape == (2, 3, 64, 64)  # never above data.crop_size


def test_train_ssl_with_device_decode_and_a_resolution_schedule(jpeg_folder, tmp_path):
    """train_ssl.py end to end on JPEGs with data.decode=device (device = cpu here) and a
    resolution schedule (the loader crops at each step's resolution)."""
    root = tmp_path / "ds"
    os.makedirs(root)
    for split in ("train", "val"):
        os.symlink(jpeg_folder, root / split)
    out = str(tmp_path / "run")
    run(["train_ssl.py"] + TINY + [f"output_dir={out}", "data.name=imagefolder", f"data.root={root}",
                                   "data.decode=device", "train.batch_size=4", "accel.progressive.mode=plain",
                                   "accel.progressive.r_min=16", "accel.progressive.step=8"])
    m = [r for r in read_metrics(out) if "loss" in r]
    assert len(m) == 6 and all(np.isfinite(r["loss"]) for r in m)
    assert sorted({r["resolution"] for r in m}) == [16, 24, 32]
    # linear_eval.py takes data.decode=device from the checkpoint's config for its augmented crops
    run(["linear_eval.py", "--checkpoint", os.path.join(out, "checkpoint.pt"), "eval.epochs=1", "eval.batch_size=4"])
    with open(os.path.join(out, "linear_eval.json")) as f:
        assert 0 <= json.load(f)["top1"] <= 100


def test_train_supervised_with_device_decode_matches_worker_decode(jpeg_folder, tmp_path):
    """data.decode=device in train_supervised.py (Selective-Backprop draws a variable number of
    loader batches per step, each decoded on the device): the same run as worker decoding, up to
    the decoders' sub-grey-level difference (first step's loss measured 0.5 % apart; the runs then
    drift apart as any two float paths do)."""
    root = tmp_path / "ds"
    os.makedirs(root)
    for split in ("train", "val"):
        os.symlink(jpeg_folder, root / split)
    losses = {}
    for decode in ("worker", "device"):
        out = str(tmp_path / decode)
        run(["train_supervised.py", "data.name=imagefolder", f"data.root={root}", f"data.decode={decode}",
             f"output_dir={out}", "model.width=8", "train.batch_size=4", "train.epochs=2", "data.workers=0",
             "train.threads=1", "train.amp=none",
             "train.channels_last=false", "train.log_every=1", "data.crop_size=32", "data.eval_resize=32",
             "data.eval_crop=32",
             "select.method=selective_backprop", "select.resolution=16", "select.warmup_steps=1",
             "select.cooldown_fraction=0.2", "select.eval_every_epochs=2.0"])
        losses[decode] = [r["loss"] for r in read_metrics(out) if "loss" in r]
    assert len(losses["device"]) == len(losses["worker"]) >= 4 and np.isfinite(losses["device"]).all()
    assert abs(losses["device"][0] - losses["worker"][0]) < 0.015 * losses["worker"][0], losses


def test_png_grayscale_and_cmyk_files_take_both_decode_paths(tmp_path):
    """Non-RGB JPEGs and other formats: RGB views either way (the worker sends a PNG or a CMYK
    JPEG decoded; a grayscale JPEG goes as bytes and decodes to three equal channels)."""
    os.makedirs(tmp_path / "a")
    natural_jpeg(tmp_path / "a" / "0.jpg", 120, 90, seed=0)
    with Image.open(tmp_path / "a" / "0.jpg") as img:
        img.convert("L").save(tmp_path / "a" / "1.jpg", quality=90)
        img.save(tmp_path / "a" / "2.png")
        img.convert("CMYK").save(tmp_path / "a" / "3.jpg", quality=90)
    images = ImageFolderImages(str(tmp_path))
    assert [images.read(i)[0].dim() for i in range(4)] == [1, 1, 3, 3]
    worker = MultiViewDataset(images, 2, 32)
    device = MultiViewDataset(images, 2, 32, decode="device")
    items = [worker[(i, 0)] for i in range(4)]
    batch = device_batch(collate([device[(i, 0)] for i in range(4)]), "cpu")
    ours = torch.stack([it["views"] for it in items])
    assert ours.shape == batch["views"].shape == (4, 2, 3, 32, 32)
    assert (batch["views"].float() - ours.float()).abs().mean() < 0.5
    gray = ours[1].float()
    assert torch.equal(gray[:, 0], gray[:, 1]) and torch.equal(gray[:, 1], gray[:, 2])


def test_device_decode_of_decoded_sources_is_a_one_line_error():
    p = run(["train_ssl.py", "data.decode=device"], check=False)           # synthetic data
    assert p.returncode == 2 and "data.decode=device needs image files" in p.stderr
    assert "Traceback" not in p.stderr
    with pytest.raises(ConfigError, match="data.decode must be worker or device, got 'gpu'"):
        MultiViewDataset(None, 2, 32, decode="gpu")
