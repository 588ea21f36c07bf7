"""Platform overhead and report cost: one model through a bare loop and through dlopt.

Both sides train the same spec (digits, 64-512-10 MLP, Adam, seed 0, N epochs):
- bare: `dlopt.train.loop.fit` called in this process with a list-collecting `report`
  (no Ray, no MLflow, no checkpoint files);
- dlopt: `dlopt.sweep.run` of the same spec as a 1-trial sweep (1 worker, then 2 workers),
  local Ray started in this process, SQLite MLflow in a temp dir.

Timing: the driver-side arrival time of each epoch (the MLflow metric timestamp the
tracking callback writes) is fitted as t = a + b * epoch. b is the steady-state seconds
per epoch, a the fixed start-up. For dlopt, `sweep start-up` is call -> trial start
(Ray + MLflow parent), `trial start-up` is trial start -> the fitted epoch-0 point.
Report cost is the median `report_seconds` the worker measured around `ray.train.report`.

    python benchmarks/overhead.py [--epochs 20] [--workers 1 2] [--poll 0.1]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

TARGETS = {"ratio": 1.05, "trial_startup_1": 3.0, "trial_startup_2": 8.0, "report_s": 0.05}


def make_spec(epochs: int, workers: int, hidden=(512,), lr=1e-3, name="bench-overhead",
              in_trial: bool = True):
    from dlopt import Data, Experiment, Model, Optimizer, Resources, Search, Tracking

    return Experiment(
        name=name, seed=0, epochs=epochs,
        data=Data(dataset="digits", batch_size=64),
        model=Model(arch="mlp", hidden=list(hidden)),
        optimizer=Optimizer(name="adam", lr=lr),
        search=Search(algorithm="random", num_samples=1),
        resources=Resources(num_workers=workers, in_trial=in_trial),
        tracking=Tracking(experiment="bench"),
    )


def bare(spec) -> dict:
    """The plain loop in this process: epoch arrival times relative to the call.

    One torch thread, as a Ray worker or trial with one CPU gets (Ray sets OMP_NUM_THREADS
    to the task's CPUs); two threads on a shared 2-core machine also thrash.
    """
    import torch

    from dlopt.train.loop import fit

    torch.set_num_threads(1)

    arrivals: list[tuple[int, float]] = []
    compute: list[float] = []
    t0 = time.perf_counter()

    def report(metrics, write=None):
        if not metrics.get("final"):
            arrivals.append((metrics["epoch"], time.perf_counter() - t0))
            compute.append(metrics["epoch_seconds"])

    state = fit(spec, report)
    total = time.perf_counter() - t0
    a, b = common.line_fit([e for e, _ in arrivals], [t for _, t in arrivals])
    return {"side": "bare loop", "workers": 1, "total_s": total, "startup_s": a, "epoch_s": b,
            "compute_s": statistics.median(compute),
            "val_accuracy": state.metrics.get("val_accuracy")}


def through_dlopt(spec, poll: str | None) -> dict:
    from mlflow.tracking import MlflowClient

    from dlopt.sweep import run

    if poll is not None:
        os.environ["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] = poll
    with tempfile.TemporaryDirectory(prefix="dlopt-bench-") as work:
        uri = f"sqlite:///{work}/mlflow.db"
        t_call = time.time()
        result = run(spec, tracking_uri=uri, storage=f"{work}/ray_results", progress=False)
        t_end = time.time()
        client = MlflowClient(uri)
        trial = result.trials[0]
        child = client.get_run(trial.run_id)
        t_trial = child.info.start_time / 1000
        hist = sorted(client.get_metric_history(trial.run_id, "epoch_seconds"), key=lambda m: m.step)
        epochs = [m.step for m in hist]
        times = [m.timestamp / 1000 - t_trial for m in hist]
        report_s = [m.value for m in client.get_metric_history(trial.run_id, "report_seconds")]
        compute_s = statistics.median(m.value for m in hist)
        a, b = common.line_fit(epochs, times)
        path = "in-trial" if spec.resources.num_workers == 1 and spec.resources.in_trial \
            else "TorchTrainer"
        return {"side": f"dlopt.sweep.run ({path})", "workers": spec.resources.num_workers,
                "poll_s": os.environ.get("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"),
                "total_s": t_end - t_call, "sweep_startup_s": t_trial - t_call,
                "startup_s": a, "epoch_s": b, "compute_s": compute_s,
                "tail_s": t_end - (t_trial + times[-1]),
                "report_s": statistics.median(report_s) if report_s else None,
                "report_max_s": max(report_s) if report_s else None,
                "val_accuracy": trial.metrics.get("val_accuracy"), "status": trial.status}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--poll", nargs="+", default=[None],
                    help="RAY_TRAIN_HEALTH_CHECK_INTERVAL_S values to try (default: dlopt's)")
    ap.add_argument("--trainer", action="store_true",
                    help="also run 1 worker with Resources(in_trial=False) (a TorchTrainer)")
    ap.add_argument("--note", default="", help="a line saying what this run compares")
    args = ap.parse_args()

    ref = bare(make_spec(args.epochs, 1))
    rows = [ref]
    print(common.table([ref], ["side", "total_s", "startup_s", "epoch_s", "val_accuracy"]))
    for poll in args.poll:
        runs = [(w, True) for w in args.workers] + ([(1, False)] if args.trainer else [])
        for w, in_trial in runs:
            row = through_dlopt(make_spec(args.epochs, w, in_trial=in_trial), poll)
            row["ratio"] = row["epoch_s"] / ref["epoch_s"]
            row["trial_startup_extra_s"] = row["startup_s"] - ref["startup_s"]
            rows.append(row)
            print(common.table([row], list(row)))
    cols = ["side", "workers", "poll_s", "total_s", "sweep_startup_s", "startup_s", "epoch_s",
            "compute_s", "ratio", "report_s", "report_max_s", "tail_s", "val_accuracy"]
    text = common.table(rows, cols)
    print(text)
    verdicts = []
    for r in rows[1:]:
        w = r["workers"]
        target = TARGETS[f"trial_startup_{min(w, 2)}"]
        verdicts.append(
            f"- {r['side']}, {w} worker(s), poll {r['poll_s']}: per-epoch ratio {r['ratio']:.2f} (target <= "
            f"{TARGETS['ratio']}); trial start-up {r['startup_s']:.2f} s (target <= {target}); "
            f"report cost {r['report_s'] if r['report_s'] is None else round(r['report_s'], 3)} s "
            f"(target <= {TARGETS['report_s']}); sweep start-up (Ray + MLflow, once per sweep) "
            f"{r['sweep_startup_s']:.2f} s")
    md = (f"{args.note}\n\n" if args.note else "") + \
        f"{args.epochs} epochs, digits, MLP 64-512-10, Adam, batch 64, seed 0. " \
        "startup_s: fitted epoch-0 point after trial start (bare: after the call); epoch_s: " \
        "fitted seconds per epoch from driver-side arrival times; report_s: median seconds " \
        "`ray.train.report` blocked; compute_s: median in-loop `epoch_seconds` (train + " \
        "eval, no reporting) - it rises when Ray's own processes take CPU. bare loop: one " \
        "torch thread.\n\n" + text + "\n\n" + "\n".join(verdicts) + "\n"
    common.write("overhead", "Overhead and report cost", {"rows": rows, "args": vars(args)}, md)


if __name__ == "__main__":
    main()
