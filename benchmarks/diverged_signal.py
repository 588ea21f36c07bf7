"""What a model-based sampler learns from diverged trials: nan, a raw huge loss, or dlopt's
steered value (the worst finite value seen; dlopt.runtime.steer).

The searcher is the one dlopt builds (`dlopt.runtime.search.search_algorithm`, Optuna TPE or
GP with the spec's warm-up), driven one trial at a time through Ray's Searcher API as Tune
drives it at max_concurrent_trials=1; no Tune run, no MLflow (as benchmarks/search_quality.py).

Objective (minimized, SGD-like): val_loss = (log10(lr) + 1.6)^2 + (momentum - 0.5)^2 over
lr log-uniform 1e-5..1 and momentum 0..0.99; a trial diverges when the effective step
lr / (1 - momentum) exceeds 0.1, which cuts off a quarter of the space right beside the
optimum (lr 0.025, momentum 0.5). A diverged trial reports, by signal:
- `nan`: val_loss nan (what Ray's OptunaSearch passed on before: Optuna marks it FAIL);
- `raw`: val_loss 1e15 (a blown-up but finite loss, as the issue saw: 5e15);
- `steered`: val_loss nan with `diverged` set, through dlopt's wrapper.
Reported per algorithm, signal and budget (10, 30): median over seeds of the best value
found and of the number of diverged trials.
"""
from __future__ import annotations

import argparse
import logging
import math
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common

SIGNALS = ("nan", "raw", "steered")


def objective(lr: float, momentum: float) -> tuple[float, bool]:
    if lr / (1 - momentum) > 0.1:
        return float("nan"), True
    return (math.log10(lr) + 1.6) ** 2 + (momentum - 0.5) ** 2, False


def search_once(algorithm: str, signal: str, budget: int, seed: int) -> tuple[float, int]:
    """(best value found, diverged trials) of one search."""
    from dlopt import Experiment, Optimizer, Search, tune
    from dlopt.runtime.search import search_algorithm, to_ray_space
    from dlopt.spec.plan import make_plan

    spec = Experiment(name="dv", optimizer=Optimizer(
        name="sgd", lr=tune.loguniform(1e-5, 1.0), momentum=tune.uniform(0.0, 0.99)),
        search=Search(algorithm=algorithm, num_samples=budget, seed=seed, metric="val_loss",
                      mode="min"))
    plan = make_plan(spec, cluster_cpus=1)
    searcher = search_algorithm(plan)  # dlopt's wrapper around the Optuna searcher
    if signal != "steered":
        searcher = searcher.searcher  # the bare OptunaSearch, as before the wrapper
    searcher.set_search_properties("val_loss", "min", to_ray_space(plan))
    best, diverged = math.inf, 0
    for i in range(budget):
        config = searcher.suggest(f"t{i}")
        value, blew_up = objective(config["optimizer.lr"], config["optimizer.momentum"])
        result = {"val_loss": value}
        if blew_up:
            diverged += 1
            result = {"val_loss": 1e15} if signal == "raw" else {"val_loss": value, "diverged": 1}
        else:
            best = min(best, value)
        searcher.on_trial_complete(f"t{i}", result)
    return best, diverged


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--budgets", type=int, nargs="+", default=[10, 30])
    ap.add_argument("--algorithms", nargs="+", default=["bayesian", "bayesian_gp"])
    args = ap.parse_args(argv)
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    logging.getLogger("ray.tune.search.optuna.optuna_search").setLevel(logging.CRITICAL)
    rows = []
    for algorithm in args.algorithms:
        for budget in args.budgets:
            for signal in SIGNALS:
                runs = [search_once(algorithm, signal, budget, s) for s in range(args.seeds)]
                rows.append({"algorithm": algorithm, "budget": budget, "signal": signal,
                             "median_best": statistics.median(r[0] for r in runs),
                             "median_diverged": statistics.median(r[1] for r in runs),
                             "best": [r[0] for r in runs], "diverged": [r[1] for r in runs]})
                print(f"{algorithm:<12} {budget:>3} trials  {signal:<8} median best "
                      f"{rows[-1]['median_best']:.4f}  median diverged "
                      f"{rows[-1]['median_diverged']:g}", flush=True)
    columns = ["algorithm", "budget", "signal", "median_best", "median_diverged"]
    common.write("diverged_signal", "What the sampler learns from diverged trials",
                 {"seeds": args.seeds, "rows": rows}, common.table(rows, columns))
    return 0


if __name__ == "__main__":
    sys.exit(main())
