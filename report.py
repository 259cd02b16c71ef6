#!/usr/bin/env python
"""Reproduction report: for every paper table that a set of run directories belongs to, the
paper's figures beside ours.

    python report.py runs/wacv/                               # any run directories, or folders holding them
    python report.py runs/cpu/wacv_table3 --out benchmarks/reports/wacv_table3_cpu

A run belongs to the table its experiment file's `paper:` section names (kept in the run's
config.yaml). For each table it prints a markdown table with one line per row of that table (every
experiment file under yaml/ with the same paper and table; "–" for rows not run yet): the paper's
metric, ours (online kNN top-1 from metrics.jsonl, linear-probe top-1 from linear_eval.json,
validation top-1 or delta<1.25 for the supervised and depth scripts), the paper's speed-up beside
our measured ones against the row's baseline run (wall time and training + selection PFLOPs from
the FLOP ledger), PFLOPs, wall time, epochs done of planned, and the scale each run was measured
at (dataset, model, resolution, device, ranks). Runs still going, or stopped, are reported with
what they have logged so far. Runs of one file that differ only in `train.seed` make one line:
ours as mean +- sample std (n seeds). Writes the same as CSV, and per table two PNG plots:
accuracy against training PFLOPs (WACV'23 Fig. 1) and kNN top-1 over epochs.
"""
import argparse
import csv
import glob
import json
import os
import sys

import yaml

from common.config import diff_configs
from common.plot import line_plot

HERE = os.path.dirname(os.path.abspath(__file__))
PAPERS = {"wacv2023": "WACV'23", "thesis2023": "Thesis'23", "intermediate2023": "Intermediate losses",
          "neurips2024": "NeurIPS'24", "project": "Project (no paper row)"}


def read_jsonl(path):
    rows = []
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:   # a line being written right now
                    pass
    return rows


def config_file_of(info):
    """The experiment file a run was started with (its --config argument), relative to yaml/."""
    argv = info.get("argv", [])
    for i, a in enumerate(argv):
        path = argv[i + 1] if a == "--config" and i + 1 < len(argv) else a[9:] if a.startswith("--config=") else None
        if path:
            path = os.path.normpath(path if os.path.isabs(path) else os.path.join(HERE, path))
            return os.path.relpath(path, os.path.join(HERE, "yaml"))
    return None


def ours(metric, rows, run_dir):
    """Our value of the paper's metric, and where it comes from."""
    if metric == "linear_top1":
        le = os.path.join(run_dir, "linear_eval.json")
        if os.path.exists(le):
            with open(le) as f:
                return json.load(f).get("top1"), "linear probe"
        metric = "knn_top1"   # not probed yet: the online kNN is what there is
    key = {"knn_top1": "knn_top1", "nn_top1": "knn_top1", "top1": "top1", "delta1": "delta1"}.get(metric, metric)
    values = [r[key] for r in rows if key in r]
    return (values[-1] if values else None), key


class NotARun(Exception):
    """A folder with a config.yaml that is broken, or not one of this project's experiment runs."""


def read_run(run_dir):
    path = os.path.join(run_dir, "config.yaml")
    try:
        with open(path) as f:
            cfg = yaml.safe_load(f)
    except (OSError, yaml.YAMLError) as e:
        raise NotARun(f"{path} cannot be read ({type(e).__name__})") from None
    if not isinstance(cfg, dict):
        raise NotARun(f"{path} is not a run's config (holds a {type(cfg).__name__})")
    paper = cfg.get("paper")
    if not isinstance(paper, dict) or not (paper.get("name") and paper.get("where")):
        raise NotARun(f"{path} names no paper row (paper.name, paper.where): not a run of an experiment file")
    info = {}
    if os.path.exists(os.path.join(run_dir, "run_info.json")):
        with open(os.path.join(run_dir, "run_info.json")) as f:
            info = json.load(f)
    rows = read_jsonl(os.path.join(run_dir, "metrics.jsonl"))
    paper = cfg.get("paper") or {}
    steps = [r for r in rows if "loss" in r]
    value, source = ours(paper.get("metric", "knn_top1"), rows, run_dir)
    last = rows[-1] if rows else {}
    done = any(("knn_start" in r) or ("best_top1" in r) or r.get("final") for r in rows)
    epochs_done = max((r.get("epoch", 0.0) for r in rows), default=0.0)
    pflops = max((r.get("train_pflops", 0.0) + r.get("selection_pflops", 0.0) for r in rows), default=0.0)
    model = cfg.get("model", {})
    data = cfg.get("data", {})
    res = data.get("crop_size") or data.get("height")
    same = {k: v for k, v in cfg.items() if k not in ("output_dir",)}
    train = dict(same.get("train") or {})
    seed = train.pop("seed", None)
    for k in SEED_FREE:   # how a run is served and logged, not what it trains
        train.pop(k, None)
    same["train"] = train
    same["data"] = {k: v for k, v in (same.get("data") or {}).items() if k not in ("workers", "root")}
    return {"dir": run_dir, "file": config_file_of(info), "paper": paper, "value": value, "source": source,
            "seed": seed, "config": same,
            "pflops": pflops, "wall_s": (steps[-1]["time"] - rows[0]["time"]) if steps else 0.0,
            "epochs_done": epochs_done, "epochs_planned": cfg.get("train", {}).get("epochs"),
            "status": ("finished" if done else ("not started" if not steps else "partial"))
                      + (", illustrative schedule" if ((cfg.get("accel") or {}).get("compression") or {}).get("illustrative")
                         else ""),
            "scale": f"{info.get('train_images', data.get('name', '?'))}, {model.get('arch', 'dispnet')}"
                     f"{' width ' + str(model['width']) if 'width' in model else ''}, {res} px, "
                     f"{info.get('device', '?')} x {info.get('world_size', 1)}",
            "knn_curve": [(r["epoch"], r["knn_top1"]) for r in rows if "knn_top1" in r and "epoch" in r]}


SEED_FREE = ("threads", "log_every", "check_every", "ckpt_every_steps", "snapshot_every_epochs", "stop_at_step",
             "allow_changes", "forbid_sync", "compile", "compile_backend")


def group_seeds(runs):
    """Runs of one experiment file whose configs differ only in train.seed (and output_dir,
    data.root / workers, logging and checkpoint cadence) become one record: `value` their mean,
    `std` the sample standard deviation, `n` and `seeds`; wall time and PFLOPs their means."""
    groups = {}
    for r in runs:
        groups.setdefault((r["file"], json.dumps(r["config"], sort_keys=True, default=str)), []).append(r)
    out = []
    for rs in groups.values():
        if len({r["seed"] for r in rs}) < len(rs):   # the same seed twice (a copy, a re-run): lines of their own
            out += [dict(r, n=1, std=None, seeds=[r["seed"]]) for r in rs]
            continue
        rec = dict(rs[0], n=1, std=None, seeds=[rs[0]["seed"]])
        if len(rs) > 1:
            vals = [r["value"] for r in rs if r["value"] is not None]
            mean = sum(vals) / len(vals) if vals else None
            std = (sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)) ** 0.5 if len(vals) > 1 else None
            statuses = [r["status"] for r in rs]
            rec.update(value=mean, std=std, n=len(vals), seeds=sorted(r["seed"] for r in rs),
                       pflops=sum(r["pflops"] for r in rs) / len(rs), wall_s=sum(r["wall_s"] for r in rs) / len(rs),
                       epochs_done=min(r["epochs_done"] for r in rs),
                       status=statuses[0] if len(set(statuses)) == 1 else
                       f"{sum(x.startswith('finished') for x in statuses)} of {len(rs)} finished",
                       dir=", ".join(r["dir"] for r in rs))
        out.append(rec)
    return out


def find_runs(paths):
    out = []
    for p in paths:
        if os.path.isfile(os.path.join(p, "config.yaml")):
            out.append(p)
        out += sorted(os.path.dirname(c) for c in glob.glob(os.path.join(p, "**", "config.yaml"), recursive=True)
                      if os.path.dirname(c) != p)
    return list(dict.fromkeys(out))


def table_files():
    """{(paper name, where): [(file relative to yaml/, its paper section)]} of every experiment file."""
    tables = {}
    for f in sorted(glob.glob(os.path.join(HERE, "yaml", "**", "*.yaml"), recursive=True)):
        if os.sep + "schedules" + os.sep in f:
            continue
        with open(f) as fh:
            paper = (yaml.safe_load(fh) or {}).get("paper") or {}
        if paper:
            tables.setdefault((paper.get("name"), paper.get("where")), []).append(
                (os.path.relpath(f, os.path.join(HERE, "yaml")), paper))
    return tables


def fmt(v, spec=".3g"):
    return "–" if v is None else format(v, spec) if isinstance(v, (int, float)) else str(v)


def report(run_dirs, out_dir=None):
    runs = []
    for d in run_dirs:
        try:
            runs.append(read_run(d))
        except NotARun as e:
            print(f"warning: skipped {d}: {e}", file=sys.stderr)
    if not runs:
        print("error: none of the run directories given is a run of an experiment file", file=sys.stderr)
        sys.exit(2)
    runs = group_seeds(runs)   # seeds of one configuration: one line, mean +- std (n)
    tables = table_files()
    keys = list(dict.fromkeys((r["paper"].get("name"), r["paper"].get("where")) for r in runs))
    lines, csv_rows = [], []
    for key in keys:
        mine = [r for r in runs if (r["paper"].get("name"), r["paper"].get("where")) == key]
        by_row = {r["paper"].get("row"): r for r in mine}   # for finding a baseline run
        rows = tables.get(key) or [(r["file"], r["paper"]) for r in mine]
        lines += ["", f"### {PAPERS.get(key[0], key[0])} {key[1]}", "",
                  "| row | file | metric | paper | ours | paper speed-up | ours: wall | ours: PFLOPs | PFLOPs | wall | "
                  "epochs (done/planned) | scale | status |", "|" + "---|" * 13]
        # a run belongs to the row of its --config file; a run started without one, by its row
        lines_of_table = [(rel, paper, run) for rel, paper in rows
                          for run in ([r for r in mine if r["file"] == rel or (r["file"] is None and
                                       r["paper"].get("row") == paper.get("row"))] or [None])]
        first_of = {}
        for rel, paper, run in lines_of_table:   # one line per run of a row ("-" when none)
            label = rel
            if run is not None:   # a second configuration of the same file (a control): say what differs
                first = first_of.setdefault(rel, run)
                if first is not run:
                    label = f"{rel} [{', '.join(c.split(': ')[0] + '=' + c.split(' -> ')[-1] for c in diff_configs(first['config'], run['config']))}]"
            base = None
            if run and paper.get("baseline"):
                base_rel = os.path.normpath(os.path.join(os.path.dirname(rel), paper["baseline"]))
                base = next((r for r in runs if r["file"] == base_rel), None)
                if base is None:   # the baseline row may be another row of this table, run from its own file
                    base_paper = next((p for f, p in rows if f == base_rel), None)
                    base = by_row.get(base_paper.get("row")) if base_paper else None
            wall_x = base["wall_s"] / run["wall_s"] if base and run and run["wall_s"] and base["status"].startswith("finished") \
                and run["status"].startswith("finished") else None
            flop_x = base["pflops"] / run["pflops"] if base and run and run["pflops"] and base["status"].startswith("finished") \
                and run["status"].startswith("finished") else None
            rec = {"table": f"{key[0]} {key[1]}", "row": paper.get("row"), "file": label, "metric": paper.get("metric"),
                   "paper_value": paper.get("value"), "ours": run["value"] if run else None,
                   "ours_std": run["std"] if run else None, "n_seeds": run["n"] if run else 0,
                   "seeds": run["seeds"] if run else [],
                   "paper_speedup": paper.get("speedup"), "ours_wall_speedup": wall_x, "ours_flops_speedup": flop_x,
                   "pflops": run["pflops"] if run else None, "wall_s": run["wall_s"] if run else None,
                   "epochs_done": run["epochs_done"] if run else None,
                   "epochs_planned": run["epochs_planned"] if run else None,
                   "scale": run["scale"] if run else None, "status": run["status"] if run else "not run",
                   "run_dir": run["dir"] if run else None}
            csv_rows.append(rec)
            epochs = f"{rec['epochs_done']:.3g}/{rec['epochs_planned']}" if run else "–"
            ours_text = fmt(rec["ours"], ".2f") if not rec["n_seeds"] or rec["n_seeds"] < 2 else \
                f"{rec['ours']:.2f} +- {fmt(rec['ours_std'], '.2f')} (n={rec['n_seeds']})"
            lines.append(f"| {rec['row']} | {label} | {fmt(rec['metric'])} | {fmt(rec['paper_value'])} | "
                         f"{ours_text} | {fmt(rec['paper_speedup'])} | {fmt(wall_x, '.2f')} | "
                         f"{fmt(flop_x, '.2f')} | {fmt(rec['pflops'], '.4g')} | "
                         f"{fmt(rec['wall_s'] and rec['wall_s'] / 60, '.1f')} min | {epochs} | {fmt(rec['scale'])} | "
                         f"{rec['status']} |")
        if out_dir:
            plot_table(out_dir, key, mine)
    text = "\n".join(lines).lstrip()
    print(text)
    if out_dir:
        with open(os.path.join(out_dir, "report.md"), "w") as f:
            f.write(text + "\n")
        with open(os.path.join(out_dir, "report.csv"), "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(csv_rows[0]) if csv_rows else ["table"])
            w.writeheader()
            w.writerows(csv_rows)
    return csv_rows


def plot_table(out_dir, key, runs):
    stem = "_".join(str(k).replace(" ", "").replace(".", "_") for k in key)
    label = lambda r: r["paper"].get("row") or os.path.basename(r["dir"])   # noqa: E731
    points = {label(r): ([r["pflops"]], [r["value"]]) for r in runs if r["value"] is not None and r["pflops"] > 0}
    if points:
        line_plot(os.path.join(out_dir, f"{stem}_accuracy_vs_pflops.png"), points,
                  title=f"{PAPERS.get(key[0], key[0])} {key[1]}: accuracy vs training PFLOPs (ours)",
                  xlabel="training + selection PFLOPs", ylabel="top-1 %", markers=True)
    curves = {label(r): tuple(zip(*r["knn_curve"])) for r in runs if len(r["knn_curve"]) > 1}
    if curves:
        line_plot(os.path.join(out_dir, f"{stem}_knn_over_epochs.png"), curves,
                  title=f"{PAPERS.get(key[0], key[0])} {key[1]}: kNN top-1 over epochs (ours)",
                  xlabel="epoch", ylabel="kNN top-1 %", markers=True)


def main(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", help="run directories, or folders that hold them")
    p.add_argument("--out", default=None, help="also write report.md, report.csv and PNG plots here")
    args = p.parse_args(argv)
    dirs = find_runs(args.runs)
    if not dirs:
        print(f"error: no run directory (a folder with config.yaml) under {' '.join(args.runs)}", file=sys.stderr)
        sys.exit(2)
    if args.out:
        os.makedirs(args.out, exist_ok=True)
    report(dirs, args.out)


if __name__ == "__main__":
    main(sys.argv[1:])
