import math

import numpy as np

from common import schedules


def test_cosine_eq5():
    lr = schedules.cosine(100, 0.2)
    assert len(lr) == 100
    for t in (0, 13, 50, 99):  # Eq. 5: 0.5 eps_max (cos(pi t / L) + 1)
        assert math.isclose(lr[t], 0.5 * 0.2 * (math.cos(math.pi * t / 100) + 1))
    assert np.all(np.diff(lr) < 0)


def test_warmup_cosine_eq6():
    L, tw, m = 100, 10, 0.4
    lr = schedules.warmup_cosine(L, tw, m)
    for t in (0, 3, 9):  # linear warm-up t / t_w eps_max
        assert math.isclose(lr[t], t / tw * m)
    for t in (10, 40, 99):  # cosine over the remaining L - t_w steps
        assert math.isclose(lr[t], 0.5 * m * (math.cos(math.pi * (t - tw) / (L - tw)) + 1))
    assert lr.argmax() == tw


def test_run_length_in_epochs_and_in_a_budget():
    """common/run_length.py: the one place a run's length lives (all training scripts use it)."""
    from common.run_length import RunLength
    ep = RunLength.of_epochs(3, 4)
    assert (ep.total_steps, ep.epochs, ep.fraction_done(6), ep.fraction_done(12)) == (12, 3, 0.5, 1.0)
    lr = np.linspace(1.0, 0.0, 12)
    assert ep.follow(lr) is lr                                       # no budget: the step count rules
    # 10 units, 1 unit per step until 30 % is spent, then 2: 3 cheap steps, then 4 at 2 units
    bud = RunLength.of_budget(10.0, 4, [(0.0, 1.0), (0.3, 2.0)])
    assert bud.progress.tolist() == [0.0, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9] and (bud.total_steps, bud.epochs) == (7, 2)
    # a budget-following schedule is read at the fraction of budget spent, not at t / T (held at its end)
    assert np.allclose(bud.follow(np.arange(7.0)), np.minimum(7 * bud.progress, 6))
    bud.replan(4, 1.0, 0.5)                                          # 1 extra unit, then 0.5 units per step
    assert bud.progress[:4].tolist() == [0.0, 0.1, 0.2, 0.3] and bud.progress[4] == 0.6
    assert bud.total_steps == 4 + 8 and bud.fraction_done(bud.total_steps) == 1.0   # (10 - 6) / 0.5 steps
