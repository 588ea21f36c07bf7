"""Sweep scale: N tiny trials as a bare Ray Tune function trainable vs `dlopt run`, N = 100, 300, 1000.

Each trial: linear_1d, 2 epochs, 1 worker, 2 trials at a time, random lr. Both sides run the
same worker code (`dlopt.runtime.worker.fit_in_trial` on the trial's resolved spec: the same
loop, per-epoch `tune.report`, the same checkpoints), so the difference is dlopt's driver:
MLflow tracking, the live view, selection, registration and the review. Each side is a fresh
process, timed from its start to its exit (imports, Ray start and shutdown included):

- bare: `python benchmarks/sweep_scale.py --side bare --trials N` (a plain `tune.Tuner`,
  Ray's defaults, verbose=0);
- dlopt: `python -m dlopt run SPEC --tracking-uri sqlite:///... --storage ...`, stdout a
  pipe (not a TTY: the live view's line mode), its lines counted.

Then every epoch of every trial is checked in MLflow: each child run's `train_loss` history
has steps 1..epochs exactly once. marginal_s: seconds per extra trial between two sizes.

Where the driver's time goes (`--phases`, issue 30): the largest size's dlopt side runs once
more under py-spy (`record --nonblocking --threads`, active samples only: CPU, not waiting),
and each sample of the driver process is put in a phase by its stack (PHASES): Tune's event
loop, the MLflow writer, Tune's state saves, checkpoint copies, the live view, the review
and registration after the loop, Ray's start, imports. With the machine's CPU and disk facts
(nproc, load, `dd oflag=dsync` latency: common.disk_sync_ms), a run on another machine says
why its ratio differs.

    python benchmarks/sweep_scale.py [--sizes 100 300 1000] [--epochs 2] [--phases]
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common
from dlopt.spec.report import END_TIME, EPOCH_SECONDS

TARGET_RATIO = 1.5
SPEC = '''from dlopt import Data, Experiment, Model, Optimizer, Resources, Search, Tracking, tune

experiment = Experiment(
    name="bench-scale", seed=0, epochs={epochs},
    data=Data(dataset="linear_1d", batch_size=10),
    model=Model(arch="linear"),
    optimizer=Optimizer(name="sgd", lr=tune.loguniform(1e-3, 1e-1), momentum=0.8),
    search=Search(algorithm="random", metric="val_loss", mode="min", num_samples={trials},
                  max_concurrent_trials=2, seed=0),
    resources=Resources(num_workers=1),
    tracking=Tracking(experiment="bench-scale"),
)
'''


def bare_side(trials: int, epochs: int, storage: str, times: Optional[str] = None,
              keep: Optional[int] = None) -> None:
    """The same trials as a plain Ray Tune sweep (run in its own process). `times`: a JSON
    file for the first trial's epoch (end time, seconds) pairs, for the fixed costs."""
    import ray
    from dlopt.runtime.search import to_ray_space
    from dlopt.runtime.worker import fit_in_trial
    from dlopt.spec.load import load_file
    from dlopt.spec.plan import make_plan
    from ray import tune

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "spec.py"
        path.write_text(SPEC.format(epochs=epochs, trials=trials))
        spec = load_file(path)
    plan = make_plan(spec)
    space = to_ray_space(plan)

    def trainable(config):
        fit_in_trial(plan.trial_spec(config))

    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    tuner = tune.Tuner(
        tune.with_resources(trainable, {"cpu": 1}), param_space=space,
        tune_config=tune.TuneConfig(metric="val_loss", mode="min", num_samples=trials,
                                    max_concurrent_trials=2, reuse_actors=True,
                                    search_alg=tune.search.BasicVariantGenerator(random_state=0)),
        run_config=tune.RunConfig(name="bare", storage_path=storage, verbose=0,
                                  checkpoint_config=tune.CheckpointConfig(num_to_keep=keep)))
    grid = tuner.fit()
    assert len(grid) == trials and not grid.errors, grid.errors
    if times:
        df = grid[0].metrics_dataframe
        Path(times).write_text(json.dumps(list(zip(df[END_TIME], df[EPOCH_SECONDS]))))
    ray.shutdown()


GROUP: Optional[common.CpuGroup] = None  # --cpu-quota / --cpu-shares: every side runs in it


def timed(cmd: list[str], env: dict) -> tuple[float, str, int]:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=common.ROOT,
                          preexec_fn=GROUP.enter if GROUP else None)
    seconds = time.perf_counter() - t0
    if proc.returncode not in (0,):
        sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-5000:])
        raise SystemExit(f"{cmd[:4]} exited {proc.returncode}")
    return seconds, proc.stdout, proc.returncode


def check_mlflow(uri: str, trials: int, epochs: int) -> dict:
    """Every epoch of every trial in MLflow exactly once."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("bench-scale")
    runs, token = [], None
    while True:
        page = client.search_runs([exp.experiment_id], "tags.`dlopt.role` = 'trial'",
                                  max_results=1000, page_token=token)
        runs += page
        token = page.token
        if not token:
            break
    bad = 0
    for run in runs:
        steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, "train_loss"))
        bad += steps != list(range(1, epochs + 1))
    return {"child_runs": len(runs), "runs_with_wrong_epochs": bad,
            "every_epoch_once": len(runs) == trials and bad == 0}


def bare_fixed_costs(env: dict, epochs: int) -> dict:
    """The same 1-trial sweep as a bare Ray Tune process: the floor (Ray's start and shutdown,
    the trial process and its torch import) that any Ray Tune run pays."""
    with tempfile.TemporaryDirectory(prefix="dlopt-fixed-bare-") as work:
        times = Path(work) / "times.json"
        t0 = time.time()
        timed([sys.executable, __file__, "--side", "bare", "--trials", "1", "--epochs",
               str(epochs), "--storage", f"{work}/bare", "--times", str(times)], env)
        t_exit = time.time()
        ends = json.loads(times.read_text())
    first_start = ends[0][0] - ends[0][1]
    return {"to_first_epoch_s": first_start - t0, "last_epoch_to_exit_s": t_exit - ends[-1][0],
            "total_s": t_exit - t0}


def fixed_costs(env: dict, epochs: int) -> dict:
    """A 1-trial, 1-worker `dlopt run`: process start -> first epoch's start, and last epoch's
    end -> process exit (epoch end times from MLflow: each epoch's metrics are stamped with it)."""
    from mlflow.tracking import MlflowClient

    with tempfile.TemporaryDirectory(prefix="dlopt-fixed-") as work:
        spec = Path(work) / "one.py"
        spec.write_text(SPEC.format(epochs=epochs, trials=1))
        uri = f"sqlite:///{work}/mlflow.db"
        t0 = time.time()
        timed([sys.executable, "-m", "dlopt", "run", str(spec), "--tracking-uri", uri,
               "--storage", f"{work}/ray"], env)
        t_exit = time.time()
        client = MlflowClient(uri)
        exp = client.get_experiment_by_name("bench-scale")
        run = client.search_runs([exp.experiment_id], "tags.`dlopt.role` = 'trial'")[0]
        ends = sorted((m.step, m.timestamp / 1000) for m in
                      client.get_metric_history(run.info.run_id, "train_loss"))
        first = [m.value for m in client.get_metric_history(run.info.run_id, "epoch_seconds")
                 if m.step == 1]
    first_start = ends[0][1] - (first[0] if first else 0.0)
    return {"to_first_epoch_s": first_start - t0, "last_epoch_to_exit_s": t_exit - ends[-1][1],
            "total_s": t_exit - t0}


# (phase, substrings of a sample's thread name or frames), first match wins
PHASES = (
    ("imports", ("_find_and_load",)),
    ("mlflow_writer", ("dlopt-mlflow-writer", "tracking/store.py", "tracking/callback.py")),
    ("tune_state_saves", ("experiment_state", "save_to_dir", "_save_experiment")),
    ("checkpoint_copies", ("copy_files", "_persist", "checkpoint_manager", "storage.py")),
    ("review_and_registration", ("driver/finalize.py", "registry/", "driver/description.py",
                                 "driver/plots.py", "driver/publish.py", "driver/pareto.py")),
    ("live_view", ("driver/progress.py", "driver/tables.py")),
    ("ray_start", ("init_ray", "ray/_private/node.py", "ray/_private/services.py")),
    ("tune_event_loop", ("tune_controller.py", "ray/tune/", "ray/train/", "fit_and_finalize")),
)


def phase_of(stack: str) -> str:
    return next((name for name, parts in PHASES if any(p in stack for p in parts)), "other")


WRITER_OPS = re.compile(r"(?:SqlAlchemyStore|RestStore|FileStore)\.(\w+) \(")


def profile_phases(n: int, epochs: int, env: dict, rate: int = 25) -> dict:
    """The dlopt side of `n` trials under py-spy: wall seconds, the driver's CPU seconds by
    phase (samples / rate), and the MLflow writer's CPU by store request kind, in ms per trial
    (what carries over to another machine: it is CPU the trials cannot have)."""
    spy = Path(sys.executable).with_name("py-spy")
    with tempfile.TemporaryDirectory(prefix="dlopt-phases-") as work:
        spec = Path(work) / "scale.py"
        spec.write_text(SPEC.format(epochs=epochs, trials=n))
        raw = Path(work) / "driver.txt"
        wall, _, _ = timed([str(spy), "record", "--rate", str(rate), "--format", "raw",
                            "--threads", "--nonblocking", "-o", str(raw), "--", sys.executable,
                            "-m", "dlopt", "run", str(spec), "--tracking-uri",
                            f"sqlite:///{work}/mlflow.db", "--storage", f"{work}/ray"], env)
        cpu: dict[str, float] = {name: 0.0 for name, _ in PHASES}
        cpu["other"] = 0.0
        ops: dict[str, float] = {}
        for line in raw.read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            phase = phase_of(stack)
            cpu[phase] += int(count) / rate
            if phase == "mlflow_writer":
                op = WRITER_OPS.search(stack)
                key = op.group(1) if op else "other"
                ops[key] = ops.get(key, 0.0) + int(count) / rate
    total = sum(cpu.values())
    return {"trials": n, "wall_s": wall, "driver_cpu_s": total,
            **{f"{k}_s": round(v, 1) for k, v in sorted(cpu.items(), key=lambda kv: -kv[1])},
            "writer_ms_per_trial": {k: round(1000 * v / n, 1) for k, v in
                                    sorted(ops.items(), key=lambda kv: -kv[1])}}


def _parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[100, 300, 1000])
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--phases", action="store_true",
                    help="profile the largest size's dlopt side with py-spy: the driver's CPU by phase")
    ap.add_argument("--no-keep2", action="store_true",
                    help="skip the bare sweep with dlopt's CheckpointConfig (the slowest side)")
    ap.add_argument("--cpu-quota", type=float, metavar="CPUS",
                    help="run every side in a cgroup capped at CPUS CPUs' time: a slower "
                         "machine with the same cores (Linux, root)")
    ap.add_argument("--cpu-shares", type=int,
                    help="cgroup cpu.shares of every side (1024 = the default weight): "
                         "measure beside other work on a shared machine")
    ap.add_argument("--side", choices=["bare"], help=argparse.SUPPRESS)
    ap.add_argument("--trials", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--storage", help=argparse.SUPPRESS)
    ap.add_argument("--times", help=argparse.SUPPRESS)
    ap.add_argument("--keep", type=int, help=argparse.SUPPRESS)
    return ap.parse_args()


def _size_row(n: int, epochs: int, env: dict, keep2: bool = True) -> dict:
    """One sweep size: the bare sweep, the bare sweep keeping 2 checkpoints, and dlopt's."""
    with tempfile.TemporaryDirectory(prefix="dlopt-scale-") as work:
        bare = [sys.executable, __file__, "--side", "bare", "--trials", str(n),
                "--epochs", str(epochs)]
        bare_s, _, _ = timed([*bare, "--storage", f"{work}/bare"], env)
        # the same CheckpointConfig as dlopt's (num_to_keep=2): Tune then saves its whole
        # experiment state every 2 checkpoints of any trial, a cost that grows with trials
        keep2_s = timed([*bare, "--storage", f"{work}/bare2", "--keep", "2"], env)[0] \
            if keep2 else float("nan")
        spec = Path(work) / "scale.py"
        spec.write_text(SPEC.format(epochs=epochs, trials=n))
        uri = f"sqlite:///{work}/mlflow.db"
        dlopt_s, out, _ = timed([sys.executable, "-m", "dlopt", "run", str(spec),
                                 "--tracking-uri", uri, "--storage", f"{work}/ray"], env)
        check = check_mlflow(uri, n, epochs)
        check["tune_state_bytes"] = sum(p.stat().st_size for p in
                                        Path(work, "ray").glob("*/experiment_state-*.json"))
    return {"trials": n, "bare_s": bare_s, "bare_keep2_s": keep2_s, "dlopt_s": dlopt_s,
            "ratio": dlopt_s / bare_s, "ratio_keep2": dlopt_s / keep2_s,
            "stdout_lines": len(out.splitlines()), **check}


def _add_marginals(rows: list[dict]) -> None:
    for prev, row in zip(rows, rows[1:]):
        dn = row["trials"] - prev["trials"]
        row["bare_marginal_s"] = (row["bare_s"] - prev["bare_s"]) / dn
        row["bare_keep2_marginal_s"] = (row["bare_keep2_s"] - prev["bare_keep2_s"]) / dn
        row["dlopt_marginal_s"] = (row["dlopt_s"] - prev["dlopt_s"]) / dn


def _markdown(epochs: int, rows: list[dict], fixed: list[dict], text: str) -> str:
    last = rows[-1]
    md = (f"N trials of linear_1d ({epochs} epochs, batch 10, 1 worker, 2 at a time, random "
          "lr): a bare Ray Tune function trainable running dlopt's worker loop vs `python -m "
          "dlopt run` (SQLite MLflow, stdout a pipe). bare_keep2: the bare sweep with dlopt's "
          "CheckpointConfig(num_to_keep=2). Each side a fresh process, wall seconds "
          "from start to exit. marginal_s: seconds per extra trial since the previous size. "
          "every_epoch_once: each trial's child run has train_loss at steps 1..epochs exactly "
          "once. tune_state_bytes: Tune's experiment-state file of the dlopt sweep.\n\n" + text +
          f"\n\n- at {last['trials']} trials dlopt/bare = {last['ratio']:.2f}, dlopt/bare_keep2 = "
          f"{last['ratio_keep2']:.2f} (target <= {TARGET_RATIO}); {last['stdout_lines']} lines "
          "printed\n")
    bare, ours = fixed
    return md + (f"- 1-trial, 1-worker run ({epochs} epochs), dlopt (bare Ray Tune): start -> "
                 f"first epoch {ours['to_first_epoch_s']:.1f} s ({bare['to_first_epoch_s']:.1f} "
                 f"s; target 6), last epoch -> exit {ours['last_epoch_to_exit_s']:.1f} s "
                 f"({bare['last_epoch_to_exit_s']:.1f} s; target 2), total "
                 f"{ours['total_s']:.1f} s ({bare['total_s']:.1f} s)\n\n"
                 + common.table(fixed, list(fixed[0])) + "\n")


def main() -> None:
    args = _parse_args()
    if args.side == "bare":
        return bare_side(args.trials, args.epochs, args.storage, args.times, args.keep)

    env = {**os.environ, "PYTHONPATH": str(common.ROOT / "platform") + os.pathsep
           + os.environ.get("PYTHONPATH", ""), "RAY_AIR_NEW_OUTPUT": "0"}
    global GROUP
    if args.cpu_quota or args.cpu_shares:
        GROUP = common.CpuGroup("dlopt-sweep-scale", args.cpu_quota, args.cpu_shares)
    try:
        _measure(args, env)
    finally:
        if GROUP:
            GROUP.remove()


def _measure(args: argparse.Namespace, env: dict) -> None:
    facts = {"nproc": os.cpu_count(), "load_avg": [round(x, 2) for x in os.getloadavg()],
             "dsync_write_ms": common.disk_sync_ms(tempfile.gettempdir()),
             "commit": common.git_commit(), **(GROUP.facts if GROUP else {})}
    print(f"machine: {facts}", flush=True)
    fixed = [{"side": "bare", **bare_fixed_costs(env, args.epochs)},
             {"side": "dlopt", **fixed_costs(env, args.epochs)}]
    print(common.table(fixed, list(fixed[0])), flush=True)
    rows = []
    for n in args.sizes:
        rows.append(_size_row(n, args.epochs, env, keep2=not args.no_keep2))
        print(common.table(rows[-1:], list(rows[-1])), flush=True)
    _add_marginals(rows)
    cols = ["trials", "bare_s", "bare_keep2_s", "dlopt_s", "ratio", "ratio_keep2",
            "bare_marginal_s", "bare_keep2_marginal_s", "dlopt_marginal_s",
            "stdout_lines", "child_runs", "every_epoch_once", "tune_state_bytes"]
    text = common.table(rows, cols)
    print(text)
    phases = [profile_phases(args.sizes[-1], args.epochs, env)] if args.phases else []
    md = _markdown(args.epochs, rows, fixed, text)
    if phases:
        text = common.table(phases, [k for k in phases[0] if k != "writer_ms_per_trial"])
        text += ("\n\nThe MLflow writer's CPU per trial by store request (ms): "
                 + ", ".join(f"{k} {v}" for k, v in phases[0]["writer_ms_per_trial"].items()))
        print(text)
        md += ("\nThe driver's CPU by phase (py-spy, active samples, one more dlopt run of "
               f"{args.sizes[-1]} trials): \n\n" + text + "\n")
    facts["load_avg_end"] = [round(x, 2) for x in os.getloadavg()]
    md += f"\nMachine facts: {facts}\n"
    common.write("sweep_scale", "Sweep scale", {"rows": rows, "fixed_costs": fixed,
                                                "phases": phases, "facts": facts,
                                                "args": vars(args)}, md)


if __name__ == "__main__":
    main()
