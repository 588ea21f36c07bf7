"""Does an extended TPE sweep keep learning? A real 20-trial sweep, then `--extend 20`.

`dlopt.run` (real Ray, MLflow on SQLite, PyTorch) runs a 20-trial `bayesian` (Optuna TPE)
sweep of a tiny digits MLP (1 epoch, Adam, lr log-uniform 1e-5..1, one at a time), then the
same spec with `extend=20` (dlopt.driver.extend: the sampler first learns the 20 earlier
trials). From the 40 child runs in MLflow: the best trial's lr (highest val_accuracy), and
per block of 10 trials in run order the median |log10(lr) - log10(best lr)|. The extension's
later trials (31-40) should sample closer to the best than the first ones (1-10).
"""
from __future__ import annotations

import argparse
import math
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common


def spec(trials: int, seed: int):
    from dlopt import Data, Experiment, Model, Optimizer, Resources, Search, Tracking, tune

    return Experiment(
        name="extq", seed=0, epochs=1, data=Data(dataset="digits", batch_size=64),
        model=Model(hidden=[16]), optimizer=Optimizer(name="adam", lr=tune.loguniform(1e-5, 1.0)),
        search=Search(algorithm="bayesian", num_samples=trials, seed=seed,
                      max_concurrent_trials=1),
        resources=Resources(num_workers=1), tracking=Tracking(experiment="extq"))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=20, help="the first sweep; the extension adds as many")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    from mlflow.tracking import MlflowClient

    from dlopt.driver.sweep import run

    work = Path(tempfile.mkdtemp(prefix="extq"))
    uri, storage = f"sqlite:///{work / 'mlflow.db'}", str(work / "rr")
    with common.Timer() as t1:
        first = run(spec(args.trials, args.seed), tracking_uri=uri, storage=storage, progress=False)
    with common.Timer() as t2:
        second = run(spec(args.trials, args.seed), tracking_uri=uri, storage=storage,
                     progress=False, extend=args.trials)
    assert second.parent_run_id == first.parent_run_id
    client = MlflowClient(uri)
    runs = client.search_runs([first.experiment_id],
                              f"tags.`mlflow.parentRunId` = '{first.parent_run_id}'",
                              order_by=["attributes.start_time ASC"])
    trials = [(float(r.data.params["optimizer.lr"]), r.data.metrics.get("val_accuracy", 0.0))
              for r in runs]
    best_lr = max(trials, key=lambda t: t[1])[0]
    dist = [abs(math.log10(lr) - math.log10(best_lr)) for lr, _ in trials]
    rows, block = [], max(1, args.trials // 2)
    for start in range(0, len(dist), block):
        part = dist[start:start + block]
        rows.append({"trials": f"{start + 1}-{start + len(part)}",
                     "part": "first sweep" if start < args.trials else "extension",
                     "median_log10_distance": statistics.median(part),
                     "best_val_accuracy": max(t[1] for t in trials[start:start + block])})
    for r in rows:
        print(f"trials {r['trials']:>6} ({r['part']:<11}) median |log10 lr - log10 best| "
              f"{r['median_log10_distance']:.3f}  best val_accuracy {r['best_val_accuracy']:.4f}")
    payload = {"trials": len(trials), "best_lr": best_lr, "lrs": [t[0] for t in trials],
               "val_accuracy": [t[1] for t in trials], "distances": dist, "rows": rows,
               "first_sweep_s": t1.seconds, "extension_s": t2.seconds,
               "ratio_last_block_to_first": rows[-1]["median_log10_distance"]
               / max(rows[0]["median_log10_distance"], 1e-12)}
    common.write("extend_quality", "An extended TPE sweep: later trials vs first", payload,
                 common.table(rows, ["trials", "part", "median_log10_distance",
                                     "best_val_accuracy"]))
    return 0 if len(trials) == 2 * args.trials else 1


if __name__ == "__main__":
    sys.exit(main())
