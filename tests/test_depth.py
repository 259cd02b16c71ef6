"""Monocular depth for UBN (thesis ch. 2, sec. 2.4): Eq. 2.5 head, KITTI raw loader and
projection, label fractions, metrics, and train_depth_ubn.py end to end."""
import os

import numpy as np
import torch
from PIL import Image

from common import checkpoint
from conftest import read_metrics, run
from data.depth import labeled_indices, regular_labeled
from data.kitti import KittiDepth, project_velodyne, read_split, velo_to_image
from data.synthetic_depth import SyntheticDepth
from evaluation.depth_metrics import NAMES, depth_metrics, summarize
from models.dispnet import DispNet, disp_to_depth

TINY = ["data.height=32", "data.width=64", "data.synthetic_train_size=48", "data.synthetic_test_size=8",
        "model.width=4", "model.levels=4", "train.batch_size=8", "train.epochs=2", "train.threads=1", "train.amp=none",
        "train.channels_last=false",
        "train.log_every=2", "train.eval_every_epochs=1.0", "data.labeled_fraction=0.5", "eval.batch_size=8"]


def test_depth_head_range_is_eq_2_5():
    s, m = 0.4, 0.0125
    x = torch.tensor([-50.0, 0.0, 50.0])
    d = disp_to_depth(x, s, m)
    torch.testing.assert_close(d, torch.tensor([1 / m, 1 / (0.5 * s + m), 1 / (s + m)]))   # 80 m, 4.71 m, 2.42 m
    net = DispNet(width=4, levels=4).eval()
    with torch.no_grad():
        for p in net.predict:
            p.bias.fill_(30.0)   # saturate the sigmoid: every prediction at the near end
        outs = net(torch.randn(2, 3, 40, 100))
    assert [tuple(o.shape) for o in outs] == [(2, 1, 40, 100), (2, 1, 20, 50), (2, 1, 10, 25), (2, 1, 5, 13)]
    for o in outs:
        assert o.min() >= 1 / (s + m) - 1e-4 and o.max() <= 1 / m
    torch.testing.assert_close(outs[0].max(), torch.tensor(1 / (s + m)), atol=1e-3, rtol=0)


def write_calib(folder):
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "calib_cam_to_cam.txt"), "w") as f:
        f.write("calib_time: 09-Jan-2012 13:57:47\ncorner_dist: 9.950000e-02\n")
        f.write("R_rect_00: 0.6 0 0.8 0 1 0 -0.8 0 0.6\n")          # rotation about the y axis
        f.write("P_rect_02: 100 0 50 5 0 100 20 0 0 0 1 0.2\n")
        f.write("P_rect_03: 100 0 50 -50 0 100 20 0 0 0 1 0.2\n")
    with open(os.path.join(folder, "calib_velo_to_cam.txt"), "w") as f:
        f.write("calib_time: 15-Mar-2012 11:37:16\nR: 0 -1 0 0 0 -1 1 0 0\nT: 0.1 -0.2 0.3\n"
                "delta_f: 0 0\ndelta_c: 0 0\n")


def test_kitti_fixture_projects_a_hand_computed_point(tmp_path):
    root = str(tmp_path)
    drive = "2011_09_26/2011_09_26_drive_0001_sync"
    write_calib(os.path.join(root, "2011_09_26"))
    for cam in (2, 3):
        d = os.path.join(root, drive, f"image_0{cam}", "data")
        os.makedirs(d)
        for frame in (0, 1, 2, 3):
            Image.fromarray(np.full((60, 200, 3), 40 * frame, np.uint8)).save(os.path.join(d, f"{frame:010d}.png"))
    velo_dir = os.path.join(root, drive, "velodyne_points", "data")
    os.makedirs(velo_dir)
    pts = np.array([[10, 1, -0.5, 0.3],      # the hand-computed point
                    [10.05, 1, -0.5, 0.9],   # u = 157.85, v = 23.65, depth 7.13: same pixel, farther -> dropped
                    [-10, 1, -0.5, 0.3],     # behind the Velodyne -> dropped
                    [10, -30, 0, 0.1]],      # far to the right -> outside the image
                   np.float32)
    for frame in (0, 1, 2, 3):
        pts.tofile(os.path.join(velo_dir, f"{frame:010d}.bin"))
    with open(os.path.join(root, "train.txt"), "w") as f:
        f.write(f"{drive} 0 l\n{drive} 1 l\n{drive} 3 l\n{drive} 2 l\n")
    with open(os.path.join(root, "test.txt"), "w") as f:
        f.write(f"{drive}/image_02/data/0000000001.jpg {drive}/image_03/data/0000000001.jpg\n")

    # by hand: camera = R p + T = (-1 + 0.1, 0.5 - 0.2, 10 + 0.3) = (-0.9, 0.3, 10.3);
    # rectified = R_rect (-0.9, 0.3, 10.3) = (-0.54 + 8.24, 0.3, 0.72 + 6.18) = (7.7, 0.3, 6.9);
    # P_rect_02 (7.7, 0.3, 6.9, 1) = (770 + 345 + 5, 30 + 138, 6.9 + 0.2) = (1120, 168, 7.1)
    # -> u = 157.746, v = 23.662, depth 7.1 m; pixel (row 24, col 158) at 60 x 200;
    # at 30 x 50: col floor(158.246 / 4) = 39, row floor(24.162 / 2) = 12
    P = velo_to_image(os.path.join(root, "2011_09_26"), 2)
    np.testing.assert_allclose(P @ np.array([10, 1, -0.5, 1.0]), [1120, 168, 7.1], atol=1e-5)
    full = project_velodyne(np.fromfile(os.path.join(velo_dir, "0000000000.bin"), np.float32).reshape(-1, 4), P, (60, 200))
    assert np.count_nonzero(full) == 1 and full[24, 158] == np.float32(7.1)

    ds = KittiDepth(root, "train.txt", height=30, width=50)
    image, depth = ds.load(0)
    assert image.shape == (3, 30, 50) and depth.shape == (1, 30, 50)
    assert torch.count_nonzero(depth) == 1 and depth[0, 12, 39] == np.float32(7.1)
    assert abs(ds.load(1)[0].mean().item() - 40 / 255) < 1e-6 and ds.load(1, with_depth=False)[1] is None
    # the right camera: u = (1120 - 55) / 7.1 = 150.0 -> column 150 at full width
    right = project_velodyne(pts, velo_to_image(os.path.join(root, "2011_09_26"), 3), (60, 200))
    assert right[24, 150] == np.float32(7.1)
    # both split formats; a .jpg entry falls back to the .png on disk
    assert read_split(os.path.join(root, "test.txt")) == [(drive, 1, 2)]
    assert KittiDepth(root, os.path.join(root, "test.txt"), 30, 50).load(0)[1][0, 12, 39] == np.float32(7.1)
    # a lower-frame-rate sensor: along the drive's frame order (0, 1, 2, 3), every 2nd frame is labeled
    assert labeled_indices(ds, 0.5) == [1, 2]     # items of frames 1 and 3


def test_regular_label_pattern():
    assert regular_labeled(8, 1.0) == [True] * 8
    assert regular_labeled(8, 0.25) == [False, False, False, True] * 2
    assert sum(regular_labeled(1000, 1 / 3)) == 333 and sum(regular_labeled(1000, 0.3)) == 300
    ds = SyntheticDepth(64, height=16, width=48)
    assert labeled_indices(ds, 0.125) == [7, 15, 23, 31, 39, 47, 55, 63]


def test_depth_metrics_by_hand():
    gt = torch.zeros(2, 1, 2, 2)
    gt[0, 0] = torch.tensor([[10.0, 20.0], [0.0, 100.0]])      # 0: no ground truth; 100 m: beyond the cap
    gt[1, 0] = torch.tensor([[5.0, 5.0], [5.0, 5.0]])
    pred = torch.zeros(2, 1, 2, 2)
    pred[0, 0] = torch.tensor([[13.0, 20.0], [3.0, 3.0]])
    pred[1, 0] = torch.full((2, 2), 5.0)
    rows = depth_metrics(pred, gt)
    r = dict(zip(NAMES, rows[0].tolist()))
    assert r["delta1"] == 0.5 and r["delta2"] == 1.0                      # 13/10 = 1.3 in [1.25, 1.5625); 20/20
    assert abs(r["abs_rel"] - 0.15) < 1e-12 and abs(r["sq_rel"] - 0.45) < 1e-12   # (0.3 + 0) / 2, (9/10) / 2
    assert abs(r["rmse"] - np.sqrt(4.5)) < 1e-12 and abs(r["rmse_log"] - np.sqrt(np.log(1.3) ** 2 / 2)) < 1e-12
    s = summarize(rows)
    assert s["delta1"] == 0.75 and abs(s["rmse"] - np.sqrt(4.5) / 2) < 1e-12


def test_synthetic_scenes_are_deterministic_and_have_ground_at_the_right_depth():
    ds = SyntheticDepth(4, height=64, width=192)
    a, b = ds.load(3), ds.load(3)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    depth = a[1][0]
    assert depth.max() <= 80 and (depth == 0).float().mean() > 0.2   # sky and far ground carry no ground truth
    bottom, above = depth[-1].median(), depth[-2].median()          # ground: Z = f h / (v - v0), constant per row
    assert 2 < bottom < 8 and above > bottom and (depth[-1] == bottom).float().mean() > 0.5


def test_train_depth_ubn_runs_and_resumes_exactly(tmp_path):
    full, cut = str(tmp_path / "full"), str(tmp_path / "cut")
    args = ["train_depth_ubn.py"] + TINY + ["ubn.enabled=true", "ubn.unlabeled_batch_size=16"]
    p = run(args + [f"output_dir={full}"])
    assert "24 labeled frames" in p.stdout and "8 labeled + 16 unlabeled" in p.stdout
    rows = read_metrics(full)
    evals = [r for r in rows if "delta1" in r and "final" not in r]
    assert [r["step"] for r in evals] == [6, 12]                    # 48 images / 8 = 6 steps per epoch
    assert all(np.isfinite(r["loss"]) for r in rows if "loss" in r)
    assert 0 <= rows[-1]["delta1"] <= 1 and rows[-1]["abs_rel"] > 0
    p = run(args + [f"output_dir={cut}", "train.stop_at_step=5"])
    assert "stopped at step 5" in p.stderr
    run(args + [f"output_dir={cut}"])
    a = checkpoint.load(os.path.join(full, "checkpoint.pt"))
    b = checkpoint.load(os.path.join(cut, "checkpoint.pt"))
    assert a["step"] == b["step"] == 12
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k


def test_ubn_yaml_files_resolve():
    import glob
    from common.config import load_config
    from conftest import REPO
    from train_depth_ubn import DEPTH_DEFAULTS
    from train_supervised import SUPERVISED_DEFAULTS
    files = sorted(glob.glob(os.path.join(REPO, "yaml", "ubn", "*.yaml")))
    depth = [f for f in files if os.path.basename(f).startswith(("kitti", "quickstart"))]
    assert len(depth) == 12 and len(files) == 21
    for f in files:   # the others are few-label CIFAR-10 runs of train_supervised.py
        cfg = load_config(DEPTH_DEFAULTS if f in depth else SUPERVISED_DEFAULTS, f)
        if "_f0.0625" in f:
            assert cfg.data.labeled_fraction == 0.0625 and cfg.train.batch_size == 128 and cfg.optim.lr == 2e-4
