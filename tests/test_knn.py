import math

import torch

from evaluation.knn import knn_scores, topk_accuracy


def test_weighted_knn_equals_brute_force():
    g = torch.Generator().manual_seed(0)
    train, labels = torch.randn(50, 8, generator=g), torch.randint(0, 4, (50,), generator=g)
    test = torch.randn(13, 8, generator=g)
    k, T = 7, 0.1
    scores = knn_scores(train, labels, test, 4, k=k, temperature=T, chunk=5)
    for i in range(13):  # brute force: cosine similarity to every training sample, in Python
        sims = []
        for j in range(50):
            a, b = test[i].tolist(), train[j].tolist()
            dot = sum(x * y for x, y in zip(a, b))
            sims.append((dot / math.sqrt(sum(x * x for x in a)) / math.sqrt(sum(y * y for y in b)), j))
        votes = [0.0] * 4
        for s, j in sorted(sims, reverse=True)[:k]:
            votes[labels[j]] += math.exp(s / T)
        assert torch.allclose(scores[i], torch.tensor(votes), rtol=1e-4)


def test_topk_accuracy():
    scores = torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.05, 0.15], [0.2, 0.3, 0.5]])
    labels = torch.tensor([1, 2, 0])
    top1, top2 = topk_accuracy(scores, labels, ks=(1, 2))
    assert math.isclose(top1, 100 / 3, rel_tol=1e-6)
    assert math.isclose(top2, 200 / 3, rel_tol=1e-6)   # sample 1: label 2 is 2nd; sample 2: label 0 is 3rd
