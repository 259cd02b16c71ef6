"""How long a run is, in one place: its steps, steps per epoch, epochs, and how far along every
step is (`progress[t]`, the fraction of training done before step t).

A run is counted in epochs (train.epochs x steps per epoch, progress t / T) or, for ViT
pretraining, in a budget of sample-cost units (NeurIPS'24 sec. 6.1: budgets, not epochs, make
compression strategies comparable; train.budget, accel/compression.py gives the units of a
step). With a budget the number of steps follows from it up front: the schedule of per-step
costs is piecewise constant in the fraction of budget spent, so walking it gives the step at
which the budget is spent and the fraction spent before every step, which the learning rate,
warm-up included, follows (`follow`). Online CA-MSE may re-make the tail mid-run (`replan`).

    length = RunLength.of_epochs(cfg.train.epochs, steps_per_epoch)
    while step < length.total_steps: ...
"""
import math

import numpy as np

from common.config import ConfigError


class RunLength:
    def __init__(self, steps_per_epoch, progress, budget=0.0):
        self.steps_per_epoch, self.budget = steps_per_epoch, float(budget)
        self.progress = np.asarray(progress, dtype=np.float64)

    @classmethod
    def of_epochs(cls, epochs, steps_per_epoch):
        n = epochs * steps_per_epoch
        return cls(steps_per_epoch, np.arange(n) / max(n, 1))

    @classmethod
    def of_budget(cls, budget, steps_per_epoch, step_costs):
        """step_costs: [(start fraction of budget, units per step from there on)], starts sorted."""
        return cls(steps_per_epoch, budget_progress(step_costs, budget), budget)

    @property
    def total_steps(self):
        return len(self.progress)

    @property
    def epochs(self):
        """Epochs the run touches (the last may be partial in a budget run)."""
        return -(-self.total_steps // self.steps_per_epoch)

    def fraction_done(self, step):
        """Fraction of training (of the budget in budget runs) done after `step` steps."""
        return float(self.progress[step]) if step < len(self.progress) else 1.0

    def follow(self, schedule):
        """A per-step array built for total_steps uniform steps, re-indexed by the fraction of
        budget spent (identity without a budget)."""
        if schedule is None or not self.budget:
            return schedule
        return at_progress(schedule, self.progress)

    def replan(self, step, extra_units, step_cost):
        """From `step` on every step costs `step_cost` units, after `extra_units` more are spent
        first (online CA-MSE's own passes): the budget left buys ceil(left / cost) steps."""
        spent = (float(self.progress[step]) * self.budget if step < len(self.progress) else self.budget) + extra_units
        self.progress = replan_progress(self.progress, step, spent, self.budget, step_cost)


def budget_progress(step_costs, budget):
    """Walk [(start, units per step)] until `budget` units are spent. Returns progress[t] =
    fraction of budget spent before step t; its length is the number of steps (the last step is
    the one that reaches the budget)."""
    if budget <= 0:
        raise ConfigError(f"train.budget must be positive, got {budget}")
    costs = [float(c) for _, c in step_costs]
    if min(costs) <= 0:
        raise ConfigError("train.budget: a compression stage has zero cost per step")
    ends = [s for s, _ in step_costs[1:]] + [math.inf]
    # piece by piece (each has a constant cost per step): a step is taken in piece i while the
    # spent units are below both the piece's end and the budget -- in closed form, not step by step
    pieces, spent = [], 0.0
    for cost_i, end in zip(costs, ends):
        limit = min(end * budget, budget)
        if spent >= limit:
            continue
        n = int(math.ceil((limit - spent) / cost_i))
        if sum(len(p) for p in pieces) + n > 50_000_000:
            raise ConfigError(f"train.budget={budget:g} needs more than 5e7 steps; is it in sample-cost units?")
        pieces.append((spent + cost_i * np.arange(n)) / budget)
        spent += n * cost_i
    return np.concatenate(pieces)


def replan_progress(progress_before, step, spent, budget, step_cost):
    """progress[t] for t < step unchanged, then (spent + (t - step) c) / budget for the
    n = ceil((budget - spent) / c) steps the remaining budget buys at c units per step (at least
    one: the step about to run). The last step is the one that reaches the budget, as in
    budget_progress."""
    if step_cost <= 0:
        raise ConfigError(f"online CA-MSE: a step costs {step_cost} units")
    n = max(1, math.ceil((budget - spent) / step_cost - 1e-9))
    tail = (spent + np.arange(n) * step_cost) / budget
    return np.concatenate([np.asarray(progress_before[:step], dtype=np.float64), tail])


def at_progress(schedule, progress):
    """Re-sample a per-step array built for len(schedule) uniform steps at the fraction of
    training done (linear interpolation), so it follows the budget spent, not the step count."""
    n = len(schedule)
    return np.interp(np.asarray(progress) * n, np.arange(n), np.asarray(schedule, dtype=np.float64))
