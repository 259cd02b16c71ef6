"""Run by test_training.py, once as a single process and once under torchrun with 2 gloo ranks:
three optimizer steps of every SSL method, of the intermediate losses (partial back-propagation +
block-wise hard pairs) and of Hard Augment (4 views, extra targets), in float64, on one fixed
global batch per step that the ranks split. Rank 0 saves every final state dict and the losses;
the test compares the two files. Usage: equal_update_worker.py REPO OUT.pt"""
import sys

import torch

sys.path.insert(0, sys.argv[1])
sys.path.insert(0, sys.argv[1] + "/tests")
from accel import hard_augment  # noqa: E402
from common import dist, rng  # noqa: E402
from common.config import _to_config  # noqa: E402
from common.run import Runtime, wrap_ddp  # noqa: E402
from models.batchnorm import convert_sync_bn  # noqa: E402
from models.resnet import ResNet  # noqa: E402
from selfsup.blockwise import BlockwiseMethod  # noqa: E402
from selfsup.config import INTERLOSS  # noqa: E402
from test_methods import METHODS, build  # noqa: E402

STEPS, BATCH, SIZE = 3, 8, 16
dist.init_distributed("cpu")
r, w = dist.rank(), dist.world_size()
rt = Runtime(torch.device("cpu"), w, r)


def make(case):
    torch.manual_seed(0)
    if case == "interloss":
        import selfsup
        mcfg = _to_config(selfsup.method_defaults())
        mcfg.name = "simclr"
        mcfg.simclr.update(proj_hidden=32, proj_dim=16)
        il = _to_config(dict(INTERLOSS, partial_backprop=True, hard_pairs=True, candidates=2))
        return BlockwiseMethod(mcfg, ResNet("resnet18", width=8, cifar_stem=True), il, seed=0), True
    if case == "mocov3_nonsym":   # per-image query roles, drawn over the global batch
        return build("mocov3", symmetric=False), False
    return build(case.replace("hard_augment_", "")), False


def run(case):
    model, blockwise = make(case)
    if w > 1:
        model = convert_sync_bn(model, rt.device)
    model = model.double()
    init = {k: v.clone() for k, v in model.state_dict().items()}
    model.prepare(STEPS, STEPS)
    ddp = wrap_ddp(model, rt, find_unused_parameters=blockwise)
    opt = torch.optim.SGD([p for g in model.param_groups() for p in g["params"]], lr=0.1, momentum=0.9)
    g = torch.Generator().manual_seed(1)
    n_views = 4 if case.startswith("hard_augment_") else 2
    local = case in ("dino", "swav")
    losses = []
    for s in range(STEPS):
        views = [torch.randn(BATCH, 3, SIZE, SIZE, generator=g, dtype=torch.float64) for _ in range(n_views)]
        lv = [torch.randn(BATCH, 3, 8, 8, generator=g, dtype=torch.float64) for _ in range(2)] if local else None
        mine = lambda vs: None if vs is None else [v[r * BATCH // w:(r + 1) * BATCH // w] for v in vs]  # noqa: E731
        views, lv, targets = mine(views), mine(lv), None
        model.begin_step(s)
        if n_views > 2:   # Hard Augment's pick at 8 px, extra targets (WACV'23 Eq. 10, Table 9)
            views, targets, _ = hard_augment.select(model, views, 8, "hard", True,
                                                    rng.generator(0, rng.Stream.HARD_AUGMENT, s, r))
        loss = ddp(views, targets=targets, local_views=lv)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        model.after_backward(s)
        opt.step()
        model.on_step(s)
        losses.append(dist.all_reduce_mean(loss.detach().clone()).item())
    return {"init": init, "state": {k: v.clone() for k, v in model.state_dict().items()}, "losses": losses}


results = {case: run(case) for case in METHODS + ["mocov3_nonsym", "interloss", "hard_augment_simsiam",
                                                   "hard_augment_mocov3"]}
if r == 0:
    torch.save(results, sys.argv[2])
dist.cleanup()
