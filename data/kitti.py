"""KITTI raw for supervised monocular depth (thesis ch. 2, sec. 2.4): Eigen split file lists,
images resized to data.height x data.width (256 x 832 in the thesis), and sparse ground truth
from the Velodyne scan projected into the image's colour camera.

Expected layout (the KITTI raw download, unzipped in place):

    ROOT/2011_09_26/calib_cam_to_cam.txt          P_rect_02, P_rect_03, R_rect_00
    ROOT/2011_09_26/calib_velo_to_cam.txt         R, T (Velodyne -> camera 0)
    ROOT/2011_09_26/2011_09_26_drive_0001_sync/image_02/data/0000000000.png   (left colour)
    ROOT/2011_09_26/2011_09_26_drive_0001_sync/image_03/data/0000000000.png   (right colour)
    ROOT/2011_09_26/2011_09_26_drive_0001_sync/velodyne_points/data/0000000000.bin

Split files, one frame per line, in either of the two common formats:

    2011_09_26/2011_09_26_drive_0022_sync 473 l                        (folder, frame, side l|r)
    2011_09_26/2011_09_26_drive_0002_sync/image_02/data/0000000069.png ...   (first path is used)

Side l is the left colour camera (image_02), r the right one (image_03); each image gets the
depth of its own camera. A .jpg path falls back to .png and vice versa.

Projection: X_img = P_rect_0c @ R_rect_00 @ [R | T] @ X_velo (homogeneous). Points behind the
Velodyne (x < 0) or the camera, or outside the image, are dropped; the depth is the third
coordinate of X_img (metres along the rectified optical axis); where several points fall in
one pixel the nearest is kept. Pixel centres are integers in P's coordinates, so at the
original size a point lands in pixel round(u), and in an image resized by a factor s_x in
floor((u + 0.5) s_x) (pixel areas are scaled, not re-sampled: the depth map stays sparse).
(The widely used Eigen-split export also subtracts 1 from round(u), a 1-based convention; we
do not.)
"""
import os

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from data.folder import DataError


def read_calib(path):
    """KITTI calibration text file -> {name: float array}; non-numeric lines are skipped."""
    if not os.path.isfile(path):
        raise DataError(f"KITTI calibration file not found: {path}")
    out = {}
    with open(path) as f:
        for line in f:
            if ":" not in line:
                continue
            key, value = line.split(":", 1)
            try:
                out[key.strip()] = np.array([float(v) for v in value.split()], dtype=np.float64)
            except ValueError:
                pass   # calib_time and similar
    return out


def velo_to_image(calib_dir, cam=2):
    """3x4 matrix taking homogeneous Velodyne points to homogeneous pixels of camera `cam`."""
    c2c = read_calib(os.path.join(calib_dir, "calib_cam_to_cam.txt"))
    v2c = read_calib(os.path.join(calib_dir, "calib_velo_to_cam.txt"))
    velo_to_cam = np.eye(4)
    velo_to_cam[:3, :3] = v2c["R"].reshape(3, 3)
    velo_to_cam[:3, 3] = v2c["T"]
    rect = np.eye(4)
    rect[:3, :3] = c2c["R_rect_00"].reshape(3, 3)
    return c2c[f"P_rect_0{cam}"].reshape(3, 4) @ rect @ velo_to_cam


def load_velodyne(path):
    """(N, 4) float32: x, y, z, reflectance."""
    if not os.path.isfile(path):
        raise DataError(f"Velodyne scan not found: {path}")
    return np.fromfile(path, dtype=np.float32).reshape(-1, 4)


def project_velodyne(points, P, image_hw, out_hw=None):
    """Sparse depth map [out_h, out_w] (0 = no point) of Velodyne `points` seen through P by an
    image of size image_hw, drawn at out_hw (default: image_hw)."""
    h, w = image_hw
    oh, ow = out_hw or image_hw
    pts = points[points[:, 0] >= 0].astype(np.float64)
    pts = np.concatenate([pts[:, :3], np.ones((len(pts), 1))], 1)
    proj = pts @ P.T
    depth = proj[:, 2]
    front = depth > 0
    proj, depth = proj[front], depth[front]
    u, v = proj[:, 0] / depth, proj[:, 1] / depth
    inside = (u >= -0.5) & (u < w - 0.5) & (v >= -0.5) & (v < h - 0.5)
    col = np.floor((u[inside] + 0.5) * ow / w).astype(np.int64)
    row = np.floor((v[inside] + 0.5) * oh / h).astype(np.int64)
    out = np.full((oh, ow), np.inf)
    np.minimum.at(out, (row, col), depth[inside])
    out[np.isinf(out)] = 0
    return out.astype(np.float32)


def read_split(path):
    """-> [(drive folder, frame index, cam)] in file order."""
    if not os.path.isfile(path):
        raise DataError(f"split file not found: {path}")
    frames = []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) >= 2 and parts[1].lstrip("-").isdigit():
                side = parts[2] if len(parts) > 2 else "l"
                if side not in ("l", "r"):
                    raise DataError(f"{path}:{n}: side '{side}' is not l or r")
                frames.append((parts[0], int(parts[1]), 2 if side == "l" else 3))
                continue
            p = parts[0].split("/")
            if len(p) < 5 or not p[2].startswith("image_0"):
                raise DataError(f"{path}:{n}: cannot read '{line.strip()}' (expected 'DATE/DRIVE FRAME l|r' "
                                f"or 'DATE/DRIVE/image_0X/data/FRAME.png')")
            frames.append(("/".join(p[:2]), int(os.path.splitext(p[4])[0]), int(p[2][-1])))
    if not frames:
        raise DataError(f"split file {path} lists no frames")
    return frames


def _image_path(root, drive, frame, cam):
    base = os.path.join(root, drive, f"image_0{cam}", "data", f"{frame:010d}")
    for ext in (".png", ".jpg"):
        if os.path.isfile(base + ext):
            return base + ext
    raise DataError(f"KITTI image not found: {base}.png (or .jpg)")


class KittiDepth:
    """`load(i)` -> (image float [3, H, W] in [0, 1], sparse depth float [1, H, W], 0 = none)."""

    def __init__(self, root, split_file, height=256, width=832):
        self.root, self.height, self.width = root, height, width
        self.frames = read_split(os.path.join(root, split_file) if not os.path.isabs(split_file)
                                 and not os.path.isfile(split_file) else split_file)
        self._P = {}
        self.description = f"KITTI raw {os.path.basename(split_file)} ({len(self.frames)} frames, {height}x{width})"

    def __len__(self):
        return len(self.frames)

    def sequence_positions(self):
        """(drive, position of the frame among that drive's listed frames in frame order) per item:
        the time axis along which a slower depth sensor drops frames (data/depth.py)."""
        order = sorted(range(len(self.frames)), key=lambda i: (self.frames[i][0], self.frames[i][2], self.frames[i][1]))
        pos, count = [0] * len(self.frames), {}
        for i in order:
            key = (self.frames[i][0], self.frames[i][2])
            pos[i] = count.get(key, 0)
            count[key] = pos[i] + 1
        return [(self.frames[i][0], pos[i]) for i in range(len(self.frames))]

    def projection(self, drive, cam):
        if (drive, cam) not in self._P:
            self._P[(drive, cam)] = velo_to_image(os.path.join(self.root, drive.split("/")[0]), cam)
        return self._P[(drive, cam)]

    def load(self, i, with_depth=True):
        drive, frame, cam = self.frames[i]
        path = _image_path(self.root, drive, frame, cam)
        try:
            with Image.open(path) as img:
                rgb = np.asarray(img.convert("RGB"))
        except OSError as e:
            raise DataError(f"cannot read image {path}: {e}") from None
        image = torch.from_numpy(rgb.copy()).permute(2, 0, 1).float().div_(255)
        hw = rgb.shape[:2]
        if hw != (self.height, self.width):
            image = F.interpolate(image[None], size=(self.height, self.width), mode="bilinear",
                                  antialias=True, align_corners=False)[0]
        if not with_depth:
            return image, None
        velo = load_velodyne(os.path.join(self.root, drive, "velodyne_points", "data", f"{frame:010d}.bin"))
        depth = project_velodyne(velo, self.projection(drive, cam), hw, (self.height, self.width))
        return image, torch.from_numpy(depth)[None]
