"""Fast Online Minibatch Selection (thesis 2023 ch. 4, Eq. 4.3-4.4, Algorithms 2-3), and the
baselines of Tables 4.1 / 4.4: greedy top-k and Selective-Backprop (Jiang et al. 2019).

Each step draws a large batch of b-bar samples uniformly, computes their losses without
gradient on images down-sampled to r-hat (Eq. 4.3), turns each loss's percentile rank within
the large batch into a weight p = rank^beta (Eq. 4.4), and draws the b training samples without
replacement with probabilities proportional to p. beta = 0 is uniform sampling; the thesis uses
beta = 1 and b-bar = 2b (b-bar >= (1 + beta) b), uniform sampling during a warm-up and a
cool-down (~10 % of training).

Under data parallelism each rank ranks its own shard of the large batch (no gather): the shard
is an i.i.d. uniform draw, so its empirical loss CDF estimates the same distribution as the
global one, every rank keeps b / world samples so DDP's gradient average is unchanged, and no
communication is added to the selection pass. The training script follows this choice.
"""
import torch
import torch.distributed as tdist

from common.config import ConfigError


def selection_weights(n, beta):
    """Eq. 4.4 weight of each of n samples sorted by ascending loss: the empirical CDF at the
    sample, P(l_j <= l_i) = (k + 1) / n for rank k, raised to beta. The highest loss gets 1."""
    return (torch.arange(1, n + 1, dtype=torch.float64) / n) ** beta


def select(losses, batch_size, beta, generator=None):
    """Indices (distinct) of `batch_size` samples of the large batch, drawn without replacement
    with probability proportional to their Eq. 4.4 weight."""
    n = losses.shape[0]
    if batch_size > n:
        raise ValueError(f"cannot select {batch_size} samples from a large batch of {n}")
    order = torch.argsort(losses.detach(), stable=True)      # ascending loss, on the device
    # Which ranks to keep needs only n and beta, not the losses, so it is drawn on the host and
    # no device value is read (common/host_sync.py). Efraimidis & Spirakis (2006): with
    # u ~ U(0, 1), the batch_size largest keys u^(1/w) (here log u / w) are a draw without
    # replacement with probabilities proportional to w, one sample after another, the same law
    # as torch.multinomial(w, batch_size, replacement=False).
    keys = torch.rand(n, generator=generator, dtype=torch.float64).log() / selection_weights(n, beta)
    ranks = torch.topk(keys, batch_size).indices
    return order[ranks.to(losses.device, non_blocking=True)]


def select_greedy(losses, batch_size):
    """Table 4.4's greedy baseline: the batch_size highest losses (top 50 % when b-bar = 2b)."""
    return torch.topk(losses.detach(), batch_size).indices


def uniform_phase(step, total_steps, warmup_steps, cooldown_fraction):
    """True during the warm-up and the cool-down, where plain uniform sampling is used."""
    return step < warmup_steps or step >= total_steps - int(round(cooldown_fraction * total_steps))


class SelectiveBackprop:
    """Selective-Backprop (Jiang et al. 2019): each sample is kept with probability
    CDF_history(loss)^beta, the CDF taken over a history of recent losses (a FIFO of
    `history` values); kept samples go to a SelectedBuffer and the optimizer steps once b of them
    are collected (train_supervised.py). The thesis's baseline for Table 4.1."""

    def __init__(self, history=1024, beta=1.0):
        self.history, self.beta = history, beta
        self.recent = torch.empty(0)

    def probabilities(self, losses):
        losses = losses.detach().float().cpu()
        self.recent = torch.cat([self.recent, losses])[-self.history:]
        cdf = (self.recent[None, :] <= losses[:, None]).float().mean(1)
        return cdf ** self.beta

    def select(self, losses, generator=None):
        p = self.probabilities(losses)
        keep = torch.rand(p.shape, generator=generator) < p
        return keep.nonzero().flatten().to(losses.device)


class SelectedBuffer:
    """Selective-Backprop's accumulation (Jiang et al. 2019, Algorithm 1): selected samples are
    appended until a full batch of b is collected; the optimizer then steps on exactly b of them
    (oldest first) and the rest wait for the next step. Holds the selected (inputs, labels) of this
    rank and the number of loader batches consumed, so that a resumed run continues from the same
    buffer and the same loader position (state_dict / load_state_dict, tensors on the CPU)."""

    def __init__(self):
        self.x = self.y = None
        self.batches = 0          # loader batches consumed by this rank

    def __len__(self):
        return 0 if self.y is None else int(self.y.shape[0])

    def add(self, x, y):
        self.x = x if self.x is None else torch.cat([self.x, x.to(self.x.device)])
        self.y = y if self.y is None else torch.cat([self.y, y.to(self.y.device)])

    def take(self, b):
        """The oldest b samples, removed from the buffer."""
        if len(self) < b:
            raise ValueError(f"buffer holds {len(self)} samples, fewer than a batch of {b}")
        x, y = self.x[:b], self.y[:b]
        self.x, self.y = (self.x[b:], self.y[b:]) if len(self) > b else (None, None)
        return x, y

    def clear(self):
        self.x = self.y = None

    def state_dict(self):
        return {"x": None if self.x is None else self.x.cpu(), "y": None if self.y is None else self.y.cpu(),
                "batches": self.batches}

    def load_state_dict(self, state, device=None):
        self.x = None if state["x"] is None else state["x"].to(device)
        self.y = None if state["y"] is None else state["y"].to(device)
        self.batches = int(state["batches"])


def gather_selective_backprop(sb, buffer, world):
    """Every rank's Selective-Backprop state (loss history, buffer, loader batches consumed),
    gathered for rank 0's checkpoint (a collective)."""
    mine = {"recent": sb.recent, "buffer": buffer.state_dict()}
    if world == 1:
        return [mine]
    every = [None] * world
    tdist.all_gather_object(every, mine)
    return every


def restore_selective_backprop(states, sb, buffer, rank, world, path, step, device):
    """This rank's share of a checkpoint's gather_selective_backprop (None: a checkpoint without
    it, written before its first selection; the loader then stands at `step` batches)."""
    if states is None:
        buffer.batches = step
        return
    if len(states) != world:
        raise ConfigError(f"{path} holds Selective-Backprop state of {len(states)} rank(s); resume it with as many")
    sb.recent = states[rank]["recent"]
    buffer.load_state_dict(states[rank]["buffer"], device)
