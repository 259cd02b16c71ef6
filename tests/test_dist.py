from conftest import REPO, run


def test_gathers_with_and_without_gradient_on_two_gloo_ranks():
    p = run(["tests/gather_worker.py", REPO], nproc=2)
    assert p.stdout.count("gathers ok") == 2
