"""Plan -> Ray Tune objects: param space, search algorithm, trial scheduler.

Plain plan data comes in; Ray objects go out. Nothing here starts Ray.
"""
from __future__ import annotations

from typing import Any

from dlopt.plan import Plan
from dlopt.spec import Experiment, _points

# ------------------------------------------------------------------ plan -> Ray objects
def is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, (bool, int, float, str))


def to_ray_space(plan: Plan) -> tuple[dict, dict[str, list]]:
    """Tune param space keyed by spec path, plus index tables for non-scalar choices.

    Optuna and HyperOpt accept only scalar categories, so lists/dicts (e.g. a choice of
    compression pipelines) are sampled as an index and mapped back in the trial.
    """
    from ray import tune

    space: dict[str, Any] = {}
    tables: dict[str, list] = {}
    for path, dom in plan.domains.items():
        kind = dom["domain"]
        if kind in ("choice", "grid"):
            values = dom["values"]
            if not all(is_scalar(v) for v in values):
                tables[path] = values
                values = list(range(len(values)))
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
    return space, tables


def search_algorithm(plan: Plan, spec: Experiment):
    seed = spec.search.seed
    if plan.algorithm in ("grid", "random"):
        from ray.tune.search.basic_variant import BasicVariantGenerator

        return BasicVariantGenerator(random_state=seed)
    if plan.algorithm in ("bayesian", "bayesian_gp"):
        import optuna
        from ray.tune.search.optuna import OptunaSearch

        if plan.objectives:
            sampler = optuna.samplers.NSGAIISampler(seed=seed) if plan.algorithm == "bayesian" \
                else optuna.samplers.GPSampler(seed=seed)
            return OptunaSearch(metric=list(plan.objectives), mode=list(plan.objectives.values()),
                                sampler=sampler)
        sampler = optuna.samplers.TPESampler(seed=seed) if plan.algorithm == "bayesian" \
            else optuna.samplers.GPSampler(seed=seed)
        return OptunaSearch(sampler=sampler)
    if plan.algorithm == "hyperopt":
        from ray.tune.search.hyperopt import HyperOptSearch

        return HyperOptSearch(random_state_seed=seed)
    raise ValueError(plan.algorithm)


def trial_scheduler(plan: Plan, spec: Experiment):
    from ray.tune import schedulers

    s = spec.search
    max_t = int(max(_points(spec.epochs)))  # the longest a trial can run
    if plan.scheduler == "fifo":
        return schedulers.FIFOScheduler()
    if plan.scheduler == "asha":
        return schedulers.ASHAScheduler(time_attr="epoch", max_t=max_t, grace_period=s.grace_period,
                                        reduction_factor=s.reduction_factor)
    if plan.scheduler == "hyperband":
        return schedulers.HyperBandScheduler(time_attr="epoch", max_t=max_t,
                                             reduction_factor=s.reduction_factor)
    if plan.scheduler == "median":
        return schedulers.MedianStoppingRule(time_attr="epoch", grace_period=s.grace_period)
    if plan.scheduler == "pbt":
        mutations, bounds = pbt_mutations(plan.spec_json["search"].get("pbt_mutations") or {})
        # Synchronous PBT: every trial pauses at the same epoch, so the checkpoint a trial
        # clones ends at the epoch it left off and its per-epoch history has no gap or repeat.
        return schedulers.PopulationBasedTraining(
            time_attr="epoch", perturbation_interval=s.perturbation_interval,
            hyperparam_mutations=mutations, custom_explore_fn=clip_to(bounds), synch=True)
    raise ValueError(plan.scheduler)


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
