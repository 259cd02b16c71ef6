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

The winner holds from this step on (until the next estimate), and the plan is re-made
(CompressionPlan.replan, arithmetic in compression.replan_progress): the budget left,
B - spent, buys n = ceil((B - spent) / c) more steps at the winner's per-step cost c, so the run
now ends at step t + n and the fraction of budget spent before step t' >= t is
(spent + (t' - t) c) / B; the learning rate (and everything else that follows the budget
fraction) is re-sampled at those fractions, and the method's per-step arrays (EMA momentum) are
re-made for the new length (indexed by step, so it bends at a switch). Checkpoints carry the
switches, and a resumed run replays them. The estimate's own passes are not charged to the budget; they are
counted apart in `online_units` (sample-cost units: each candidate costs a training step of the
estimate's images at that setting). Under torchrun each rank estimates on its own shard and the
grid is averaged over ranks (not tested on several ranks).
"""
import torch
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
    b = views[0].shape[0]
    k = min(sub_batch, b // 2)
    if k < 1:
        raise ValueError(f"online CA-MSE needs at least 2 images per rank, got {b}")
    n_sub = b // k
    subs = [([v[j * k:(j + 1) * k] for v in views],
             None if local_views is None else [v[j * k:(j + 1) * k] for v in local_views]) for j in range(n_sub)]
    model_patch = getattr(method.backbone, "patch_size", 0)
    full = (0.0, model_patch, 0.0, model_patch)
    G_m = ca_mse.strategy_moments(method, lambda: iter(subs), full, k, seed)
    profiles = []
    for st in stages:
        m = G_m if st == full else ca_mse.strategy_moments(method, lambda: iter(subs), st, k, seed)
        profiles.append(ca_mse.error_profile(G_m, m, image_cost(st), budget))
    scores = torch.tensor([p["ca_mse"] for p in profiles], dtype=torch.float64)
    if dist.is_dist():   # every rank picks the same winner
        scores = dist.all_reduce_mean(scores.to(views[0].device)).cpu()
    for p, s in zip(profiles, scores.tolist()):
        p["ca_mse"] = s
    return profiles


def reestimate(method, plan, views, local_views, step, seed, ledger=None):
    """Estimate, pick the lowest CA-MSE, switch and re-plan (CompressionPlan.replan). Prints one
    line on rank 0 and adds the estimate's sample-cost units to ledger's `online_units`.
    Returns {"stage", "ca_mse", "remaining_steps", "switched", "units"}."""
    comp = plan.cfg.accel.compression
    stages = [compression.candidate_stage(comp, plan.has_target, d, p)
              for d, p in candidates(comp, plan.model_patch, plan.res)]
    full = (0.0, plan.model_patch, 0.0, plan.model_patch)
    n_views, n_local = len(views), len(local_views or ())

    def image_cost(st):
        return plan.image_cost(plan.res, st, n_views, n_local)

    profiles = estimate(method, views, local_views, stages, comp.online_sub_batch, image_cost,
                        plan.step_units(full), seed * 1_000_003 + step)
    best = min(range(len(stages)), key=lambda i: profiles[i]["ca_mse"])
    before = plan.stage(step)
    remaining = plan.replan(step, stages[best])
    images = views[0].shape[0]
    units = images * (image_cost(full) + sum(image_cost(st) for st in stages if st != full))
    if ledger is not None:
        ledger.add("online_units", units)
    d_q, p_q, d_k, p_k = stages[best]
    if dist.is_main():
        tqdm.write(f"online CA-MSE at step {step} ({100 * plan.progress[step]:.1f}% of budget): best drop {d_q:g}, "
              f"patch {p_q} (CA-MSE {profiles[best]['ca_mse']:.4g} of {len(stages)} candidates); "
              + (f"switch from drop {before[0]:g}, patch {before[1]}; " if stages[best] != before else "no switch; ")
              + f"{remaining} steps remain")
    return {"stage": stages[best], "ca_mse": profiles[best]["ca_mse"], "remaining_steps": remaining,
            "switched": stages[best] != before, "units": units}
