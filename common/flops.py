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


class FlopLedger:
    def __init__(self):
        self.per_key = {}
        self.local = defaultdict(float)

    @contextlib.contextmanager
    def count(self, key, kind="train"):
        if key in self.per_key:
            yield
        else:
            with FlopCounterMode(display=False) as counter:
                yield
            self.per_key[key] = float(counter.get_total_flops())
        self.local[kind] += self.per_key[key]

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
