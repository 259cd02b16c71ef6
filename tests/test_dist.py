from conftest import REPO, run


def test_gathers_with_and_without_gradient_on_two_gloo_ranks():
    p = run(["tests/gather_worker.py", REPO], nproc=2)
    assert p.stdout.count("gathers ok") == 2


def test_method_state_across_two_gloo_ranks():
    """MoCo's all-rank enqueue, SwAV's all-rank Sinkhorn, DINO's all-rank centre."""
    p = run(["tests/methods_worker.py", REPO], nproc=2)
    assert p.stdout.count("methods ok") == 2
