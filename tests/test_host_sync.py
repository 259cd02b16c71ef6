"""No host synchronisation in a step that does not log (common/host_sync.py, train.forbid_sync):
the guard itself, the stop / divergence flag that reads only every train.check_every steps, and
each training script's real loop under the guard."""
import pytest
import torch

from common import host_sync, run
from conftest import TINY
from test_methods import small_overrides

CPU = torch.device("cpu")


def _read(t):
    return t.sum().item()


@pytest.mark.parametrize("what", ["item", "tolist", "bool", "float", "mask", "nonzero", "tensor_on_device",
                                  "blocking_to", "print"])
def test_guard_raises_on_each_kind_of_host_read(what):
    x = torch.arange(4.0)
    calls = {"item": lambda: _read(x), "tolist": lambda: x.tolist(), "bool": lambda: bool(x.sum() > 0),
             "float": lambda: float(x.sum()), "mask": lambda: x[x > 1], "nonzero": lambda: x.nonzero(),
             "tensor_on_device": lambda: torch.tensor([1.0], device=CPU), "blocking_to": lambda: x.to(CPU),
             "print": lambda: f"{x.sum()}"}
    with pytest.raises(host_sync.HostSyncError, match=r"test_host_sync\.py:\d+"):
        with host_sync.forbid(CPU):
            calls[what]()
    calls[what]()   # outside the guard: fine


def test_guard_allows_device_work_async_copies_torch_internals_and_marked_host_data():
    x = torch.arange(4.0)
    with host_sync.forbid(CPU):
        y = torch.where(x > 1, x, -x).sum() + torch.full((), 2.0)
        z = torch.zeros(3).to(CPU, non_blocking=True).to(torch.float64)   # a dtype change is no copy
        opt = torch.optim.AdamW([torch.nn.Parameter(torch.ones(2))], foreach=False)
        opt.param_groups[0]["params"][0].grad = torch.ones(2)
        opt.step()   # reads its CPU step counter inside torch: the CUDA mode's business, not ours
        with host_sync.allowed():
            n = int(x[1])   # host data by design
    assert float(y) == 6.0 and z.dtype == torch.float64 and n == 1
    with host_sync.forbid(CPU, enabled=False):
        _read(x)


def test_stop_flag_reads_only_when_due_and_reports_the_first_diverged_step():
    stop = run.StopFlag(CPU, every=4)
    losses = [1.0, 2.0, float("nan"), 3.0, float("inf"), 1.0, 1.0, 1.0]
    seen = []
    for step, v in enumerate(losses, 1):
        due = stop.due(step)
        with host_sync.forbid(CPU, enabled=not due):   # a non-due check never reads a device value
            seen.append(stop.check(torch.tensor(v), step))
    assert seen[:3] == [(False, None)] * 3 and seen[3] == (False, 3)   # read at step 4: first NaN at step 3
    stop.signum = 15
    assert stop.check(torch.tensor(1.0), 9) == (False, None)             # not due: not read yet
    assert stop.check(torch.tensor(1.0), 10, force=True) == (True, 3)    # forced (a save): read now
    with pytest.raises(Exception, match="check_every"):
        run.StopFlag(CPU, every=0)


def _run_in_process(module, argv, tmp_path):
    """A script's main(cfg) in this process (no interpreter start-up), with the guard on."""
    threads = torch.get_num_threads()
    try:
        cfg = module.parse_config(argv + [f"output_dir={tmp_path}", "train.forbid_sync=true"])
        module.main(cfg)
    finally:
        torch.set_num_threads(threads)


SSL = TINY + ["train.log_every=4", "train.check_every=4", "train.epochs=1", "knn.k=3"]
VIT = ["model.arch=vit_t16", "model.patch_size=8", "data.crop_size=48", "data.synthetic_image_size=48",
       "data.eval_resize=48", "data.eval_crop=48"]
CASES = {
    "simsiam": [],
    "dino_multicrop": small_overrides("dino") + ["data.local_views=2", "data.local_crop_size=16"],
    "mocov3_vit_token_dropout": small_overrides("mocov3") + VIT + [
        "accel.compression.drop_ratio=0.5", "accel.compression.patch_size=12", "method.mocov3.symmetric=false"],
    "hard_augment": ["accel.hard_augment.enabled=true", "accel.hard_augment.views=4", "accel.hard_augment.r_sel=16",
                     "augment.blur_prob=[1.0,0.1]", "augment.solarize_prob=[0.0,0.2]"],
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_train_ssl_steps_that_do_not_log_never_synchronise(case, tmp_path):
    """4 steps: step 1 (set-up) and step 4 (log line, check) may read; steps 2-3 run under the
    guard, so any read of a device value there fails the run with HostSyncError."""
    import train_ssl
    _run_in_process(train_ssl, SSL + CASES[case], tmp_path)


def test_train_supervised_selection_and_depth_ubn_never_synchronise(tmp_path):
    import train_depth_ubn
    import train_supervised
    small = ["train.threads=1", "data.workers=0", "train.epochs=1", "train.log_every=4", "train.check_every=4",
             "train.ckpt_every_steps=0"]
    _run_in_process(train_supervised, small + [
        "data.synthetic_train_size=256", "data.synthetic_val_size=32", "model.width=8", "train.batch_size=32",
        "select.method=fast", "select.warmup_steps=0", "select.cooldown_fraction=0", "select.resolution=16"],
        tmp_path / "supervised")
    _run_in_process(train_depth_ubn, small + [
        "data.synthetic_train_size=64", "data.synthetic_test_size=8", "train.batch_size=8", "ubn.enabled=true",
        "model.width=4", "data.height=32", "data.width=64"], tmp_path / "depth")


def _final_weights(module, argv, tmp_path):
    _run_in_process(module, argv, tmp_path)
    from common import checkpoint
    return checkpoint.load(str(tmp_path / "checkpoint.pt"))["model"]


@pytest.mark.parametrize("case,backend", [("simsiam", "aot_eager"), ("mocov3_vit_token_dropout", "inductor")])
def test_compiled_run_equals_eager_run(case, backend, tmp_path):
    """train.compile=true (ResNet stages / ViT blocks compiled, token dropout eager between them)
    gives the eager run's weights after 4 steps in float32, to 1e-4 relative (kernels fused in
    another order round differently). The ResNet with aot_eager (forward and backward traced as
    inductor traces them, without generating code: its four distinct stages would take a minute
    of C++ compilation here); the ViT with inductor, whose blocks share one graph per token count
    (~20 s on 2 cores)."""
    import torch._dynamo
    import train_ssl
    torch._dynamo.reset()
    argv = SSL + CASES[case] + ["train.amp=none", "train.forbid_sync=false"]
    eager = _final_weights(train_ssl, argv, tmp_path / "eager")
    compiled = _final_weights(train_ssl, argv + ["train.compile=true", f"train.compile_backend={backend}"],
                              tmp_path / "compiled")
    init = train_ssl.build_model(train_ssl.parse_config(argv))[0].state_dict()
    moved = 0.0
    for k, v in eager.items():
        if v.is_floating_point():
            scale = v.abs().max().clamp_min(1e-3)
            assert (compiled[k] - v).abs().max() <= 1e-4 * scale, (k, (compiled[k] - v).abs().max())
            moved = max(moved, float((v - init[k]).abs().max()))
    assert moved > 1e-5   # the 4 steps changed the weights: the comparison is not of the initialisation
