"""Run by test_vit_compression.py, once as one process and once under torchrun with 2 gloo ranks:
online CA-MSE's estimate and re-plan at step 0 for MoCo v3 on a ViT-Tiny, in float64 with
global-batch BN, on one fixed global batch that the ranks split into contiguous shards. Rank 0
saves the profiles, the winner and the re-made run length. Usage: online_camse_worker.py REPO OUT.pt"""
import sys

import torch

sys.path.insert(0, sys.argv[1])
sys.path.insert(0, sys.argv[1] + "/tests")
from accel import compression, online_camse  # noqa: E402
from common import dist  # noqa: E402
from common.config import load_config  # noqa: E402
from conftest import TINY  # noqa: E402
from models.batchnorm import convert_sync_bn  # noqa: E402
from models.vit import ViT  # noqa: E402
from selfsup.config import ssl_defaults  # noqa: E402
import selfsup  # noqa: E402
from test_methods import small_overrides  # noqa: E402

dist.init_distributed("cpu")
torch.set_num_threads(1)
r, w = dist.rank(), dist.world_size()
cfg = load_config(ssl_defaults(), None, TINY + small_overrides("mocov3") + [
    "model.arch=vit_t16", "model.patch_size=8", "train.budget=100", "accel.compression.online=true",
    "accel.compression.online_every=3", "accel.compression.online_drop_ratios=[0.0]",
    "accel.compression.online_patch_sizes=[8,16]", "accel.compression.online_sub_batch=4"])
torch.manual_seed(0)
method = selfsup.build_method(cfg.method, ViT("vit_t16", patch_size=8))
comp = compression.CompressionSchedule(cfg, method, 16)
comp.follow(comp.run_length(4))
if w > 1:
    method = convert_sync_bn(method, torch.device("cpu"))
method = method.double().train()
g = torch.Generator().manual_seed(1)
views = [torch.randn(8, 3, 32, 32, generator=g, dtype=torch.float64) for _ in range(2)]   # the global batch
mine = [v[r * 8 // w:(r + 1) * 8 // w] for v in views]
profiles = online_camse.estimate(method, mine, None, [(0.0, 8, 0.0, 8), (0.0, 16, 0.0, 16)], 4,
                                 lambda st: comp.image_cost(32, st), comp.step_units((0.0, 8, 0.0, 8)), 0)
out = online_camse.reestimate(method, comp, mine, None, 0, seed=0)
if r == 0:
    torch.save({"profiles": profiles, "stage": out["stage"], "units": out["units"],
                "progress": torch.tensor(comp.length.progress)}, sys.argv[2])
dist.cleanup()
