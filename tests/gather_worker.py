"""Run under torchrun by test_dist.py: checks the cross-rank gathers and their gradients."""
import sys

import torch

sys.path.insert(0, sys.argv[1])
from common import dist  # noqa: E402

dist.init_distributed("cpu")
r, w = dist.rank(), dist.world_size()
x = torch.full((2, 3), float(r + 1), requires_grad=True)
weights = torch.arange(2 * w * 3, dtype=torch.float32).view(2 * w, 3)

g = dist.all_gather_with_grad(x)
assert torch.equal(g, torch.cat([torch.full((2, 3), float(i + 1)) for i in range(w)]))
(g * weights).sum().backward()
# every rank's loss sees this rank's slice with the same weights: the gradient sums over ranks
assert torch.equal(x.grad, w * weights[2 * r:2 * r + 2]), x.grad

assert not dist.all_gather_no_grad(x).requires_grad
v = dist.all_gather_variable(torch.full((r + 1, 2), float(r)))   # rank r holds r + 1 rows
assert v.tolist() == [[float(i)] * 2 for i in range(w) for _ in range(i + 1)]
s = dist.all_reduce_sum_with_grad(x.sum().view(1))
assert s.item() == sum(6 * (i + 1) for i in range(w))
print(f"rank {r}: gathers ok")
dist.cleanup()
