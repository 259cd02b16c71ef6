"""Fast Online Minibatch Selection (thesis ch. 4) against Eq. 4.4."""
import torch

from accel.minibatch_selection import (SelectedBuffer, SelectiveBackprop, select, select_greedy, selection_weights,
                                      uniform_phase)


def test_weights_are_the_percentile_rank_to_the_beta():
    w = selection_weights(4, 2.0)
    assert torch.allclose(w, torch.tensor([0.25, 0.5, 0.75, 1.0], dtype=torch.float64) ** 2)
    assert torch.equal(selection_weights(5, 0.0), torch.ones(5, dtype=torch.float64))   # beta = 0: uniform


def test_select_returns_distinct_indices_of_the_large_batch():
    g = torch.Generator().manual_seed(0)
    losses = torch.rand(64, generator=g)
    for _ in range(20):
        idx = select(losses, 32, beta=1.0, generator=g)
        assert idx.shape == (32,) and len(set(idx.tolist())) == 32 and int(idx.max()) < 64


def test_draw_frequencies_match_eq_4_4():
    """One draw at a time, a sample's frequency is its weight over the sum of weights."""
    g = torch.Generator().manual_seed(1)
    losses = torch.tensor([0.3, 2.0, 0.1, 0.9, 1.5])      # ascending order: 2, 0, 3, 4, 1
    counts = torch.zeros(5)
    n = 40000
    for _ in range(n):
        counts[select(losses, 1, beta=1.0, generator=g)] += 1
    w = selection_weights(5, 1.0).float()
    expected = torch.zeros(5)
    expected[torch.argsort(losses)] = w / w.sum()
    assert torch.allclose(counts / n, expected, atol=0.01)
    # beta = 0 is uniform, whatever the losses
    counts.zero_()
    for _ in range(n):
        counts[select(losses, 1, beta=0.0, generator=g)] += 1
    assert torch.allclose(counts / n, torch.full((5,), 0.2), atol=0.01)


def test_greedy_warmup_cooldown_and_selective_backprop():
    losses = torch.tensor([0.3, 2.0, 0.1, 0.9])
    assert sorted(select_greedy(losses, 2).tolist()) == [1, 3]
    phases = [uniform_phase(t, 100, 10, 0.1) for t in range(100)]
    assert all(phases[:10]) and not any(phases[10:90]) and all(phases[90:])
    sb = SelectiveBackprop(history=8, beta=1.0)
    p = sb.probabilities(torch.tensor([1.0, 2.0, 3.0, 4.0]))
    assert torch.allclose(p, torch.tensor([0.25, 0.5, 0.75, 1.0]))   # CDF over the history so far
    p = sb.probabilities(torch.tensor([0.0, 5.0]))
    assert torch.allclose(p, torch.tensor([1 / 6, 1.0]))
    assert len(sb.recent) == 6
    idx = sb.select(torch.tensor([10.0, 10.0]), generator=torch.Generator().manual_seed(0))
    assert idx.tolist() == [0, 1]                                      # the largest losses are always kept


def test_selected_buffer_gives_full_batches_oldest_first_and_round_trips():
    buf = SelectedBuffer()
    x = torch.arange(10.0).view(10, 1)
    buf.add(x[:3], torch.arange(3))
    buf.add(x[3:7], torch.arange(3, 7))
    assert len(buf) == 7
    bx, by = buf.take(4)
    assert by.tolist() == [0, 1, 2, 3] and torch.equal(bx, x[:4]) and len(buf) == 3
    buf.batches = 5
    again = SelectedBuffer()
    again.load_state_dict(buf.state_dict())
    assert again.batches == 5 and again.y.tolist() == [4, 5, 6] and torch.equal(again.x, x[4:7])
    again.take(3)
    assert len(again) == 0 and again.state_dict()["y"] is None
    try:
        again.take(1)
        raise AssertionError("took from an empty buffer")
    except ValueError:
        pass
