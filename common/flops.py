"""The FLOP ledger: what a run actually computed, measured with torch.utils.flop_counter.

Counting every step under FlopCounterMode would slow training, so the ledger measures a piece
of work the first time it sees its `key` and reuses that count afterwards. The key must hold
everything the cost depends on (resolution, number of views, batch size, the block a partial
back-propagation stops at, ...): `with ledger.count(("train", res, views, bsz)): ...`.
The count covers forward and backward, and whatever else runs inside the block (momentum
encoders, selection passes); `kind` separates e.g. training from selection FLOPs.
Counts are per rank; `global_total` sums them over ranks.
"""
import contextlib
from collections import defaultdict

import torch
from torch.utils.flop_counter import FlopCounterMode

from common import dist


def _cpu_attention_flops():
    """torch's flop counter has formulas for the CUDA attention kernels but not for the CPU one
    that F.scaled_dot_product_attention dispatches to, so a ViT's attention would count 0 FLOPs
    on the CPU (found by benchmarks/vit_compression.py); count it with torch's own SDPA formulas."""
    from torch.utils import flop_counter as fc
    fwd = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    bwd = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu_backward", None)
    if fwd is None or bwd is None or not hasattr(fc, "sdpa_flop_count"):
        return {}

    def forward(query, key, value, *args, out_shape=None, **kwargs):
        return fc.sdpa_flop_count(query, key, value)

    def backward(grad_out, query, key, value, *args, out_shape=None, **kwargs):
        return fc.sdpa_backward_flop_count(grad_out, query, key, value)
    return {fwd: forward, bwd: backward}


class FlopLedger:
    def __init__(self):
        self.per_key = {}
        self.local = defaultdict(float)

    @contextlib.contextmanager
    def count(self, key, kind="train"):
        if key in self.per_key:
            yield
        else:
            with FlopCounterMode(display=False, custom_mapping=_cpu_attention_flops()) as counter:
                yield
            self.per_key[key] = float(counter.get_total_flops())
        self.local[kind] += self.per_key[key]

    def add(self, kind, amount):
        """Accumulate an analytic quantity next to the measured FLOPs (NeurIPS'24 sample-cost
        units, `budget_units`): saved, resumed and summed over ranks like them."""
        self.local[kind] += float(amount)

    def flops_of(self, key):
        return self.per_key.get(key)

    def global_total(self, kind="train"):
        """Sum over ranks of the FLOPs counted under `kind` (a collective: call on every rank)."""
        t = torch.tensor([self.local[kind]], dtype=torch.float64)
        if dist.is_dist() and dist.torch_dist_backend() == "nccl":
            t = t.cuda()
        return dist.all_reduce_sum(t).item()

    def state_dict(self):
        return {"local": dict(self.local)}

    def load_state_dict(self, state):
        self.local = defaultdict(float, state["local"])
