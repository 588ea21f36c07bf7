"""Sweep efficiency: a 16-trial sweep at concurrency 2 against the same 16 bare loops.

efficiency = (sum of bare-loop seconds of the 16 sampled configurations / 2) / sweep wall seconds

The sweep runs first (`dlopt.driver.sweep.run`, local Ray in this process, SQLite MLflow in a temp
dir); then each trial's resolved spec is trained again by `dlopt.train.loop.fit` in this
process with one torch thread (a trial of the sweep has one CPU), timed from the call to its
return (data load included, as in a trial).

    python benchmarks/sweep_efficiency.py [--trials 16] [--epochs 10] [--hidden 64 128 256] [--trainer]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common

TARGET = 0.8


def make_spec(trials: int, epochs: int, in_trial: bool, hidden=(64, 128, 256)):
    from dlopt import Data, Experiment, Model, Optimizer, Resources, Search, Tracking, tune

    return Experiment(
        name="bench-sweep", seed=0, epochs=epochs,
        data=Data(dataset="digits", batch_size=64),
        model=Model(arch="mlp", hidden=tune.choice([[h] for h in hidden])),
        optimizer=Optimizer(name="adam", lr=tune.loguniform(1e-4, 3e-2)),
        search=Search(algorithm="random", num_samples=trials, max_concurrent_trials=2, seed=0),
        resources=Resources(num_workers=1, in_trial=in_trial),
        tracking=Tracking(experiment="bench"),
    )


def bare_seconds(spec) -> float:
    from dlopt.train.loop import fit

    t0 = time.perf_counter()
    fit(spec, lambda metrics, write=None: None)
    return time.perf_counter() - t0


def _bare_from_json(spec_json: dict) -> float:
    import torch

    from dlopt.spec import Experiment

    torch.set_num_threads(1)
    return bare_seconds(Experiment.model_validate(spec_json))


def bare_two_at_once(specs) -> float:
    """Wall seconds of the same bare loops in 2 plain processes at once (no Ray): what this
    machine really gives two concurrent trials, beside the ideal of a perfect 2x."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    t0 = time.perf_counter()
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        list(pool.map(_bare_from_json, [s.model_dump(mode="json") for s in specs]))
    return time.perf_counter() - t0


def _parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=16)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--hidden", type=int, nargs="+", default=[64, 128, 256],
                    help="hidden widths the search chooses from (wider: longer trials)")
    ap.add_argument("--trainer", action="store_true",
                    help="Resources(in_trial=False): a TorchTrainer per trial (the old path)")
    return ap.parse_args()


def _trial_times(uri: str, result) -> dict[str, list[float]]:
    """Per trial, from the driver's MLflow records: start, end, start -> first epoch, length."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    times: dict[str, list[float]] = {"start": [], "end": [], "first": [], "length": []}
    for t in result.trials:
        info = client.get_run(t.run_id).info
        times["start"].append(info.start_time / 1000)
        times["end"].append(info.end_time / 1000)
        hist = client.get_metric_history(t.run_id, "epoch_seconds")
        times["first"].append((min(m.timestamp for m in hist) - info.start_time) / 1000)
        times["length"].append((info.end_time - info.start_time) / 1000)
    return times


def _bare_runs(result) -> tuple[list[float], list]:
    """Each trial's resolved spec run through `fit` alone, one torch thread: seconds, specs."""
    import torch

    torch.set_num_threads(1)
    specs = [result.plan.trial_spec(t.config) for t in result.trials]
    return [bare_seconds(s) for s in specs], specs


def _markdown(args: argparse.Namespace, row: dict, text: str) -> str:
    return (f"{args.trials} trials (random search, seed 0: hidden in {set(args.hidden)}, Adam lr "
            f"loguniform 1e-4..3e-2), {args.epochs} epochs of digits, 1 worker per trial, "
            "max_concurrent_trials=2. bare: the same 16 resolved specs through `fit` one after "
            "another with one torch thread; ideal = bare_sum / 2. overhead_per_trial_s = "
            "(sweep_wall - ideal) * 2 / trials; trial_first_epoch_s / trial_length_s: "
            "mean seconds from a trial's start (MLflow child run) to its first epoch / its end; "
            "before_first_trial_s: call -> first trial start (Ray start, MLflow parent run); "
            "after_last_trial_s: last trial end -> return (selection, registration, test "
            "report, review artifacts). bare_2_procs_wall_s: the same bare loops in 2 plain "
            "processes at once (no Ray; what the machine gives 2 concurrent loops), "
            "efficiency_vs_2_procs = that / sweep_wall.\n\n" + text +
            f"\n\n- sweep efficiency {row['efficiency']:.2f} (target >= {TARGET}); against 2 "
            f"bare processes at once {row['efficiency_vs_2_procs']:.2f}\n")


def main() -> None:
    args = _parse_args()
    from dlopt.driver.sweep import run

    spec = make_spec(args.trials, args.epochs, in_trial=not args.trainer, hidden=args.hidden)
    with tempfile.TemporaryDirectory(prefix="dlopt-bench-") as work:
        uri = f"sqlite:///{work}/mlflow.db"
        t0, t0_unix = time.perf_counter(), time.time()
        result = run(spec, tracking_uri=uri, storage=f"{work}/ray_results", progress=False)
        sweep_s = time.perf_counter() - t0
        times = _trial_times(uri, result)
    bare, specs = _bare_runs(result)
    ideal = sum(bare) / 2
    two_at_once = bare_two_at_once(specs)
    row = {"path": "TorchTrainer per trial" if args.trainer else "in-trial (default)",
           "trials": len(result.trials), "ok": sum(t.status == "ok" for t in result.trials),
           "epochs": args.epochs,
           "sweep_wall_s": sweep_s, "bare_sum_s": sum(bare), "bare_mean_s": sum(bare) / len(bare),
           "ideal_s": ideal, "efficiency": ideal / sweep_s, "bare_2_procs_wall_s": two_at_once,
           "efficiency_vs_2_procs": two_at_once / sweep_s,
           "overhead_per_trial_s": (sweep_s - ideal) * 2 / len(bare),
           "trial_first_epoch_s": sum(times["first"]) / len(bare),
           "trial_length_s": sum(times["length"]) / len(bare),
           "before_first_trial_s": min(times["start"]) - t0_unix,
           "after_last_trial_s": t0_unix + sweep_s - max(times["end"])}
    text = common.table([row], list(row))
    print(text)
    common.write("sweep_efficiency", "Sweep efficiency", {"row": row, "bare_s": bare,
                                                           "args": vars(args)},
                 _markdown(args, row, text))


if __name__ == "__main__":
    main()
