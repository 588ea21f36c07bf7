"""ASHA versus FIFO random search on digits: wall time to reach a target val_accuracy.

Same spec, same budget, same sampled configurations (BasicVariantGenerator with one seed
samples the same sequence whatever the scheduler): only `Search.scheduler` differs. Time to
target = first moment the driver logged a val_accuracy >= target (MLflow metric timestamp,
i.e. arrival on the driver) minus the start of the sweep's parent run. Runs alternate
(fifo, asha, fifo, asha, ...) so load drift on a shared machine hits both sides alike.

    python benchmarks/asha_vs_fifo.py --samples 12 --epochs 10 --target 0.96 --repeats 2
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
from common import table, write


def spec(scheduler: str, samples: int, epochs: int, seed: int):
    from dlopt import Data, Experiment, Model, Optimizer, Resources, Search, Tracking, tune

    return Experiment(
        name=f"bench-{scheduler}", seed=0, epochs=epochs,
        data=Data(dataset="digits", batch_size=64),
        model=Model(hidden=[tune.choice([32, 64, 128])], init="kaiming_uniform"),
        optimizer=Optimizer(name="adam", lr=tune.loguniform(1e-4, 3e-2)),
        search=Search(algorithm="random", num_samples=samples, seed=seed, scheduler=scheduler,
                      max_concurrent_trials=2,  # FIFO takes no grace period / reduction factor
                      **(dict(grace_period=1, reduction_factor=3) if scheduler == "asha" else {})),
        resources=Resources(num_workers=1),
        tracking=Tracking(experiment=f"bench-{scheduler}"),
    )


def one_run(scheduler: str, args) -> dict:
    from mlflow.tracking import MlflowClient

    from dlopt.driver.sweep import run

    with tempfile.TemporaryDirectory(prefix="asha-bench-") as work:
        uri = f"sqlite:///{work}/mlflow.db"
        load = os.getloadavg()[0]
        t0 = time.time()
        result = run(spec(scheduler, args.samples, args.epochs, args.seed), tracking_uri=uri,
                     storage=f"{work}/ray_results", progress=False)
        client = MlflowClient(uri)
        start_ms = client.get_run(result.parent_run_id).info.start_time
        hits, epochs, stopped, best = [], 0, 0, 0.0
        configs = []
        for t in result.trials:
            hist = client.get_metric_history(t.run_id, "val_accuracy")
            epochs += len(hist)
            stopped += len(hist) < args.epochs
            best = max([best] + [m.value for m in hist])
            hits += [m.timestamp for m in hist if m.value >= args.target]
            configs.append((round(float(t.config["optimizer.lr"]), 6), t.config["model.hidden.0"]))
        return {"scheduler": scheduler, "trials": len(result.trials), "epochs_run": epochs,
                "stopped_early": stopped, "best_val_accuracy": best,
                "time_to_target_s": (min(hits) - start_ms) / 1000 if hits else None,
                "sweep_wall_s": result.wall_seconds, "driver_wall_s": time.time() - t0,
                "load_1min_at_start": load, "configs": sorted(configs)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--samples", type=int, default=12)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--target", type=float, default=0.96)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--note", default="")
    args = p.parse_args()

    rows = []
    for i in range(args.repeats):
        for scheduler in ("fifo", "asha"):
            row = one_run(scheduler, args)
            row["repeat"] = i + 1
            rows.append(row)
            print({k: v for k, v in row.items() if k != "configs"}, flush=True)
    same = len({tuple(map(tuple, r["configs"])) for r in rows}) == 1

    def med(s, key):
        vals = [r[key] for r in rows if r["scheduler"] == s and r[key] is not None]
        return statistics.median(vals) if vals else None

    summary = [{"scheduler": s, "runs": sum(r["scheduler"] == s for r in rows),
                "reached_target": sum(r["scheduler"] == s and r["time_to_target_s"] is not None
                                      for r in rows),
                **{f"median_{k}": med(s, k) for k in ("time_to_target_s", "sweep_wall_s",
                                                       "epochs_run", "best_val_accuracy")}}
               for s in ("fifo", "asha")]
    f, a = summary
    speedup = (f["median_time_to_target_s"] / a["median_time_to_target_s"]
               if f["median_time_to_target_s"] and a["median_time_to_target_s"] else None)
    md = (f"{args.samples} trials of random search (seed {args.seed}: hidden in {{32,64,128}}, Adam lr "
          f"loguniform 1e-4..3e-2), {args.epochs} epochs of digits, 1 worker per trial (in-trial), "
          f"max_concurrent_trials=2; ASHA grace 1, reduction factor 3, on val_accuracy. Target "
          f"val_accuracy >= {args.target}. Same sampled configurations on both sides: {same}.\n\n"
          + table(rows, ["repeat", "scheduler", "trials", "epochs_run", "stopped_early",
                         "best_val_accuracy", "time_to_target_s", "sweep_wall_s",
                         "load_1min_at_start"])
          + "\n\n" + table(summary, list(summary[0]))
          + (f"\n\n- ASHA reached the target {speedup:.2f}x faster than FIFO (median)."
             if speedup else "\n\n- one side never reached the target; see the table.")
          + (f"\n- {args.note}" if args.note else "") + "\n")
    print(md)
    write("asha_vs_fifo", "ASHA vs FIFO: time to target val_accuracy", {"args": vars(args),
          "rows": rows, "summary": summary, "speedup": speedup, "same_configs": same}, md)


if __name__ == "__main__":
    main()
