"""Distributed runtime: torchrun or single process, rank helpers and cross-rank gathers.

`torchrun --nproc_per_node=N script.py ...` sets RANK / WORLD_SIZE / LOCAL_RANK; without them
the script runs as a single process and every helper here degrades to the identity.
Backend: nccl when the run uses CUDA, gloo on CPU.
"""
import datetime
import os

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_nn


def init_distributed(device_pref="auto"):
    """Initialise the process group from torchrun's environment. Returns the torch.device."""
    use_cuda = torch.cuda.is_available() and device_pref in ("auto", "cuda")
    if device_pref == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("train.device=cuda but CUDA is not available on this machine")
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    # under torchrun the group is set up even for one rank: `torchrun --nproc-per-node 1` then runs
    # the nccl / gloo and DDP code of a node (the GPU acceptance run's nccl check); plain `python`
    # runs one process without a group
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ and "LOCAL_RANK" in os.environ:
        if use_cuda:
            torch.cuda.set_device(local_rank)
        timeout = datetime.timedelta(minutes=30)
        store, rank_, world = next(dist.rendezvous("env://", timeout=timeout))
        # torchrun --max-restarts keeps its store across restarts: the ranks of a restarted group
        # would read the connection addresses that the killed group left there and wait on dead
        # ports; each restart gets its own key space
        restart = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
        dist.init_process_group(backend="nccl" if use_cuda else "gloo", store=dist.PrefixStore(f"restart{restart}/", store),
                                rank=rank_, world_size=world, timeout=timeout)
    if use_cuda:
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def is_dist():
    return dist.is_available() and dist.is_initialized()


def rank():
    return dist.get_rank() if is_dist() else 0


def world_size():
    return dist.get_world_size() if is_dist() else 1


def is_main():
    return rank() == 0


def torch_dist_backend():
    return dist.get_backend() if is_dist() else None


def cleanup():
    if is_dist():
        dist.destroy_process_group()


def all_reduce_sum(t):
    """In-place sum over ranks, no gradient (metrics, counters, EMA statistics)."""
    if is_dist():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_reduce_max(t):
    """In-place maximum over ranks, no gradient."""
    if is_dist():
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t


def all_reduce_mean(t):
    return all_reduce_sum(t).div_(world_size())


def all_reduce_sum_with_grad(t):
    """Sum over ranks; carries gradients (backward is again a sum over ranks).
    Used where a statistic of the global batch enters the loss (global BatchNorm)."""
    return dist_nn.all_reduce(t) if is_dist() else t


@torch.no_grad()
def all_gather_no_grad(t):
    """Concatenate `t` (same shape on every rank) along dim 0 in rank order. NO gradient:
    for keys, targets, queue entries and evaluation features."""
    if not is_dist():
        return t
    out = [torch.empty_like(t) for _ in range(world_size())]
    dist.all_gather(out, t.contiguous())
    return torch.cat(out, 0)


def all_gather_with_grad(t):
    """Concatenate `t` along dim 0 in rank order. CARRIES gradients: the backward pass sums the
    incoming gradient over ranks and returns this rank's slice, so a loss over the gathered
    batch (SimCLR / MoCo v3 negatives) back-propagates into every rank's own samples."""
    if not is_dist():
        return t
    return torch.cat(dist_nn.all_gather(t.contiguous()), 0)


def all_gather_variable(t):
    """all_gather_no_grad for tensors whose dim 0 differs between ranks (evaluation shards)."""
    if not is_dist():
        return t
    n = torch.tensor([t.shape[0]], device=t.device)
    sizes = all_gather_no_grad(n).tolist()
    pad = torch.zeros((max(sizes),) + tuple(t.shape[1:]), dtype=t.dtype, device=t.device)
    pad[: t.shape[0]] = t
    full = all_gather_no_grad(pad)
    return torch.cat([full[i * max(sizes): i * max(sizes) + s] for i, s in enumerate(sizes)], 0)

