"""Plan -> Ray Tune objects: param space, search algorithm, trial scheduler.

The plan is the only input (its search settings, seed and epochs, filled in by
dlopt.spec.plan.make_plan); nothing here re-reads the spec. Ray objects go out; nothing
here starts Ray.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

from dlopt.runtime.steer import WarmTrial, steered, sweep_stopper
from dlopt.spec import FINAL_METRICS
from dlopt.spec.plan import Plan
from dlopt.spec.report import EPOCH, FINAL

__all__ = ["WarmTrial", "search_algorithm", "sweep_stopper", "to_ray_space", "trial_scheduler"]


# ------------------------------------------------------------------ plan -> Ray objects
def to_ray_space(plan: Plan) -> dict[str, Any]:
    """Tune param space keyed by spec path.

    Optuna and HyperOpt accept only scalar categories, so lists/dicts (e.g. a choice of
    compression pipelines) are sampled as an index into `plan.tables` and mapped back by
    `plan.trial_spec`.
    """
    from ray import tune

    space: dict[str, Any] = {}
    tables = plan.tables
    for path, dom in plan.domains.items():
        kind = dom["domain"]
        if kind in ("choice", "grid"):
            values = list(range(len(dom["values"]))) if path in tables else dom["values"]
            if kind == "grid" or plan.algorithm == "grid":
                space[path] = tune.grid_search(values)
            else:
                space[path] = tune.choice(values)
        elif kind == "uniform":
            space[path] = tune.uniform(dom["low"], dom["high"])
        elif kind == "loguniform":
            space[path] = tune.loguniform(dom["low"], dom["high"])
        elif kind == "randint":
            space[path] = tune.randint(dom["low"], dom["high"])
    return space


def reported_at_end(plan: Plan) -> bool:
    """Whether the searched metric(s) include one a trial reports only in its final report."""
    names = list(plan.objectives) if plan.objectives else [plan.metric]
    return any(n in FINAL_METRICS for n in names)


def tune_config_metric(plan: Plan) -> tuple[Optional[str], Optional[str]]:
    """metric/mode for `tune.TuneConfig`: None where the searcher carries its own metric(s)
    (multi-objective, or a metric only the final report has; see `_EndOfTrialMetrics`)."""
    if plan.objectives or reported_at_end(plan):
        return None, None
    return plan.metric, plan.mode


def search_algorithm(plan: Plan, warm: Sequence[WarmTrial] = ()):
    """The plan's search algorithm; `warm`: an earlier sweep's trials (plan.warm_start,
    fetched on the driver by dlopt.driver.warmstart), told to the sampler before it suggests."""
    seed = plan.seed
    points = [dict(p) for p in plan.start_points] or None
    if plan.algorithm in ("grid", "random"):
        from ray.tune.search.basic_variant import BasicVariantGenerator

        # Tune ignores TuneConfig.max_concurrent_trials for a generator passed in (it only
        # wraps Searchers in a ConcurrencyLimiter), so the limit goes to the generator itself.
        return BasicVariantGenerator(random_state=seed, max_concurrent=plan.max_concurrent_trials,
                                     points_to_evaluate=points)
    # A model-based searcher gets its metric(s) here when Tune is not told them (see above).
    if plan.objectives:
        metric, mode = list(plan.objectives), list(plan.objectives.values())
    else:
        metric, mode = (plan.metric, plan.mode) if reported_at_end(plan) else (None, None)
    if plan.algorithm in ("bayesian", "bayesian_gp"):
        from ray.tune.search.optuna import OptunaSearch

        searcher = OptunaSearch(metric=metric, mode=mode, sampler=optuna_sampler(plan),
                                points_to_evaluate=points)
    elif plan.algorithm == "hyperopt":
        from ray.tune.search.hyperopt import HyperOptSearch

        searcher = HyperOptSearch(metric=metric, mode=mode, random_state_seed=seed,
                                  n_initial_points=plan.setting("warmup_trials"),
                                  points_to_evaluate=points)
    else:
        raise ValueError(plan.algorithm)
    # diverged trials reach the sampler as the worst value seen, the earlier sweep's trials
    # before the first suggestion (dlopt.runtime.steer)
    searcher = steered(searcher, dict(plan.objectives or {plan.metric: plan.mode}), warm)
    if metric is None:
        return searcher
    from ray.tune.search import ConcurrencyLimiter

    if plan.max_concurrent_trials:
        searcher = ConcurrencyLimiter(searcher, max_concurrent=plan.max_concurrent_trials)
    return _EndOfTrialMetrics(searcher)


def optuna_sampler(plan: Plan):
    """The Optuna sampler of a `bayesian`/`bayesian_gp` search, with its warm-up (random
    trials before the first modelled one) or NSGA-II population from the plan."""
    import optuna

    if plan.algorithm == "bayesian_gp":
        return optuna.samplers.GPSampler(seed=plan.seed,
                                         n_startup_trials=plan.setting("warmup_trials"))
    if plan.objectives:  # Optuna's multi-objective evolutionary sampler
        return optuna.samplers.NSGAIISampler(seed=plan.seed,
                                             population_size=plan.setting("population_size"))
    return optuna.samplers.TPESampler(seed=plan.seed,
                                      n_startup_trials=plan.setting("warmup_trials"))


def _end_of_trial_metrics_cls():
    from ray.tune.search import SearchGenerator

    class EndOfTrialMetrics(SearchGenerator):
        """The searcher learns from each trial's last result (Optuna's multi-objective `tell`
        happens at completion), but Tune's strict check wants every per-epoch result to carry
        the search metric; `model_bytes` or `compressed_val_accuracy` exist only in the final
        report. Hiding the metric from that check (and only from it) keeps the check on for
        everything else, unlike TUNE_DISABLE_STRICT_METRIC_CHECKING."""

        @property
        def metric(self):
            return None

    return EndOfTrialMetrics


def _EndOfTrialMetrics(searcher):
    return _end_of_trial_metrics_cls()(searcher)


def trial_scheduler(plan: Plan):
    from ray.tune import schedulers

    max_t = plan.max_epochs  # the longest a trial can run
    if plan.scheduler == "fifo":
        return schedulers.FIFOScheduler()
    if plan.scheduler == "asha":
        return schedulers.ASHAScheduler(time_attr=EPOCH, max_t=max_t,
                                        grace_period=plan.setting("grace_period"),
                                        reduction_factor=plan.setting("reduction_factor"))
    if plan.scheduler == "hyperband":  # takes no grace period (spec.checks refuses one)
        return schedulers.HyperBandScheduler(time_attr=EPOCH, max_t=max_t,
                                             reduction_factor=plan.setting("reduction_factor"))
    if plan.scheduler == "median":
        return schedulers.MedianStoppingRule(time_attr=EPOCH,
                                             grace_period=plan.setting("grace_period"))
    if plan.scheduler == "pbt":
        mutations, bounds = pbt_mutations(plan.pbt_mutations or {})
        if plan.seed is not None:
            seed_pbt(plan.seed)
        # Synchronous PBT: every trial pauses at the same epoch, so the checkpoint a trial
        # clones ends at the epoch it left off and its per-epoch history has no gap or repeat.
        return _make_pbt(max_t, time_attr=EPOCH,
                         perturbation_interval=plan.setting("perturbation_interval"),
                         hyperparam_mutations=mutations, custom_explore_fn=clip_to(bounds),
                         synch=True)
    raise ValueError(plan.scheduler)


def seed_pbt(seed: int) -> None:
    """Ray's PBT takes no seed: it draws which trial to clone and how to perturb from Python's
    `random` and resamples domains with numpy's global generator (ray.tune.schedulers.pbt).
    Seeding both (only for a PBT sweep with `search.seed`) makes its choices repeat; with
    synchronous PBT each decision sees every trial's result at the same epoch."""
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed % 2**32)


def pbt_mutations(spec_mutations: dict) -> tuple[dict, dict[str, tuple[float, float]]]:
    """Spec `pbt_mutations` (JSON) -> Ray's `hyperparam_mutations`, plus each domain's bounds."""
    from ray import tune

    mutations: dict = {}
    bounds: dict[str, tuple[float, float]] = {}
    for path, dom in spec_mutations.items():
        if isinstance(dom, dict) and dom.get("domain") in ("uniform", "loguniform"):
            make = tune.loguniform if dom["domain"] == "loguniform" else tune.uniform
            mutations[path] = make(dom["low"], dom["high"])
            bounds[path] = (dom["low"], dom["high"])
        elif isinstance(dom, dict):  # choice / grid: PBT steps along the ordered values
            mutations[path] = sorted(dom["values"])
        else:
            mutations[path] = sorted(dom)
    return mutations, bounds


def clip_to(bounds: dict[str, tuple[float, float]]):
    """PBT perturbs a continuous value by x0.8 / x1.2 without looking at its domain; a
    momentum of 0.9 x 1.2 is no longer a valid spec. Keep perturbed values inside the
    domain the spec gave (Ray has no option for this, hence the explore hook)."""

    def explore(config: dict) -> dict:
        for path, (low, high) in bounds.items():
            if path in config:
                config[path] = min(max(config[path], low), high)
        return config

    return explore


def _make_pbt(max_t: int, **kwargs):
    """PBT that leaves a trial's last epoch alone.

    A trial whose last epoch falls on a perturbation step would otherwise be paused,
    cloned and restarted only to run zero epochs; the final (compression) report repeats
    the last epoch too. Results at or past the trial's own `epochs` just continue.
    """
    from ray.tune.schedulers import PopulationBasedTraining, TrialScheduler

    class DloptPBT(PopulationBasedTraining):
        def on_trial_result(self, tune_controller, trial, result):
            last = trial.config.get("epochs", max_t)
            if result.get(FINAL) or result.get(EPOCH, 0) >= last:
                return TrialScheduler.CONTINUE
            return super().on_trial_result(tune_controller, trial, result)

    return DloptPBT(**kwargs)
