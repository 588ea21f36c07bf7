"""Starting points, warm start, diverged trials and sweep-level stops, without a Ray cluster.

Ray Tune's searchers are plain objects until a Tuner runs them; the Optuna searcher here is
the real one (its study is read back to see what the sampler learned). The warm-start
reader runs against a real MLflow SQLite store.
"""
import math

import optuna
import pytest
from pydantic import ValidationError

from dlopt import Experiment, Optimizer, Search, tune
from dlopt.cli.main import main
from dlopt.spec.load import error_lines
from dlopt.spec.plan import make_plan

LR = Optimizer(lr=tune.loguniform(1e-4, 1e-1), momentum=tune.choice([0.0, 0.9]))


def make(**search):
    return Experiment(name="t", optimizer=LR, search=Search(**search))


def errors_of(**search):
    with pytest.raises(ValidationError) as info:
        make(**search)
    return error_lines(info.value)


# ------------------------------------------------------------------ spec checks
@pytest.mark.parametrize("search, expect", [
    (dict(num_samples=2, points_to_evaluate=[{"optimizer.lr": 0.5, "optimizer.momentum": 0.0}]),
     "search.points_to_evaluate[0].optimizer.lr: 0.5 is outside the search domain"),
    (dict(num_samples=2, points_to_evaluate=[{"optimizer.lr": 0.01}]),
     "search.points_to_evaluate[0]: no value for optimizer.momentum"),
    (dict(num_samples=2, points_to_evaluate=[{"optimizer.lr": 0.01, "optimizer.momentum": 0.5}]),
     "search.points_to_evaluate[0].optimizer.momentum: 0.5 is outside the search domain: one of"),
    (dict(num_samples=2, points_to_evaluate=[{"optimizer.lr": 0.01, "optimizer.momentum": 0.0,
                                              "model.hidden": [4]}]),
     "search.points_to_evaluate[0].model.hidden: not a searched field"),
    (dict(num_samples=1, points_to_evaluate=[{"optimizer.lr": 0.01, "optimizer.momentum": 0.0}] * 2),
     "search.points_to_evaluate: 2 points but the sweep runs 1 trials"),
    (dict(algorithm="random", warm_start="earlier"), "search.warm_start: needs algorithm 'bayesian'"),
    (dict(algorithm="bayesian", stop_when={"val_loss": 0.1}),
     "search.stop_when.val_loss: the goal must be a searched metric"),
])
def test_bad_start_points_and_stops_name_the_field(search, expect):
    lines = errors_of(**search)
    assert any(line.startswith(expect) for line in lines), lines


def test_cli_validate_exits_2_naming_the_point(tmp_path, capsys):
    path = tmp_path / "exp.py"
    path.write_text(
        "from dlopt import Experiment, Optimizer, Search, tune\n"
        "experiment = Experiment(name='x', optimizer=Optimizer(lr=tune.loguniform(1e-4, 1e-1)),\n"
        "    search=Search(num_samples=2, points_to_evaluate=[{'optimizer.lr': 2.0}]))\n")
    with pytest.raises(SystemExit) as done:
        main(["validate", str(path)])
    assert done.value.code == 2
    assert "search.points_to_evaluate[0].optimizer.lr: 2.0 is outside" in capsys.readouterr().err


def test_plan_shows_start_points_warm_start_and_stops():
    plan = make_plan(make(algorithm="bayesian", num_samples=6, warm_start="mnist-20260101-000000",
                          points_to_evaluate=[{"optimizer.lr": 0.01, "optimizer.momentum": 0.9}],
                          time_budget_s=600, stop_when={"val_accuracy": 0.98}, stop_on_plateau=4),
                     cluster_cpus=2)
    assert plan.start_points == [{"optimizer.lr": 0.01, "optimizer.momentum": 0.9}]
    text = plan.describe()
    assert "start points 1 configuration(s) tried first" in text
    assert "warm start   the sampler first learns every trial of 'mnist-20260101-000000'" in text
    assert ("stops        the sweep stops after 600 s or once a trial reaches val_accuracy 0.98 "
            "or when the top 4 results plateau") in text


# ------------------------------------------------------------------ the searcher
def optuna_searcher(warm=(), **search):
    from dlopt.runtime.search import search_algorithm, to_ray_space

    plan = make_plan(Experiment(name="t", optimizer=Optimizer(lr=tune.loguniform(1e-4, 1e-1)),
                                search=Search(algorithm="bayesian", metric="val_loss", mode="min",
                                              num_samples=8, seed=0, **search)), cluster_cpus=2)
    searcher = search_algorithm(plan, warm)
    searcher.set_search_properties("val_loss", "min", to_ray_space(plan))
    return searcher


def study_of(searcher) -> optuna.Study:
    return searcher.searcher._ot_study  # the OptunaSearch inside dlopt's wrapper


def test_points_to_evaluate_come_first():
    searcher = optuna_searcher(points_to_evaluate=[{"optimizer.lr": 0.003}])
    assert searcher.suggest("a") == {"optimizer.lr": 0.003}
    assert searcher.suggest("b") != {"optimizer.lr": 0.003}


def test_diverged_trials_reach_the_sampler_as_the_worst_value_seen():
    searcher = optuna_searcher()
    for trial_id in "abc":
        searcher.suggest(trial_id)
    # diverged before any finite value: Optuna's FAIL (nothing to compare it with)
    searcher.on_trial_complete("a", {"val_loss": float("nan"), "diverged": 1})
    searcher.on_trial_complete("b", {"val_loss": 0.4})
    searcher.on_trial_complete("c", {"val_loss": 0.9})
    searcher.suggest("d")
    searcher.on_trial_complete("d", {"val_loss": float("inf"), "diverged": 1})
    searcher.suggest("e")  # a finite value that diverged later: the worse of the two
    searcher.on_trial_complete("e", {"val_loss": 5e15, "diverged": 1})
    trials = study_of(searcher).trials
    states = [t.state for t in trials]
    assert states[0] == optuna.trial.TrialState.FAIL
    assert [t.value for t in trials[1:]] == [0.4, 0.9, 0.9, 5e15]
    assert all(s == optuna.trial.TrialState.COMPLETE for s in states[1:])
    # nothing non-finite ever reached the study
    assert all(math.isfinite(t.value) for t in trials if t.value is not None)


def test_steered_value_rules():
    from dlopt.runtime.steer import steered_value

    assert steered_value(0.3, False, "min", 0.9) == 0.3  # healthy: as it is
    assert steered_value(float("nan"), True, "min", 0.9) == 0.9
    assert steered_value(0.05, True, "max", 0.2) == 0.05  # its own, worse, finite value
    assert steered_value(0.5, True, "max", 0.2) == 0.2
    assert steered_value(float("nan"), True, "max", None) is None  # FAIL


def test_warm_trials_are_learned_before_the_first_suggestion():
    from dlopt.runtime.steer import WarmTrial

    warm = [WarmTrial({"optimizer.lr": 0.001}, 0.3), WarmTrial({"optimizer.lr": 0.05}, None),
            WarmTrial({"optimizer.lr": 0.09}, float("nan"), diverged=True)]
    searcher = optuna_searcher(warm)
    trials = study_of(searcher).trials
    assert [t.params["optimizer.lr"] for t in trials] == [0.001, 0.05, 0.09]
    assert [t.state.name for t in trials] == ["COMPLETE", "FAIL", "COMPLETE"]
    assert trials[2].value == 0.3  # diverged: the worst healthy value of the earlier sweep
    searcher.suggest("new")
    assert len(study_of(searcher).trials) == 4


def test_the_wrapper_and_its_sampler_survive_tunes_save_and_restore(tmp_path):
    from ray.tune.search import SearchGenerator

    searcher = optuna_searcher()
    searcher.suggest("a")
    searcher.on_trial_complete("a", {"val_loss": 0.7})
    SearchGenerator(searcher).save_to_dir(str(tmp_path), "s")  # as Tune saves its experiment state
    again = optuna_searcher()
    SearchGenerator(again).restore_from_dir(str(tmp_path))
    assert again.worst == {"val_loss": 0.7} and again.warm_told
    assert [t.value for t in study_of(again).trials] == [0.7]


# ------------------------------------------------------------------ stops
def test_sweep_stopper_ends_the_sweep_at_the_goal_only_for_healthy_results():
    from dlopt.runtime.search import sweep_stopper

    plan = make_plan(make(stop_when={"val_accuracy": 0.9}, num_samples=4), cluster_cpus=2)
    stop = sweep_stopper(plan)
    assert stop("a", {"val_accuracy": 0.95, "diverged": 1}) is False and not stop.stop_all()
    stop("a", {"val_accuracy": 0.85})
    assert not stop.stop_all()
    stop("b", {"val_accuracy": 0.91})
    assert stop.stop_all()
    assert sweep_stopper(make_plan(make(num_samples=2), cluster_cpus=2)) is None


def test_stop_reason_says_which_stop_ended_the_sweep():
    from dlopt.driver.finalize import stop_reason

    goal = make_plan(make(num_samples=5, stop_when={"val_accuracy": 0.9}, time_budget_s=60),
                     cluster_cpus=2)
    assert stop_reason(goal, [{"val_accuracy": 0.8}, {"val_accuracy": 0.93}, {}], 10) == \
        "stop_when: val_accuracy reached 0.9 (0.93); 2 of 5 trials ran"
    assert stop_reason(goal, [{"val_accuracy": 0.8}], 61) == "time_budget_s: 60 s spent; 1 of 5 trials ran"
    assert stop_reason(make_plan(make(num_samples=2), cluster_cpus=2), [{}, {}], 1) == "all 2 trials ran"


# ------------------------------------------------------------------ warm start from MLflow
def test_earlier_trials_are_read_from_the_sweeps_mlflow_runs(tmp_path):
    from mlflow.tracking import MlflowClient

    from dlopt.driver.warmstart import earlier_trials
    from dlopt.spec.load import SpecError

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("earlier")
    parent = client.create_run(exp, tags={"dlopt.sweep": "old-1", "dlopt.role": "sweep"}).info.run_id
    rows = [("0.001", "0.0", 0.3, None), ("0.05", "0.9", 0.9, "diverged"),
            ("0.5", "0.0", 0.1, None),  # outside this plan's lr domain: left out
            ("0.01", "0.9", None, None)]  # errored: no value
    for lr, momentum, loss, status in rows:
        run = client.create_run(exp, tags={"mlflow.parentRunId": parent,
                                           **({"dlopt.status": status} if status else {})})
        client.log_param(run.info.run_id, "optimizer.lr", lr)
        client.log_param(run.info.run_id, "optimizer.momentum", momentum)
        if loss is not None:
            client.log_metric(run.info.run_id, "val_loss", loss)
    spec = Experiment(name="t", optimizer=LR, search=Search(algorithm="bayesian", metric="val_loss",
                                                             mode="min", warm_start="old-1"))
    for ref in ("old-1", parent):  # by sweep name, by parent run id
        plan = make_plan(spec.model_copy(update={"search": spec.search.model_copy(
            update={"warm_start": ref})}), cluster_cpus=2)
        got = sorted(earlier_trials(plan, uri), key=lambda t: t.config["optimizer.lr"])
        assert [(t.config, t.value, t.diverged) for t in got] == [
            ({"optimizer.lr": 0.001, "optimizer.momentum": 0.0}, 0.3, False),
            ({"optimizer.lr": 0.01, "optimizer.momentum": 0.9}, None, False),
            ({"optimizer.lr": 0.05, "optimizer.momentum": 0.9}, 0.9, True)]
    missing = make_plan(spec.model_copy(update={"search": spec.search.model_copy(
        update={"warm_start": "nope"})}), cluster_cpus=2)
    with pytest.raises(SpecError, match="search.warm_start: no sweep or MLflow parent run 'nope'"):
        earlier_trials(missing, uri)


def test_plateau_stop_ends_the_sweep_once_the_top_results_agree():
    from dlopt.runtime.search import sweep_stopper

    stop = sweep_stopper(make_plan(make(num_samples=20, stop_on_plateau=3), cluster_cpus=2))
    for trial_id, value in (("a", 0.5), ("b", 0.9), ("c", 0.7)):
        stop(trial_id, {"val_accuracy": value})
    assert not stop.stop_all()  # the top 3 still spread
    for trial_id in "def":
        stop(trial_id, {"val_accuracy": 0.9})
    assert stop.stop_all()


def test_a_multi_objective_searcher_starts_without_warm_trials():
    """NSGA-II sweeps have two goals and no warm start: set_search_properties must not expect one."""
    from ray import tune as ray_tune
    from ray.tune.search.optuna import OptunaSearch

    from dlopt.runtime.steer import Steered

    inner = OptunaSearch(metric=["a", "b"], mode=["max", "min"])
    searcher = Steered(inner, {"a": "max", "b": "min"})
    assert searcher.set_search_properties(None, None, {"x": ray_tune.uniform(0, 1)})  # as Tune does
    searcher.suggest("t1")
    searcher.on_trial_complete("t1", {"a": 0.5, "b": 1.0})
    assert searcher.warm_told and searcher.worst == {"a": 0.5, "b": 1.0}
