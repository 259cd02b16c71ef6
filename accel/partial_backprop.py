"""Partial back-propagation (intermediate-loss paper, sec. 2.2, Algorithm 1).

Each step draws one loss L_i of the n block losses (probabilities `loss_probs`, uniform by
default); the forward stops after block i and the backward runs from L_i to the input, so only
blocks 1..i and head i are updated. Every rank draws the same i: it is a function of
(seed, step), so no communication is needed and a resumed run draws the same sequence.

The parameters that took no part keep their weights AND their optimizer state: their
gradients are None (not zero), which SGD, LARS and AdamW all skip (no momentum, no weight
decay). `drop_grads` enforces that after the backward, also under DDP, which (with
find_unused_parameters) may hand unused parameters a zero gradient.

Controls of Table 4 (our reading of the paper's one-sentence descriptions and Fig. 4):
  to_input  Algorithm 1 (above).
  nearby    draw i the same way, but back-propagate only through the `nearby_blocks` blocks
            ending at i (earlier blocks run forward without gradient and are not updated).
  skipping  the final loss every step; a random set of pairwise non-adjacent blocks is updated,
            the gradient passing through the other blocks (their input gradients are
            computed, their weight gradients are not) to reach earlier selected ones.
"""
import numpy as np

from common.config import ConfigError

SCHEMES = ("to_input", "nearby", "skipping")


def loss_probabilities(loss_probs, n):
    """The distribution over the n block losses: `loss_probs` normalised, uniform if empty."""
    if not loss_probs:
        return np.full(n, 1.0 / n)
    p = np.asarray(loss_probs, dtype=np.float64)
    if len(p) != n or (p < 0).any() or p.sum() <= 0:
        raise ConfigError(f"interloss.loss_probs {list(loss_probs)} must be {n} non-negative numbers, not all 0")
    return p / p.sum()


def draw_block(step, seed, probs):
    """Block i (1-based) whose loss trains at `step`: the same on every rank."""
    rng = np.random.default_rng([int(seed), int(step), 0x1B])
    return int(rng.choice(len(probs), p=probs)) + 1


def non_adjacent_sets(n):
    """The maximal sets of pairwise non-adjacent blocks of 1..n ({1, 3}, {1, 4}, {2, 4} for n = 4)."""
    sets = []
    for mask in range(1, 2 ** n):
        s = [i + 1 for i in range(n) if mask >> i & 1]
        if all(b - a > 1 for a, b in zip(s, s[1:])):
            sets.append(s)
    return [s for s in sets if not any(set(s) < set(t) for t in sets)]


def draw_skipping_set(step, seed, n):
    sets = non_adjacent_sets(n)
    rng = np.random.default_rng([int(seed), int(step), 0x5C])
    return sets[int(rng.integers(len(sets)))]


def drop_grads(params):
    """Set the gradients of `params` to None (parameters that took no part in this step)."""
    for p in params:
        p.grad = None
