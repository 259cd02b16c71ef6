#!/usr/bin/env python
"""Do the plans of every experiment file stay the same across a change of the code?

`--plan --json` of every yaml file under yaml/ (schedules excepted), run in one process through
each script's own command line (`cli`), saved before a change and compared after it. A
refactoring that should change no behaviour must leave every plan identical: steps, epochs,
schedules as stages, budget units, PFLOPs counted on meta tensors, speed-ups.

    python benchmarks/plan_outputs.py --save /tmp/plans_before      # before the change
    python benchmarks/plan_outputs.py --compare /tmp/plans_before   # after: one line per file that differs
"""
import argparse
import contextlib
import glob
import io
import json
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import train_depth_ubn  # noqa: E402
import train_ssl  # noqa: E402
import train_supervised  # noqa: E402


def script_of(rel):
    """The script that runs yaml/<rel> (linear-probe files have no plan)."""
    if rel.startswith(("ubn/kitti", "ubn/quickstart")):
        return train_depth_ubn
    if rel.startswith(("selection/", "ubn/")):
        return train_supervised
    if rel.startswith("linear/"):
        return None
    return train_ssl


def plans():
    """{relative path: the plan's JSON text, or the one-line error it gave}."""
    os.chdir(REPO)
    out = {}
    for path in sorted(glob.glob("yaml/**/*.yaml", recursive=True)):
        rel = os.path.relpath(path, "yaml")
        script = script_of(rel)
        if "/schedules/" in path or script is None:
            continue
        buf = io.StringIO()
        try:
            with contextlib.redirect_stdout(buf):
                script.cli(["--config", path, "--plan", "--json"])
            out[rel] = buf.getvalue()
        except Exception as e:  # a file whose plan fails: its message is what must stay the same
            out[rel] = f"error: {type(e).__name__}: {e}"
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--save", metavar="DIR")
    g.add_argument("--compare", metavar="DIR")
    args = p.parse_args()
    folder = os.path.abspath(args.save or args.compare)
    now = plans()
    if args.save:
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, "plans.json"), "w") as f:
            json.dump(now, f, indent=1, sort_keys=True)
        print(f"{len(now)} plans saved to {folder}/plans.json")
        return
    with open(os.path.join(folder, "plans.json")) as f:
        before = json.load(f)
    differ = sorted(k for k in set(before) | set(now) if before.get(k) != now.get(k))
    print(f"{'file':<52}{'before':>10}{'after':>10}")
    for k in differ:
        print(f"{k:<52}{len(before.get(k, '')):>10}{len(now.get(k, '')):>10}")
    same = len(set(before) & set(now)) - len([k for k in differ if k in before and k in now])
    print(f"identical: {same} of {len(set(before) | set(now))} files; differing: {len(differ)}")
    sys.exit(1 if differ else 0)


if __name__ == "__main__":
    main()
