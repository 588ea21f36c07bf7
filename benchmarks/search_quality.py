"""Search quality: TPE, GP and HyperOpt against random search at equal budgets.

Each search is the object dlopt builds for a spec (`dlopt.runtime.search.search_algorithm`:
the Optuna/HyperOpt searcher with the spec's warm-up, or Tune's BasicVariantGenerator for
random), driven here one trial at a time through Ray's own Searcher API (suggest ->
evaluate -> on_trial_complete), as Tune drives it at max_concurrent_trials=1. No Tune run
and no MLflow: what is compared is where each algorithm puts its trials, not Ray's
scheduling (benchmarks/sweep_efficiency.py and overhead.py measure that).

Two objectives, both minimized, each over --seeds search seeds:
- `hartmann3`: the Hartmann 3-D function (known minimum -3.86278) on three spec fields
  (optimizer.lr log-uniform 1e-5..1, optimizer.momentum 0..0.99, model.dropout 0..0.9,
  each mapped to [0, 1]); the figure is the regret, best value found minus the minimum.
- `digits`: real dlopt training (`dlopt.train.loop.fit`, the loop every trial runs): an
  MLP [32] on digits, 3 epochs of SGD, searching optimizer.lr (log-uniform 1e-4..1) and
  optimizer.momentum (0..0.99); the figure is the best final val_loss found. Training is
  seeded (spec.seed=0), so a configuration always scores the same and only the search
  differs.

Reported: median and interquartile range of the best value over the seeds, per algorithm
and budget, and how many seeds beat random's median.
"""
from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common

ALGORITHMS = ("random", "bayesian", "bayesian_gp", "hyperopt")
NAMES = {"random": "random", "bayesian": "TPE (Optuna)", "bayesian_gp": "GP (Optuna)",
         "hyperopt": "TPE (HyperOpt)"}

# Hartmann 3-D (Dixon & Szego 1978): global minimum -3.86278 at (0.114614, 0.555649, 0.852547).
H_A = [[3.0, 10, 30], [0.1, 10, 35], [3.0, 10, 30], [0.1, 10, 35]]
H_P = [[0.3689, 0.1170, 0.2673], [0.4699, 0.4387, 0.7470], [0.1091, 0.8732, 0.5547],
       [0.0381, 0.5743, 0.8828]]
H_C = [1.0, 1.2, 3.0, 3.2]
H_MIN = -3.86278


def hartmann3(u: list[float]) -> float:
    return -sum(c * math.exp(-sum(a * (x - p) ** 2 for a, x, p in zip(A, u, P)))
                for c, A, P in zip(H_C, H_A, H_P))


def spec_for(objective: str, algorithm: str, budget: int, seed: int):
    from dlopt import Data, Experiment, Model, Optimizer, Search, Tracking, tune

    search = Search(algorithm=algorithm, num_samples=budget, seed=seed, metric="val_loss",
                    mode="min")
    if objective == "hartmann3":
        return Experiment(name="sq", epochs=3, search=search,
                          model=Model(hidden=[32], dropout=tune.uniform(0.0, 0.9)),
                          optimizer=Optimizer(name="sgd", lr=tune.loguniform(1e-5, 1.0),
                                              momentum=tune.uniform(0.0, 0.99)))
    return Experiment(name="sq", epochs=3, seed=0, search=search,
                      data=Data(dataset="digits", batch_size=64),
                      model=Model(hidden=[32], init="kaiming_uniform"),
                      optimizer=Optimizer(name="sgd", lr=tune.loguniform(1e-4, 1.0),
                                          momentum=tune.uniform(0.0, 0.99)),
                      tracking=Tracking(report_every=1))


def score(objective: str, spec) -> float:
    if objective == "hartmann3":
        u = [(math.log10(spec.optimizer.lr) + 5) / 5, spec.optimizer.momentum / 0.99,
             spec.model.dropout / 0.9]
        return hartmann3(u) - H_MIN  # regret: 0 at the optimum
    from dlopt.train.loop import fit

    reports: list[dict] = []
    fit(spec, lambda metrics, write=None: reports.append(metrics))
    loss = [r for r in reports if not r.get("final")][-1]["val_loss"]
    return loss if math.isfinite(loss) else 10.0  # a diverged run scores as very bad


def search_once(objective: str, algorithm: str, budget: int, seed: int) -> list[float]:
    """The values of `budget` trials, in the order the search proposed them."""
    from dlopt.runtime.search import search_algorithm, to_ray_space
    from dlopt.spec.plan import make_plan

    spec = spec_for(objective, algorithm, budget, seed)
    plan = make_plan(spec, cluster_cpus=1)
    space = to_ray_space(plan)
    alg = search_algorithm(plan)
    values = []
    if algorithm == "random":  # Tune's generator, exactly as a sweep gets it
        from ray.tune import register_trainable

        register_trainable("sq_noop", lambda config: None)  # registry only, no cluster
        alg.add_configurations({"sq": {"run": "sq_noop", "config": space, "num_samples": budget}})
        while (trial := alg.next_trial()) is not None:
            values.append(score(objective, plan.trial_spec(trial.config)))
            alg.on_trial_complete(trial.trial_id)  # frees its concurrency slot, as Tune does
        return values
    searcher = alg
    while hasattr(searcher, "searcher"):  # wrappers (none for a per-epoch metric)
        searcher = searcher.searcher
    searcher.set_search_properties("val_loss", "min", space)
    for i in range(budget):
        config = searcher.suggest(f"t{i}")
        value = score(objective, plan.trial_spec(config))
        searcher.on_trial_complete(f"t{i}", {"val_loss": value, **config})
        values.append(value)
    return values


def quartiles(xs: list[float]) -> tuple[float, float, float]:
    if len(xs) < 2:
        return xs[0], xs[0], xs[0]
    q = statistics.quantiles(xs, n=4, method="inclusive")
    return q[0], statistics.median(xs), q[2]


def _parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--budgets", type=int, nargs="+", default=[10, 30])
    p.add_argument("--seeds", type=int, default=10, help="search seeds for hartmann3")
    p.add_argument("--train-seeds", type=int, default=10, help="search seeds for digits")
    p.add_argument("--objectives", nargs="+", default=["hartmann3", "digits"])
    return p.parse_args()


def _quiet_and_warm(objectives: list[str]) -> None:
    """One torch thread, the searchers' logs quiet, the dataset loaded before any timing."""
    import logging
    import warnings

    import optuna
    import torch

    torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.getLogger("hyperopt").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore")  # Optuna's experimental-feature warnings (GPSampler)
    if "digits" in objectives:  # load the dataset once before timing anything
        score("digits", spec_for("digits", "random", 1, 0).model_copy(
            update={"optimizer": spec_for("digits", "random", 1, 0).optimizer.model_copy(
                update={"lr": 0.1, "momentum": 0.9})}))


def _compare(objective: str, budget: int, seeds: int, runs: list[dict]) -> list[dict]:
    """Every algorithm's best values over the seeds at one budget, against random's median."""
    best: dict[str, list[float]] = {}
    rows = []
    for algorithm in ALGORITHMS:
        t0 = time.perf_counter()
        best[algorithm] = []
        for seed in range(seeds):
            values = search_once(objective, algorithm, budget, seed)
            best[algorithm].append(min(values))
            runs.append({"objective": objective, "budget": budget, "algorithm": algorithm,
                         "seed": seed, "values": values, "best": min(values)})
        seconds = time.perf_counter() - t0
        q1, med, q3 = quartiles(best[algorithm])
        rows.append({"objective": objective, "budget": budget,
                     "algorithm": NAMES[algorithm], "median best": med, "q1": q1,
                     "q3": q3, "seeds": seeds, "s": seconds})
        print(rows[-1], flush=True)
    random_median = statistics.median(best["random"])
    for row, alg in zip(rows, ALGORITHMS):
        row["vs random median"] = row["median best"] / random_median if random_median else None
        row["seeds beating random median"] = sum(b < random_median for b in best[alg])
    return rows


def main() -> None:
    args = _parse_args()
    _quiet_and_warm(args.objectives)
    runs, rows = [], []
    for objective in args.objectives:
        seeds = args.seeds if objective == "hartmann3" else args.train_seeds
        for budget in args.budgets:
            rows += _compare(objective, budget, seeds, runs)

    columns = ["objective", "budget", "algorithm", "median best", "q1", "q3",
               "vs random median", "seeds beating random median", "seeds", "s"]
    print(common.table(rows, columns))
    target = [r for r in rows if r["budget"] == 30 and r["algorithm"] != "random"]
    met = {f"{r['objective']} {r['algorithm']}": r["vs random median"] < 1 for r in target}
    markdown = (
        "Best value found (lower is better: hartmann3 = regret to the known minimum, digits = "
        "val_loss after 3 epochs) over the search seeds: median and interquartile range "
        "(q1, q3). Each search is the searcher dlopt builds (`dlopt.runtime.search`), with "
        "its default warm-up (`Search.warmup_trials`: 2 at 10 trials, 7 at 30), driven one "
        "trial at a time.\n\n" + common.table(rows, columns) + "\n\n"
        "Target (model-based median best below random's at 30 trials): "
        + ", ".join(f"{k}: {'met' if v else 'not met'}" for k, v in met.items()) + ".\n")
    common.write("search_quality", "Search quality: model-based samplers vs random",
                 {"rows": rows, "runs": runs, "target_met": met, "args": vars(args)}, markdown)


if __name__ == "__main__":
    main()
