"""Every experiment file under yaml/ names the paper row it reproduces (its `paper:` section), and
its plan (`--plan`: steps, epochs, sample-cost budget, PFLOPs, speed-up against its baseline file,
resolved without data or training) reproduces the printed figures the section lists in `check`,
within the file's stated tolerance. A file that drifts from its row fails here, not after days on
8 GPUs."""
import glob
import os

import pytest

import selfsup.plan
from common.config import load_config
from conftest import REPO
from selfsup.config import linear_eval_defaults, ssl_defaults

YAML = os.path.join(REPO, "yaml")
FILES = sorted(f for f in glob.glob(os.path.join(YAML, "**", "*.yaml"), recursive=True)
               if os.sep + "schedules" + os.sep not in f)
NAMES = {"wacv2023", "thesis2023", "intermediate2023", "neurips2024", "project"}
CHECKABLE = {"epochs", "steps", "budget_M", "pflops", "speedup"}


def script_of(path):
    """(script, defaults tree) that runs this file."""
    import train_depth_ubn
    import train_supervised
    rel = os.path.relpath(path, YAML)
    if rel.startswith(("ubn/kitti", "ubn/quickstart")):
        return "train_depth_ubn.py", train_depth_ubn.DEPTH_DEFAULTS
    if rel.startswith(("selection" + os.sep, "ubn" + os.sep)):
        return "train_supervised.py", train_supervised.SUPERVISED_DEFAULTS
    if rel.startswith("linear" + os.sep):
        return "linear_eval.py", linear_eval_defaults()
    return "train_ssl.py", ssl_defaults()


def plan_of(path, cfg, needs):
    """The script's --plan for this file (in-process; FLOPs and the baseline only when checked)."""
    import train_supervised
    script, _ = script_of(path)
    flops = "pflops" in needs or ("speedup" in needs and cfg.paper.get("speedup_kind") == "flops")
    kw = dict(baseline="speedup" in needs, count_flops=flops)
    if script == "train_ssl.py":
        return selfsup.plan.plan(cfg, path, **kw)
    if script == "train_supervised.py":
        return train_supervised.plan(cfg, path, **kw)
    if script == "train_depth_ubn.py":
        import train_depth_ubn
        return train_depth_ubn.plan(cfg, path)
    return {"epochs": float(cfg.eval.epochs)}   # linear_eval.py: the probe's epochs


def planned(plan, figure, paper):
    if figure == "pflops":   # the papers count multiply-adds; torch's flop counter 2 FLOPs per multiply-add
        per_mac = 2.0 if paper.get("pflops_counts", "macs") == "macs" else 1.0
        return (plan["train_pflops"] + plan.get("selection_pflops", 0.0)) / per_mac
    if figure == "speedup":
        return plan[f"speedup_{paper['speedup_kind']}"]
    return plan[figure]


def test_there_are_experiment_files():
    assert len(FILES) > 200


@pytest.mark.parametrize("path", FILES, ids=[os.path.relpath(f, YAML) for f in FILES])
def test_experiment_file_names_its_row_and_its_plan_reproduces_it(path):
    _, tree = script_of(path)
    cfg = load_config(tree, path)
    paper = cfg.get("paper")
    assert isinstance(paper, dict), "no paper: section"
    for key in ("name", "where", "row", "dataset", "check"):
        assert key in paper, f"paper.{key} missing"
    assert paper["name"] in NAMES, paper["name"]
    needs = set(paper["check"] or [])
    assert needs <= CHECKABLE, needs - CHECKABLE
    for figure in needs:
        assert paper.get(figure) is not None, f"paper.check lists {figure} but paper.{figure} is null"
    if paper.get("baseline"):
        assert os.path.isfile(os.path.join(os.path.dirname(path), paper["baseline"])), paper["baseline"]
    if not needs:
        return
    plan = plan_of(path, cfg, needs)
    tol = paper.get("tolerance") or {}
    for figure in sorted(needs):
        got, want = planned(plan, figure, paper), float(paper[figure])
        assert got == pytest.approx(want, rel=float(tol.get(figure, 0.01))), \
            f"{figure}: the plan gives {got:.6g}, the paper prints {want:.6g} ({paper['where']}, {paper['row']})"


@pytest.mark.parametrize("path", FILES, ids=lambda p: os.path.relpath(p, YAML))
def test_every_training_file_says_whether_its_batchnorm_is_global(path):
    """train.sync_bn decides whether a multi-rank run is the 1-rank run split over ranks, and the
    papers' recipes differ (SimSiam / BYOL / SimCLR / SwAV / DINO / MoCo v3: global; MoCo v1-v2+:
    Shuffling BN; torchvision's supervised recipe: per GPU): each file, or a file it inherits
    from, sets it rather than leaving the default to decide. MoCo files with shuffle_bn keep it off
    (except with intermediate losses, whose block heads cannot shuffle: yaml/interloss/*_accel.yaml)."""
    from common.config import _read_yaml
    script, defaults = script_of(path)
    if script == "linear_eval.py":
        return
    chain = _read_yaml(path)
    assert any("sync_bn" in (data.get("train") or {}) for _, data in chain), path
    cfg = load_config(defaults, path)
    method = cfg.get("method", {})
    il = cfg.get("interloss") or {}   # selfsup/build.py: block heads, which do not shuffle: global BN there
    blockwise = il.get("aux_losses") or il.get("partial_backprop") or il.get("hard_pairs")
    if method and method.get("name") in ("moco", "mocov2", "mocov2plus") and method[method.name].get("shuffle_bn") \
            and not blockwise:
        assert cfg.train.sync_bn is False, path
