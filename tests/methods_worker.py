"""Run under torchrun by test_dist.py: the methods' cross-rank state on 2 gloo ranks.

- MoCo: after an all-rank enqueue, every rank's queue holds rank 0's keys, then rank 1's.
- SwAV: Sinkhorn codes of each rank's half equal the codes of the whole batch on one process.
- DINO: the centre update uses the teacher outputs of all ranks.
"""
import sys

import torch

sys.path.insert(0, sys.argv[1])
sys.path.insert(0, sys.argv[1] + "/tests")
from common import dist  # noqa: E402
from selfsup.swav import sinkhorn  # noqa: E402
from test_methods import build  # noqa: E402

dist.init_distributed("cpu")
r, w = dist.rank(), dist.world_size()
g = torch.Generator().manual_seed(0)
keys = [torch.nn.functional.normalize(torch.randn(3, 16, generator=g), dim=1) for _ in range(w)]

moco = build("mocov2", queue_size=8)
moco.update_state([(None, keys[r]), (None, keys[r])], [(0, 1)])
assert torch.equal(moco.queue[:3 * w], torch.cat(keys)), "queue != rank-ordered keys of all ranks"
assert moco.queue_ptr.item() == 3 * w

scores = torch.randn(4 * w, 5, generator=g)
mine = sinkhorn(scores[4 * r:4 * (r + 1)], 0.5, 3)
full = dist.all_gather_no_grad(mine)
if r == 0:
    # the single-process reference, computed without any process group
    import common.dist as cd
    saved = cd.is_dist
    cd.is_dist = lambda: False
    try:
        ref = sinkhorn(scores, 0.5, 3)
    finally:
        cd.is_dist = saved
    assert torch.allclose(full, ref, atol=1e-5), (full - ref).abs().max()

dino = build("dino", center_momentum=0.5)
t = torch.full((2, 64), float(r + 1))                 # rank r's teacher outputs: all r + 1
dino.update_state([(None, t)], None)
mean = sum(i + 1 for i in range(w)) / w                # global batch mean
assert torch.allclose(dino.center, torch.full((1, 64), 0.5 * mean)), dino.center[0, :3]
print(f"rank {r}: methods ok")
dist.cleanup()
