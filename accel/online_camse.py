"""Online CA-MSE (not in NeurIPS'24): re-estimate the cost-adjusted MSE of the candidate
compression settings during training, from the current model, and switch to the best one for
the remaining budget.

The paper estimates CA-MSE offline, on checkpoints of a finished baseline run (sec. 6.3,
grad_error.py), and turns the winners into a schedule. With `accel.compression.online=true`
(which needs `train.budget`) train_ssl.py does the same estimate every
`accel.compression.online_every` steps (step 0 included) on that step's own training batch:
the local batch split into sub-batches of `online_sub_batch` images, the gradient of the
method's loss for every candidate (drop ratio x patch size, `online_drop_ratios` x
`online_patch_sizes`; empty patch list: grad_error.py's default sizes), bias and cost-adjusted
variance against the uncompressed gradient of the same images (accel/ca_mse.py, Eq. 8-10, with
Budget = one uncompressed training batch, as grad_error.py). Every rank averages the grid over
ranks before picking, so all ranks switch alike.

The winner holds from this step on (until the next estimate), and the run length is re-made
(CompressionSchedule.switch, arithmetic in common/run_length.replan_progress): the budget left,
B - spent, buys n = ceil((B - spent) / c) more steps at the winner's per-step cost c, so the run
now ends at step t + n and the fraction of budget spent before step t' >= t is
(spent + (t' - t) c) / B; the learning rate (and everything else that follows the budget
fraction) is re-sampled at those fractions, and the method's per-step arrays (EMA momentum) are
re-made for the new length (indexed by step, so it bends at a switch). Checkpoints carry the
switches, and a resumed run replays them. The estimate's own passes are charged to the budget
(each candidate costs a training step of the estimate's images at that setting): they count in
`budget_units`, shorten the re-made run, and are also shown apart as `online_units`; their FLOPs
are counted under the ledger's "online" kind. Under torchrun the sub-batches are global: each rank
computes its share of every sub-batch and the gradients are averaged over ranks before the
moments (ca_mse.strategy_moments(across_ranks=True)), so the estimate's noise shrinks with the
world size and every rank picks the same winner; with contiguous rank shards of the global batch
and sub-batches taken by stride, 2 ranks estimate what 1 rank does (tests/test_vit_compression.py).
"""
import contextlib

from tqdm import tqdm

from accel import ca_mse, compression
from common import dist


def candidates(comp_cfg, model_patch, res):
    """[(d, p)] the online estimate compares (all with compression.candidate_stage's key)."""
    patches = list(comp_cfg.online_patch_sizes) or compression.default_patch_sizes(model_patch, res)
    bad = [p for p in patches if res % p]
    if bad:
        raise ValueError(f"accel.compression.online_patch_sizes {bad} do not divide the crop size {res}")
    return [(float(d), int(p)) for p in patches for d in comp_cfg.online_drop_ratios]


def estimate(method, views, local_views, stages, sub_batch, image_cost, budget, seed):
    """CA-MSE profile (ca_mse.error_profile) of every stage in `stages` on this batch: the views
    [n_views x [B, C, H, W]] split into sub-batches of `sub_batch` images. The uncompressed
    gradient G is the mean over the same sub-batches. Returns [profile] in the order of
    `stages`, with ca_mse averaged over ranks."""
    b, world = views[0].shape[0], dist.world_size()
    k = min(max(1, sub_batch // world), b // 2)   # this rank's share of a global sub-batch
    if k < 1:
        raise ValueError(f"online CA-MSE needs at least 2 images per rank, got {b}")
    n_sub = b // k
    # sub-batch j takes every n_sub-th image from j: with the global batch split into contiguous
    # rank shards of equal size, rank r's share of sub-batch j is its part of the global batch's
    # sub-batch j, so the gradients averaged over ranks are those of the 1-rank estimate
    subs = [([v[j::n_sub] for v in views], None if local_views is None else [v[j::n_sub] for v in local_views])
            for j in range(n_sub)]
    model_patch = getattr(method.backbone, "patch_size", 0)
    full = (0.0, model_patch, 0.0, model_patch)
    G_m = ca_mse.strategy_moments(method, lambda: iter(subs), full, k, seed, across_ranks=True)
    profiles = []
    for st in stages:
        m = G_m if st == full else ca_mse.strategy_moments(method, lambda: iter(subs), st, k, seed, across_ranks=True)
        profiles.append(ca_mse.error_profile(G_m, m, image_cost(st), budget))
    return profiles   # the same on every rank: the moments are of the global sub-batches


def reestimate(method, schedule, views, local_views, step, seed, ledger=None):
    """Estimate, pick the lowest CA-MSE, switch and re-make the run length
    (CompressionSchedule.switch). Prints one line on rank 0 and adds the estimate's sample-cost
    units to ledger's `online_units`.
    Returns {"stage", "ca_mse", "remaining_steps", "switched", "units"}."""
    comp = schedule.cfg.accel.compression
    stages = [compression.candidate_stage(comp, schedule.has_target, d, p)
              for d, p in candidates(comp, schedule.model_patch, schedule.res)]
    full = (0.0, schedule.model_patch, 0.0, schedule.model_patch)
    n_views, n_local = len(views), len(local_views or ())

    def image_cost(st):
        return schedule.image_cost(schedule.res, st, n_views, n_local)

    images = views[0].shape[0]
    key = ("online", schedule.res, n_views, n_local, images, tuple(stages), comp.online_sub_batch)
    with (ledger.count(key, kind="online") if ledger is not None else contextlib.nullcontext()):
        profiles = estimate(method, views, local_views, stages, comp.online_sub_batch, image_cost,
                            schedule.step_units(full), seed * 1_000_003 + step)
    best = min(range(len(stages)), key=lambda i: profiles[i]["ca_mse"])
    before = schedule.stage(step)
    # the estimate's passes, charged to the budget: the uncompressed gradient and every candidate's,
    # on this step's global batch (sample-cost units, summed over ranks like the steps')
    units = images * dist.world_size() * (image_cost(full) + sum(image_cost(st) for st in stages if st != full))
    remaining = schedule.switch(step, stages[best], extra_units=units)
    if ledger is not None:
        ledger.add("online_units", units / dist.world_size())    # per rank, as the ledger's other counts
        ledger.add("budget_units", units / dist.world_size())
    d_q, p_q, d_k, p_k = stages[best]
    if dist.is_main():
        tqdm.write(f"online CA-MSE at step {step} ({100 * schedule.length.progress[step]:.1f}% of budget): "
                   f"best drop {d_q:g}, patch {p_q} (CA-MSE {profiles[best]['ca_mse']:.4g} of {len(stages)} "
                   "candidates); "
                   + (f"switch from drop {before[0]:g}, patch {before[1]}; " if stages[best] != before else "no switch; ")
                   + f"{remaining} steps remain")
    return {"stage": stages[best], "ca_mse": profiles[best]["ca_mse"], "remaining_steps": remaining,
            "switched": stages[best] != before, "units": units}
