"""The in-memory path's per-epoch figures before and after a change (issue 27: "do not
regress"): `benchmarks/overhead.py` (the script behind BENCHMARKS.md's per-epoch rows) run
alternately against two source trees, in one run.

Each round runs this tree's `overhead.py` once per tree, in a child process whose PYTHONPATH
puts that tree's `platform/` first (so `dlopt` is that tree's; the script itself is the same
file for both), alternating the order each round (A B, B A, ...). Figures per run: the bare
loop's fitted seconds per epoch and dlopt's (in-trial, and the other paths overhead.py is
asked for); per tree the median over rounds; the ratio after / before of each.

    python benchmarks/inmemory_regression.py --before /tmp/wt-pre27 [--rounds 2]
        [-- --epochs 40 --workers 1]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common


def tree_commit(tree: Path) -> str:
    return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=tree, capture_output=True,
                          text=True, check=True).stdout.strip()


def one_run(tree: Path, label: str, overhead_args: list[str]) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(tree / "platform"), os.environ.get("PYTHONPATH", "")])}
    before = set(common.RESULTS.glob("overhead-*.json"))
    note = f"in-memory regression run: dlopt from {tree} ({label}, {tree_commit(tree)})"
    check = subprocess.run([sys.executable, "-c", "import dlopt; print(dlopt.__file__)"],
                           env=env, capture_output=True, text=True, check=True).stdout.strip()
    if not check.startswith(str(tree)):
        raise SystemExit(f"dlopt imported from {check}, not {tree}")
    load = [round(x, 2) for x in os.getloadavg()]
    subprocess.run([sys.executable, str(common.ROOT / "benchmarks" / "overhead.py"),
                    *overhead_args, "--note", note], env=env, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    (path,) = set(common.RESULTS.glob("overhead-*.json")) - before
    rows = json.loads(path.read_text())["rows"]
    return {"tree": label, "commit": tree_commit(tree), "json": str(path.relative_to(common.ROOT)),
            "load_avg_at_start": load, "dlopt_file": check,
            "epoch_s": {r["side"] + (f" x{r['workers']}" if r.get("workers", 1) > 1 else ""):
                        r["epoch_s"] for r in rows if r.get("epoch_s") is not None}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", type=Path, required=True, help="the tree before the change")
    ap.add_argument("--after", type=Path, default=common.ROOT, help="default: this tree")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("overhead_args", nargs="*", default=["--epochs", "40", "--workers", "1"])
    args = ap.parse_args()
    trees = {"before": args.before.resolve(), "after": args.after.resolve()}
    runs = []
    for r in range(args.rounds):
        order = ["before", "after"] if r % 2 == 0 else ["after", "before"]
        for label in order:
            runs.append(one_run(trees[label], label, args.overhead_args))
            print(json.dumps(runs[-1]), flush=True)
    sides = sorted({s for run in runs for s in run["epoch_s"]})
    rows = []
    for side in sides:
        med = {label: statistics.median(run["epoch_s"][side] for run in runs
                                        if run["tree"] == label and side in run["epoch_s"])
               for label in trees}
        rows.append({"side": side, "before_ms": med["before"] * 1000,
                     "after_ms": med["after"] * 1000, "after_over_before": med["after"] / med["before"],
                     "before_runs_ms": [round(run["epoch_s"][side] * 1000, 2) for run in runs
                                        if run["tree"] == "before"],
                     "after_runs_ms": [round(run["epoch_s"][side] * 1000, 2) for run in runs
                                       if run["tree"] == "after"]})
    load_end = [round(x, 2) for x in os.getloadavg()]
    md = common.table(rows, ["side", "before_ms", "after_ms", "after_over_before",
                             "before_runs_ms", "after_runs_ms"])
    md += (f"\n\nbefore: {trees['before']} at {tree_commit(trees['before'])}; after: "
           f"{trees['after']} at {tree_commit(trees['after'])}; {args.rounds} rounds, order "
           f"alternating; per-epoch = overhead.py's fitted seconds per epoch (median over rounds)."
           f" overhead.py args: {' '.join(args.overhead_args)}. Load average per run: "
           f"{[run['load_avg_at_start'] for run in runs]}, at the end {load_end}.\n")
    common.write("inmemory_regression", "In-memory per-epoch time before / after issue 27",
                 {"trees": {k: {"path": str(v), "commit": tree_commit(v)} for k, v in trees.items()},
                  "runs": runs, "rows": rows, "load_avg_at_end": load_end,
                  "overhead_args": args.overhead_args}, md)


if __name__ == "__main__":
    main()
