"""common/optim.py: the multi-tensor LARS against the per-parameter loop it replaced, SGD / AdamW
through build_optimizer against torch's for-loop kernels, and no host synchronisation in LARS.step."""
import pytest
import torch
import torch.nn as nn
from torch.overrides import TorchFunctionMode

from common.optim import LARS, build_optimizer, split_decay


class ReferenceLARS(LARS):
    """LARS.step as it was before the foreach rewrite (one parameter at a time), kept verbatim as
    the reference for the maths."""

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for g in self.param_groups:
            for p in g["params"]:
                if p.grad is None:
                    continue
                d = p.grad
                if not g["lars_exclude"]:
                    if g["weight_decay"]:
                        d = d.add(p, alpha=g["weight_decay"])
                    w_norm, d_norm = torch.norm(p), torch.norm(d)
                    trust = torch.where((w_norm > 0) & (d_norm > 0), g["eta"] * w_norm / d_norm,
                                        torch.ones_like(w_norm))
                    d = d.mul(trust)
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.clone(d).detach()
                else:
                    state["momentum_buffer"].mul_(g["momentum"]).add_(d)
                p.add_(state["momentum_buffer"], alpha=-g["lr"])
        return loss


def small_model(dtype=torch.float64):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 5), nn.Linear(5, 3))
    with torch.no_grad():
        model[4].weight.zero_()     # ||w|| = 0: trust ratio 1
    return model.to(dtype)


def lars_groups(model):
    """Biases / norm parameters excluded (split_decay), plus an adapted group without weight decay
    (its d is the gradient itself: the step must not write into p.grad)."""
    head = list(model[4].parameters())
    rest = [p for n, p in model.named_parameters() if not n.startswith("4.")]
    return split_decay([{"params": rest, "fix_lr": False, "lr_mult": 1.0}], "lars_exclude") + \
        [{"params": head, "weight_decay": 0.0, "fix_lr": True}]


def set_grads(model, step, gen):
    for i, p in enumerate(model.parameters()):
        # model[0].bias gets no gradient on step 2; model[4] gets an all-zero one on step 0 (||d|| = 0)
        p.grad = None if (step == 2 and i == 1) else torch.randn(p.shape, generator=gen, dtype=p.dtype)
        if step == 0 and i >= len(list(model.parameters())) - 2:
            p.grad.zero_()


def test_foreach_lars_matches_the_per_parameter_loop():
    models = [small_model(), small_model()]
    opts = [cls(lars_groups(m), lr=0.5, momentum=0.9, weight_decay=0.05, eta=0.02)
            for cls, m in zip((ReferenceLARS, LARS), models)]
    for step in range(5):
        for m, opt in zip(models, opts):
            set_grads(m, step, torch.Generator().manual_seed(step))
            for g in opt.param_groups:       # the training loop's per-step schedules
                g["lr"] = 0.5 / (step + 1) * (2.0 if g.get("lars_exclude") else 1.0)
                g["momentum"] = 0.9 - 0.1 * step
        grads = [p.grad.clone() if p.grad is not None else None for p in models[1].parameters()]
        for opt in opts:
            opt.step()
        for g0, p in zip(grads, models[1].parameters()):   # gradients left untouched
            assert (g0 is None and p.grad is None) or torch.equal(g0, p.grad)
        for p_ref, p in zip(models[0].parameters(), models[1].parameters()):
            assert (p_ref - p).abs().max().item() <= 1e-12
            s_ref, s = opts[0].state.get(p_ref, {}), opts[1].state.get(p, {})
            assert s_ref.keys() == s.keys() <= {"momentum_buffer"}   # checkpoints keep loading
            if s:
                assert (s_ref["momentum_buffer"] - s["momentum_buffer"]).abs().max().item() <= 1e-12
    assert all(p in opts[1].state for p in models[1].parameters())
    assert not torch.equal(models[1][0].weight, small_model()[0].weight)   # it did move


def test_lars_groups_mixed_dtypes_per_bucket():
    """One group holding float32 and float64 tensors: each dtype is stepped as its own list."""
    torch.manual_seed(1)
    w = [torch.randn(4, 3, dtype=torch.float64), torch.randn(5, 2), torch.randn(3, dtype=torch.float64)]
    grads = [torch.randn_like(x) for x in w]
    results = []
    for cls in (ReferenceLARS, LARS):
        params = [nn.Parameter(x.clone()) for x in w]
        opt = cls([{"params": params}], lr=0.1, momentum=0.9, weight_decay=0.01)
        for _ in range(3):
            for p, gr in zip(params, grads):
                p.grad = gr.clone()
            opt.step()
        results.append(params)
    for a, b in zip(*results):
        assert a.dtype == b.dtype and (a - b).abs().max().item() <= (1e-12 if a.dtype == torch.float64 else 1e-6)


@pytest.mark.parametrize("name", ["sgd", "adamw"])
def test_build_optimizer_cpu_kernels_keep_the_for_loop_maths(name):
    """build_optimizer(device=cpu) picks torch's fused kernels: same float64 trajectory as the
    for-loop implementation, with the groups' extra keys and a per-step lr / momentum."""
    models = [small_model(), small_model()]
    def groups(m):   # what methods' param_groups() return (SimSiam: a fixed-lr predictor)
        return [{"params": list(m[0].parameters()) + list(m[1].parameters()), "lr_mult": 1.0},
                {"params": list(m[3].parameters()) + list(m[4].parameters()), "fix_lr": True, "lr_mult": 2.0}]
    opt = build_optimizer(name, groups(models[1]), 0.1, 0.9, 0.05, device=torch.device("cpu"))
    assert all(g["fused"] for g in opt.param_groups)
    ref = build_optimizer(name, groups(models[0]), 0.1, 0.9, 0.05)
    for g in ref.param_groups:
        g["foreach"], g["fused"] = False, None
    for step in range(5):
        for m, o in zip(models, (ref, opt)):
            set_grads(m, step, torch.Generator().manual_seed(10 + step))
            for g in o.param_groups:
                g["lr"] = float(0.1 / (step + 1)) * g["lr_mult"]
                if "momentum" in g:
                    g["momentum"] = 0.9 - 0.1 * step
            o.step()
    for a, b in zip(models[0].parameters(), models[1].parameters()):
        assert (a - b).abs().max().item() <= 1e-12
    assert not torch.equal(models[1][0].weight, small_model()[0].weight)


def test_build_optimizer_without_device_keeps_torch_defaults():
    opt = build_optimizer("sgd", [{"params": small_model().parameters()}], 0.1, 0.9, 0.0)
    assert opt.param_groups[0]["fused"] is None and opt.param_groups[0]["foreach"] is None


class NoHostValues(TorchFunctionMode):
    """Raises on every way a tensor becomes a Python value (each one waits for the GPU)."""
    FORBIDDEN = {torch.Tensor.item, torch.Tensor.tolist, torch.Tensor.__bool__, torch.Tensor.__float__,
                 torch.Tensor.__int__, torch.Tensor.__index__, torch.Tensor.numpy}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in self.FORBIDDEN:
            raise AssertionError(f"host synchronisation: {func.__name__}")
        return func(*args, **(kwargs or {}))


def test_no_host_values_mode_sees_every_conversion():
    x = torch.tensor(2.0)
    for convert in (lambda: x.item(), lambda: x.tolist(), lambda: bool(x > 0), lambda: float(x),
                    lambda: int(x), lambda: [0, 1, 2][torch.tensor(1)], lambda: x.numpy()):
        with NoHostValues(), pytest.raises(AssertionError, match="host synchronisation"):
            convert()


def test_lars_step_keeps_values_on_the_device():
    model = small_model(torch.float32)
    opt = LARS(lars_groups(model), lr=0.1, momentum=0.9, weight_decay=1e-4)
    for step in (0, 1):   # first step (buffers created) and a later one (buffers updated)
        set_grads(model, step + 3, torch.Generator().manual_seed(step))
        with NoHostValues():
            opt.step()


def test_fused_sgd_takes_parameters_that_start_late():
    """A parameter whose first gradient comes after the others' (DINO's last layer, frozen for the
    first epoch) stops torch's fused SGD, which takes momentum buffers all or none; common/optim's
    SGD gives it a zero buffer first, and the trajectory equals the for-loop SGD's in float64."""
    torch.manual_seed(0)
    ref = [torch.randn(4, 3, dtype=torch.float64, requires_grad=True) for _ in range(2)]
    ours = [p.detach().clone().requires_grad_(True) for p in ref]
    opts = [torch.optim.SGD(ref, lr=0.1, momentum=0.9, foreach=False),
            build_optimizer("sgd", [{"params": ours}], 0.1, 0.9, 0.0, device=torch.device("cpu"))]
    for step in range(4):
        grads = [torch.randn(4, 3, dtype=torch.float64) for _ in range(2)]
        for params, opt in zip((ref, ours), opts):
            for i, p in enumerate(params):
                p.grad = grads[i].clone() if (i == 0 or step >= 2) else None   # the second starts at step 2
            opt.step()
    for a, b in zip(ref, ours):
        assert torch.allclose(a, b, atol=1e-14, rtol=0)
