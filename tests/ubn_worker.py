"""Run under torchrun by test_ubn.py: UBN on 2 gloo ranks with GlobalBatchNorm and DDP equals a
1-process UBN step on the global batches (statistics over every rank's labeled + unlabeled
images, gradients averaged over ranks). Writes the largest differences to argv[1] (JSON)."""
import copy
import json
import os
import sys

import torch
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel as DDP

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from models import ubn  # noqa: E402
from common import dist  # noqa: E402
from models.batchnorm import convert_sync_bn  # noqa: E402

dist.init_distributed("cpu")
torch.set_num_threads(1)
r, w = dist.rank(), dist.world_size()
torch.manual_seed(0)
net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1),
                    nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
ref = copy.deepcopy(net)
g = torch.Generator().manual_seed(1)
xs = [torch.randn(3, 3, 6, 6, generator=g) for _ in range(w)]             # labeled, per rank
ys = [torch.randn(2 + 3 * i, 3, 6, 6, generator=g) + i for i in range(w)]  # unlabeled, unequal sizes

ddp = DDP(convert_sync_bn(net, torch.device("cpu")))
out = ubn.forward(ddp, xs[r], ys[r])
out.pow(2).sum().backward()

# the same step in one process: statistics of all combined batches, loss averaged over ranks
stats = ubn.collect_statistics(ref, torch.cat([torch.cat([x, y]) for x, y in zip(xs, ys)]))
with ubn.normalize_with(ref, stats):
    full = ref(torch.cat(xs))
(full.pow(2).sum() / w).backward()

res = {"max_out_diff": (out - full[3 * r:3 * r + 3]).abs().max().item(),
       "max_running_diff": max((a - b).abs().max().item() for a, b in zip(ddp.module.state_dict().values(),
                                                                          ref.state_dict().values())),
       "max_grad_diff": max((p.grad - q.grad).abs().max().item() for p, q in zip(ddp.module.parameters(),
                                                                                 ref.parameters()))}
if r == 0:
    with open(sys.argv[1], "w") as f:
        json.dump(res, f)
print(f"rank {r}: {res}")
del ddp  # DDP's reducer must go before the process group (else: "terminate called" at exit)
dist.cleanup()
