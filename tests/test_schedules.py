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
