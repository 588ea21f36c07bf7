"""Search: grid expansion, domain sampling within field bounds, refused combinations,
the Ray objects a plan turns into, and PBT's hyperparameter override on resume.

No Ray cluster starts here: Ray Tune's domains, variant generator, searchers and
schedulers are plain objects until a Tuner runs them.
"""
import random

import pytest
import torch
from pydantic import ValidationError

from dlopt import (Data, Experiment, Model, Optimizer, Prune, Quantize, Regularization, Search,
                   tune)
from dlopt.spec.load import error_lines
from dlopt.spec.plan import make_plan


def make(**kw):
    return Experiment(name="t", **kw)


def errors_of(**kw):
    with pytest.raises(ValidationError) as info:
        make(**kw)
    return error_lines(info.value)


# ------------------------------------------------------------------ grid expansion
def ray_grid_count(plan) -> int:
    """How many configurations Ray's own variant generator expands the space into."""
    from ray.tune.search.variant_generator import generate_variants

    from dlopt.runtime.search import to_ray_space

    space = to_ray_space(plan)
    return sum(1 for _ in generate_variants(space)) * plan.num_samples


@pytest.mark.parametrize("kw, expected", [
    (dict(optimizer=Optimizer(lr=tune.grid([0.1, 0.01, 0.001]))), 3),
    (dict(optimizer=Optimizer(lr=tune.grid([0.1, 0.01]), name=tune.grid(["sgd", "adam"])),
          data=Data(batch_size=tune.grid([16, 32, 64]))), 12),
    # algorithm="grid" enumerates tune.choice too
    (dict(optimizer=Optimizer(lr=tune.choice([0.1, 0.01]), name=tune.grid(["sgd", "adam"])),
          search=Search(algorithm="grid")), 4),
    # num_samples repeats the grid
    (dict(optimizer=Optimizer(lr=tune.grid([0.1, 0.01])), search=Search(num_samples=3)), 6),
    # random search over a choice: no grid, just the samples
    (dict(optimizer=Optimizer(lr=tune.choice([0.1, 0.01])), search=Search(num_samples=5)), 5),
    # a grid of whole compression pipelines (non-scalar values travel as indices)
    (dict(epochs=4, compression=tune.grid([[Prune(sparsity=0.5)], [Prune(sparsity=0.8), Quantize()],
                                           []])), 3),
])
def test_grid_expansion_counts(kw, expected):
    plan = make_plan(make(**kw), cluster_cpus=2)
    assert plan.trials == expected
    assert ray_grid_count(plan) == expected


def test_grid_values_map_back_to_the_spec():
    from ray.tune.search.variant_generator import generate_variants

    from dlopt.runtime.search import to_ray_space

    spec = make(epochs=4, compression=tune.grid([[Prune(sparsity=0.5)], [Prune(sparsity=0.8), Quantize()]]),
                optimizer=Optimizer(lr=tune.grid([0.1, 0.01])))
    plan = make_plan(spec, cluster_cpus=2)
    space = to_ray_space(plan)
    seen = set()
    for _, config in generate_variants(space):
        concrete = plan.trial_spec(config)
        seen.add((concrete.optimizer.lr, tuple(s.stage for s in concrete.compression),
                  concrete.compression[0].sparsity))
    assert seen == {(0.1, ("prune",), 0.5), (0.01, ("prune",), 0.5),
                    (0.1, ("prune", "quantize"), 0.8), (0.01, ("prune", "quantize"), 0.8)}


# ------------------------------------------------------------------ sampling within bounds
def wide_spec():
    """A domain on many fields, each as wide as the field itself allows."""
    return make(
        epochs=tune.randint(2, 6),
        data=Data(batch_size=tune.randint(1, 257), val_fraction=tune.uniform(0.05, 0.5)),
        model=Model(dropout=tune.uniform(0.0, 0.99), hidden=[tune.randint(1, 64)],
                    activation=tune.choice(["relu", "tanh"])),
        optimizer=Optimizer(name="sgd", lr=tune.loguniform(1e-6, 10.0),
                            momentum=tune.uniform(0.0, 0.999),
                            weight_decay=tune.loguniform(1e-8, 1.0)),
        regularization=Regularization(label_smoothing=tune.uniform(0.0, 0.99),
                                      grad_clip_norm=tune.loguniform(0.01, 100.0)),
        compression=tune.choice([[Prune(sparsity=0.5, start_epoch=0, end_epoch=1)],
                                 [Prune(sparsity=0.9, start_epoch=0, end_epoch=1), Quantize()]]),
    )


@pytest.mark.parametrize("algorithm", ["random", "bayesian"])
def test_every_sample_respects_its_field_bounds(algorithm):
    from dlopt.runtime.search import to_ray_space

    spec = wide_spec().model_copy(update={"search": Search(algorithm=algorithm, seed=1)})
    plan = make_plan(spec, cluster_cpus=2)
    space = to_ray_space(plan)
    random.seed(0)
    import numpy as np

    np.random.seed(0)
    for _ in range(300):
        config = {k: d.sample() for k, d in space.items()}
        concrete = plan.trial_spec(config)  # validates
        for path, dom in plan.domains.items():
            value = config[path]
            if dom["domain"] in ("uniform", "loguniform"):
                assert dom["low"] <= value <= dom["high"], (path, value)
            elif dom["domain"] == "randint":
                assert dom["low"] <= value < dom["high"] and isinstance(value, int), (path, value)
        assert 0 < concrete.optimizer.lr and 0 <= concrete.optimizer.momentum < 1
        assert 0 <= concrete.model.dropout < 1 and concrete.data.batch_size >= 1


def test_seed_makes_random_search_reproducible():
    from ray.tune import register_trainable
    from ray.tune.search.basic_variant import BasicVariantGenerator

    from dlopt.runtime.search import search_algorithm, to_ray_space

    def configs(seed):
        spec = wide_spec().model_copy(update={"search": Search(num_samples=4, seed=seed)})
        plan = make_plan(spec, cluster_cpus=2)
        space = to_ray_space(plan)
        gen = search_algorithm(plan)
        assert isinstance(gen, BasicVariantGenerator)
        register_trainable("dlopt_noop", lambda config: None)  # registry only, no cluster
        gen.add_configurations({"e": {"run": "dlopt_noop", "config": space, "num_samples": 4}})
        out = []
        while (trial := gen.next_trial()) is not None:
            out.append(trial.config)
        return out

    assert configs(7) == configs(7)
    assert configs(7) != configs(8)


# ------------------------------------------------------------------ refused combinations
PBT_LR = {"optimizer.lr": tune.loguniform(1e-3, 1e-1)}


@pytest.mark.parametrize("kw, expect", [
    (dict(epochs=3, search=Search(scheduler="asha", grace_period=3)),
     "search.grace_period: 3 must be below epochs (3)"),
    (dict(epochs=4, search=Search(scheduler="median", grace_period=4)),
     "search.grace_period: 4 must be below epochs (4)"),
    # HyperBand receives no grace period: refused rather than checked and dropped
    (dict(epochs=4, search=Search(scheduler="hyperband", grace_period=2)),
     "search.grace_period: only used with scheduler 'asha' / 'median'; scheduler 'hyperband'"),
    (dict(epochs=1, search=Search(scheduler="hyperband")),
     "search.reduction_factor: 2 leaves HyperBand a single bracket at 1 epoch(s)"),
    (dict(epochs=4, search=Search(scheduler="median", reduction_factor=3)),
     "search.reduction_factor: only used with scheduler 'asha' / 'hyperband'"),
    (dict(epochs=4, search=Search(scheduler="fifo", grace_period=1)),
     "search.grace_period: only used with scheduler 'asha' / 'median'; scheduler 'fifo'"),
    (dict(epochs=4, search=Search(scheduler="asha", perturbation_interval=2)),
     "search.perturbation_interval: only used with scheduler 'pbt'"),
    (dict(search={"scheduler": "pbt"}), "needs pbt_mutations"),
    (dict(search={"scheduler": "fifo", "pbt_mutations": {"optimizer.lr": [0.1]}}),
     "search.pbt_mutations: only used with scheduler 'pbt'"),
    (dict(search=Search(algorithm="random", warmup_trials=3)),
     "search.warmup_trials: only used with algorithm 'bayesian_gp' / 'hyperopt', or 'bayesian'"),
    (dict(search=Search(algorithm="bayesian", warmup_trials=3,
                        objectives={"val_accuracy": "max", "model_bytes": "min"})),
     "search.warmup_trials: only used with"),
    (dict(search=Search(algorithm="bayesian", population_size=4)),
     "search.population_size: only used with algorithm 'bayesian' with objectives"),
    (dict(search=Search(algorithm="bayesian_gp", population_size=4,
                        objectives={"val_accuracy": "max", "model_bytes": "min"})),
     "search.population_size: only used with"),
    (dict(epochs=2, search=Search(scheduler="pbt", perturbation_interval=2, pbt_mutations=PBT_LR)),
     "search.perturbation_interval: 2 must be below epochs (2)"),
    (dict(epochs=6, search=Search(scheduler="pbt", pbt_mutations={"optimizer.nope": [0.1, 0.2]})),
     "search.pbt_mutations.optimizer.nope: no field 'optimizer.nope'"),
    (dict(epochs=6, search=Search(scheduler="pbt", pbt_mutations={"data.batch_size": [16.0, 32.0]})),
     "search.pbt_mutations.data.batch_size: PBT perturbs continuous (float) fields"),
    (dict(epochs=6, search=Search(scheduler="pbt", pbt_mutations={"optimizer.momentum":
                                                                   tune.uniform(0.5, 1.5)})),
     "search.pbt_mutations.optimizer.momentum: value 1.5 is invalid"),
    (dict(epochs=6, search=Search(scheduler="pbt", pbt_mutations={"optimizer.lr": tune.randint(1, 3)})),
     "not tune.randint"),
    (dict(epochs=6, search=Search(scheduler="pbt", pbt_mutations={"epochs": [3.0]})),
     "cannot change while a trial runs"),
    (dict(search={"scheduler": "asha", "objectives": {"val_accuracy": "max", "model_bytes": "min"}}),
     "scheduler 'asha' needs a single metric"),
    (dict(search={"scheduler": "median", "objectives": {"val_accuracy": "max", "model_bytes": "min"}}),
     "scheduler 'median' needs a single metric"),
    (dict(epochs=6, search={"scheduler": "pbt", "pbt_mutations": {"optimizer.lr": [0.1, 0.01]},
                            "objectives": {"val_accuracy": "max", "model_bytes": "min"}}),
     "scheduler 'pbt' needs a single metric"),
    (dict(search={"algorithm": "hyperopt", "objectives": {"val_accuracy": "max", "model_bytes": "min"}}),
     "'hyperopt' optimizes a single metric"),
    (dict(search={"objectives": {"val_accuracy": "max"}}), "at least two metrics"),
    (dict(search={"scheduler": "asha", "metric": "model_bytes", "mode": "min"}),
     "'model_bytes' is only reported at the end"),
    (dict(optimizer=Optimizer(lr=tune.loguniform(1e-3, 1e-1)), search=Search(algorithm="grid")),
     "optimizer.lr: algorithm='grid' cannot enumerate tune.loguniform"),
    (dict(data=Data(batch_size=tune.randint(8, 64)), search=Search(algorithm="grid")),
     "data.batch_size: algorithm='grid' cannot enumerate tune.randint"),
    (dict(optimizer=Optimizer(lr=tune.grid([0.1, 0.01])), search=Search(algorithm="bayesian")),
     "cannot expand tune.grid"),
    (dict(epochs=4, compression=tune.choice([[Prune(sparsity=tune.uniform(0.5, 0.9))], []])),
     "compression: a search domain inside tune.choice values is not sampled"),
])
def test_invalid_combination_refused_with_message(kw, expect):
    lines = errors_of(**kw)
    assert any(expect in line for line in lines), lines


def test_empty_grid_is_impossible():
    """Refused where it is placed, naming that field."""
    assert errors_of(optimizer={"lr": tune.grid([])}, search=Search(algorithm="grid")) == [
        "optimizer.lr: tune.grid needs at least 1 value"]


def test_valid_pbt_and_multi_objective_specs_pass():
    spec = make(epochs=6, search=Search(scheduler="pbt", pbt_mutations={
        "optimizer.lr": tune.loguniform(1e-3, 1e-1), "optimizer.momentum": [0.5, 0.9, 0.99],
        "regularization.label_smoothing": tune.choice([0.0, 0.1])}))
    assert set(spec.search.pbt_mutations) == {"optimizer.lr", "optimizer.momentum",
                                              "regularization.label_smoothing"}
    make(search=Search(algorithm="bayesian", num_samples=4,
                       objectives={"compressed_val_accuracy": "max", "model_bytes": "min"}))


def test_cli_validate_refuses_a_bad_search(tmp_path):
    from dlopt_testing import run_cli

    f = tmp_path / "bad.py"
    f.write_text("from dlopt import Experiment, Search, tune, Optimizer\n"
                 "experiment = Experiment(name='b', epochs=3, optimizer=Optimizer(lr=tune.uniform(0.01, 0.1)),\n"
                 "    search=Search(algorithm='grid', scheduler='asha', grace_period=3))\n")
    out = run_cli("validate", str(f))
    assert out.returncode == 2
    assert "search.grace_period" in out.stdout + out.stderr
    assert "optimizer.lr: algorithm='grid'" in out.stdout + out.stderr


# ------------------------------------------------------------------ plan -> Ray objects
def test_schedulers_built_from_the_plan():
    from ray.tune import schedulers

    from dlopt.runtime.search import trial_scheduler

    spec = make(epochs=tune.choice([4, 9]), search=Search(scheduler="asha", grace_period=2,
                                                          reduction_factor=3))
    asha = trial_scheduler(make_plan(spec, cluster_cpus=2))
    assert isinstance(asha, schedulers.AsyncHyperBandScheduler)
    assert asha._max_t == 9 and asha._reduction_factor == 3
    assert sorted(m for m, _ in asha._brackets[0]._rungs) == [2, 6]  # grace 2, then x3
    spec = make(epochs=6, search=Search(scheduler="median", grace_period=2))
    assert isinstance(trial_scheduler(make_plan(spec)), schedulers.MedianStoppingRule)
    spec = make(epochs=6, search=Search(scheduler="pbt", perturbation_interval=2, pbt_mutations={
        "optimizer.lr": tune.loguniform(1e-3, 1e-1), "optimizer.momentum": tune.choice([0.9, 0.5])}))
    pbt = trial_scheduler(make_plan(spec))
    assert isinstance(pbt, schedulers.PopulationBasedTraining)
    assert pbt._synch and pbt._perturbation_interval == 2
    assert pbt._hyperparam_mutations["optimizer.momentum"] == [0.5, 0.9]


def test_search_seed_makes_pbt_perturbations_repeat():
    from ray.tune.schedulers import pbt as ray_pbt

    from dlopt.runtime.search import trial_scheduler

    def perturbed(seed):
        spec = make(epochs=6, search=Search(scheduler="pbt", seed=seed, perturbation_interval=2,
                                            pbt_mutations={"optimizer.lr": tune.loguniform(1e-3, 1e-1)}))
        sched = trial_scheduler(make_plan(spec))
        return [ray_pbt._explore({"optimizer.lr": 0.01}, sched._hyperparam_mutations,
                                 sched._resample_probability, sched._perturbation_factors,
                                 sched._custom_explore_fn)[0]["optimizer.lr"] for _ in range(8)]

    first = perturbed(7)
    assert perturbed(7) == first and len(set(first)) > 1
    assert perturbed(8) != first


def test_pbt_explore_stays_inside_the_domain():
    from dlopt.runtime.search import clip_to, pbt_mutations

    _, bounds = pbt_mutations({"optimizer.lr": {"domain": "loguniform", "low": 0.001, "high": 0.1},
                               "optimizer.momentum": {"domain": "uniform", "low": 0.5, "high": 0.95}})
    explore = clip_to(bounds)
    assert explore({"optimizer.lr": 0.12, "optimizer.momentum": 0.95 * 1.2}) == {
        "optimizer.lr": 0.1, "optimizer.momentum": 0.95}
    assert explore({"optimizer.lr": 0.01, "optimizer.momentum": 0.7}) == {
        "optimizer.lr": 0.01, "optimizer.momentum": 0.7}


def test_multi_objective_uses_optuna_with_metric_and_mode_lists():
    from ray.tune.search.optuna import OptunaSearch

    from dlopt.runtime.search import search_algorithm, tune_config_metric

    spec = make(optimizer=Optimizer(lr=tune.loguniform(1e-3, 1e-1)),
                search=Search(algorithm="bayesian", seed=0,
                              objectives={"compressed_val_accuracy": "max", "model_bytes": "min"}))
    plan = make_plan(spec)
    alg = search_algorithm(plan)
    # Tune's per-result metric check does not see the objectives (they come in the final
    # report); the Optuna searcher inside has them, and TuneConfig gets no metric.
    assert alg.metric is None and tune_config_metric(plan) == (None, None)
    found = inner(alg)  # inside the Steered wrapper and a ConcurrencyLimiter when one is set
    assert isinstance(found, OptunaSearch)
    assert found.metric == ["compressed_val_accuracy", "model_bytes"] and found.mode == ["max", "min"]
    # a single metric reported every epoch goes to TuneConfig as usual
    spec = make(optimizer=Optimizer(lr=tune.loguniform(1e-3, 1e-1)), search=Search(algorithm="bayesian"))
    plan = make_plan(spec)
    assert tune_config_metric(plan) == ("val_accuracy", "max")
    assert isinstance(inner(search_algorithm(plan)), OptunaSearch)


def test_plan_describes_scheduler_domains_and_concurrency():
    spec = make(epochs=6, optimizer=Optimizer(lr=tune.loguniform(1e-3, 1e-1)),
                search=Search(num_samples=5, scheduler="pbt",
                              pbt_mutations={"optimizer.lr": tune.loguniform(1e-3, 1e-1)}))
    text = make_plan(spec, cluster_cpus=4).describe()
    assert "scheduler    pbt: every 2 epochs" in text
    assert "optimizer.lr                 loguniform(0.001, 0.1)" in text
    assert "PBT mutation loguniform(0.001, 0.1)" in text
    assert "trials       5" in text and "trial(s) at once on 4 CPUs" in text


# ------------------------------------------------------------------ PBT resume takes the new values
def test_resumed_optimizer_takes_the_new_spec_values():
    from dlopt.ml import optim
    from dlopt.ml import schedules
    from dlopt.spec import Schedule

    model = torch.nn.Linear(3, 2)
    old = Optimizer(name="sgd", lr=0.1, momentum=0.9, weight_decay=0.0)
    opt = optim.build(old, model.parameters())
    sched, _ = schedules.build(Schedule(name="step", step_size=2, gamma=0.5), opt, 10, 4)
    for _ in range(3):
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.05)  # 0.1 halved once
    saved_opt, saved_sched = opt.state_dict(), sched.state_dict()

    new = Optimizer(name="sgd", lr=0.02, momentum=0.5, weight_decay=1e-3)
    opt2 = optim.build(new, model.parameters())
    sched2, _ = schedules.build(Schedule(name="step", step_size=2, gamma=0.5), opt2, 10, 4)
    opt2.load_state_dict(saved_opt)
    sched2.load_state_dict(saved_sched)
    assert opt2.param_groups[0]["lr"] == pytest.approx(0.05)  # the old value came back
    optim.apply_spec(opt2, new, sched2)
    g = opt2.param_groups[0]
    assert g["lr"] == pytest.approx(0.01)  # new base lr, same place in the schedule (x0.5)
    assert g["momentum"] == 0.5 and g["weight_decay"] == 1e-3
    opt2.step()
    sched2.step()  # epoch 4: halved again, from the new base
    assert opt2.param_groups[0]["lr"] == pytest.approx(0.005)
    # the same spec again (a plain restart) changes nothing
    before = dict(opt2.param_groups[0])
    optim.apply_spec(opt2, new, sched2)
    assert {k: v for k, v in opt2.param_groups[0].items() if k != "params"} == \
        {k: v for k, v in before.items() if k != "params"}


# ------------------------------------------------------------------ PBT perturbation bookkeeping
def test_perturbation_log_finds_the_cloned_trial():
    from types import SimpleNamespace as NS

    from dlopt.tracking.perturbations import changed, source_trial

    a, b = NS(trial_id="a", path="/r/sweep/trial_a"), NS(trial_id="b", path="/r/sweep/trial_ab")
    assert source_trial("/r/sweep/trial_ab/checkpoint_000003", [a, b]) is b
    assert source_trial("/r/sweep/trial_a/checkpoint_000001", [a, b]) is a
    assert source_trial(None, [a, b]) is None
    assert changed({"optimizer.lr": 0.1, "x": 1}, {"optimizer.lr": 0.12, "x": 1}) == {
        "optimizer.lr": [0.1, 0.12]}


def test_grid_and_random_generators_carry_the_concurrency_limit():
    """Tune ignores TuneConfig.max_concurrent_trials for a BasicVariantGenerator instance."""
    from dlopt import Experiment, Optimizer, Search, tune
    from dlopt.spec.plan import make_plan
    from dlopt.runtime.search import search_algorithm

    for algorithm in ("grid", "random"):
        spec = Experiment(name="c", optimizer=Optimizer(lr=tune.grid([0.1, 0.01, 0.001])),
                          search=Search(algorithm=algorithm, max_concurrent_trials=1))
        gen = search_algorithm(make_plan(spec))
        assert gen.max_concurrent == 1


# ------------------------------------------------------------------ model-based samplers: warm-up
LR = Optimizer(lr=tune.loguniform(1e-3, 1e-1))
TWO = {"compressed_val_accuracy": "max", "model_bytes": "min"}


@pytest.mark.parametrize("num_samples, warmup, population", [
    (1, 2, 4), (4, 2, 4), (10, 2, 4), (16, 4, 4), (30, 7, 7), (40, 10, 10), (400, 10, 50)])
def test_warmup_and_population_scale_with_the_budget(num_samples, warmup, population):
    assert Search(algorithm="bayesian", num_samples=num_samples).setting("warmup_trials") == warmup
    assert Search(algorithm="bayesian", num_samples=num_samples,
                  objectives=TWO).setting("population_size") == population
    # from 10 trials on, most of the budget is modelled
    if num_samples >= 10:
        assert warmup <= num_samples // 4


def inner(searcher):
    while hasattr(searcher, "searcher"):  # EndOfTrialMetrics / ConcurrencyLimiter wrappers
        searcher = searcher.searcher
    return searcher


@pytest.mark.parametrize("algorithm", ["bayesian", "bayesian_gp", "hyperopt"])
def test_samplers_get_the_warmup(algorithm):
    import optuna

    from dlopt.runtime.search import search_algorithm

    for search, expect in [(Search(algorithm=algorithm, num_samples=12), 3),
                           (Search(algorithm=algorithm, num_samples=12, warmup_trials=5), 5)]:
        spec = make(optimizer=LR, search=search)
        got = inner(search_algorithm(make_plan(spec)))
        if algorithm == "hyperopt":
            assert got.algo.keywords["n_startup_jobs"] == expect
        else:
            kind = optuna.samplers.GPSampler if algorithm == "bayesian_gp" else \
                optuna.samplers.TPESampler
            assert isinstance(got._sampler, kind) and got._sampler._n_startup_trials == expect


def test_nsga2_gets_the_population():
    import optuna

    from dlopt.runtime.search import search_algorithm

    for search, expect in [(Search(algorithm="bayesian", num_samples=20, objectives=TWO), 5),
                           (Search(algorithm="bayesian", num_samples=20, objectives=TWO,
                                   population_size=3), 3)]:
        spec = make(optimizer=LR, search=search)
        sampler = inner(search_algorithm(make_plan(spec)))._sampler
        assert isinstance(sampler, optuna.samplers.NSGAIISampler)
        assert sampler.population_size == expect


def test_schedulers_receive_every_setting_the_spec_checks():
    from ray.tune import schedulers

    from dlopt.runtime.search import trial_scheduler

    spec = make(epochs=9, search=Search(scheduler="hyperband", reduction_factor=3))
    hb = trial_scheduler(make_plan(spec))
    assert isinstance(hb, schedulers.HyperBandScheduler)
    assert hb._eta == 3 and hb._max_t_attr == 9 and hb._s_max_1 == 3
    spec = make(epochs=6, search=Search(scheduler="median", grace_period=3))
    median = trial_scheduler(make_plan(spec))
    assert median._grace_period == 3
    # unset settings: the scheduler's default, which the plan shows
    spec = make(epochs=6, search=Search(scheduler="asha"))
    plan = make_plan(spec)
    assert plan.search_settings == {"grace_period": 1, "reduction_factor": 2.0}
    asha = trial_scheduler(plan)
    assert asha._reduction_factor == 2 and asha._brackets[0]._rungs[-1][0] == 1


def test_plan_shows_the_warmup_and_warns_when_the_budget_cannot_leave_it():
    spec = make(optimizer=LR, search=Search(algorithm="bayesian_gp", num_samples=10))
    plan = make_plan(spec)
    assert plan.search_settings == {"warmup_trials": 2}
    assert ("sampler      GP (Optuna): the first 2 trial(s) random (warm-up), then 8 of 10 "
            "modelled") in plan.describe()
    assert not any("warning" in n for n in plan.notes)
    plan = make_plan(make(optimizer=LR, search=Search(algorithm="hyperopt", num_samples=4,
                                                      warmup_trials=4)))
    assert any(n.startswith("warning: search.warmup_trials: the first 4 trials are random")
               for n in plan.notes)
    text = make_plan(make(optimizer=LR, search=Search(algorithm="bayesian", num_samples=12,
                                                      objectives=TWO))).describe()
    assert "NSGA-II (Optuna): population 4; the first generation is random (trials 1-4), " \
           "then 2 bred generation(s) up to 12 trials" in text


def test_cli_validate_warns_but_accepts_a_budget_inside_the_warmup(tmp_path):
    from dlopt_testing import run_cli

    f = tmp_path / "small.yaml"
    f.write_text("name: s\noptimizer: {lr: {domain: loguniform, low: 0.001, high: 0.1}}\n"
                 "search: {algorithm: bayesian, num_samples: 4, objectives: "
                 "{val_accuracy: max, model_bytes: min}}\n")
    out = run_cli("validate", str(f))
    assert out.returncode == 0 and out.stdout.strip() == "ok"
    assert out.stderr.startswith("warning: search.population_size: NSGA-II's first generation "
                                 "(4 trials) is random"), out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
    f.write_text("name: s\nsearch: {algorithm: bayesian, num_samples: 3, warmup_trials: 3}\n")
    out = run_cli("validate", str(f))
    assert out.returncode == 0 and "warning: search.warmup_trials" in out.stderr
    f.write_text("name: s\nsearch: {algorithm: random, num_samples: 3, warmup_trials: 3}\n")
    out = run_cli("validate", str(f))
    assert out.returncode == 2 and out.stderr.startswith("search.warmup_trials: only used with")


# ------------------------------------------------------------------ the plan is frozen
def test_resume_gives_a_new_plan_and_leaves_the_original_alone(tmp_path):
    """--resume takes the newest restorable sweep's name in a new plan (dataclasses.replace);
    the plan it was given, frozen, keeps its own name."""
    import dataclasses

    from dlopt.driver.sweep import sweep_to_resume

    plan = make_plan(make(), now=None)
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.sweep_name = "x"
    assert sweep_to_resume(plan, tmp_path, f"sqlite:///{tmp_path}/m.db") == (plan, None)
    old = tmp_path / "t-20260101-000000"
    old.mkdir()
    (old / "tuner.pkl").write_bytes(b"")
    resumed, restore_dir = sweep_to_resume(plan, tmp_path, f"sqlite:///{tmp_path}/m.db")
    assert restore_dir == old and resumed.sweep_name == "t-20260101-000000"
    assert plan.sweep_name != resumed.sweep_name and resumed.domains == plan.domains
