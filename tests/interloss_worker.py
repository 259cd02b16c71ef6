"""Run under torchrun by test_interloss.py: partial back-propagation under DDP on 2 gloo ranks.

Several steps with a different block drawn each step (the same on both ranks), SGD with momentum
and weight decay, DDP with find_unused_parameters as train_ssl.py builds it: the run must not
hang, the weights must stay identical on both ranks, and parameters outside the trained blocks
must keep weights and momentum buffers."""
import sys

import torch
from torch.nn.parallel import DistributedDataParallel as DDP

sys.path.insert(0, sys.argv[1])
sys.path.insert(0, sys.argv[1] + "/tests")
from common import dist  # noqa: E402
from models.batchnorm import convert_sync_bn  # noqa: E402
from test_interloss import build  # noqa: E402

dist.init_distributed("cpu")
torch.set_num_threads(1)
r = dist.rank()
m = build("mocov2", partial_backprop=True, hard_pairs=True)
m = convert_sync_bn(m, torch.device("cpu"))
m.prepare(12, 4)
ddp = DDP(m, find_unused_parameters=True)
opt = torch.optim.SGD([p for g in m.param_groups() for p in g["params"]], lr=0.05, momentum=0.9, weight_decay=1e-3)
g = torch.Generator().manual_seed(100 + r)       # each rank its own images
blocks = []
for step in range(12):
    m.begin_step(step)
    blocks.append(m.block)
    v = [torch.randn(8, 3, 16, 16, generator=g) for _ in range(2)]
    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    loss = ddp(v)["loss"]
    opt.zero_grad(set_to_none=True)
    loss.backward()
    m.after_backward(step)
    opt.step()
    m.on_step(step)
    assert torch.isfinite(loss), loss
    untouched = [n for n, p in m.named_parameters() if p.requires_grad and p.grad is None]  # (EMA targets move)
    assert all(torch.equal(before[n], dict(m.named_parameters())[n]) for n in untouched)
    flat = torch.cat([p.detach().flatten() for p in m.parameters()])
    both = dist.all_gather_no_grad(flat[None])
    assert torch.equal(both[0], both[1]), f"step {step}: ranks differ by {(both[0] - both[1]).abs().max()}"
assert len(set(blocks)) > 1, blocks
print(f"rank {r}: partial backprop ok, blocks {blocks}", flush=True)
del ddp  # DDP's reducer must go before the process group (else: "terminate called" at exit)
dist.cleanup()
