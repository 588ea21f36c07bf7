"""`--extend N` without a Ray cluster: which searches can be extended (exit 2 before anything
starts otherwise), the extension's plan, finding the sweep and its trials in a real MLflow
SQLite store, the earlier trials merged into the collection, and non-scalar choices read
back from a child run's params as table indices.
"""
from types import SimpleNamespace

import pytest
from mlflow.tracking import MlflowClient

from dlopt import Experiment, Optimizer, Search, tune
from dlopt.cli.main import main
from dlopt.spec.extend import extend_problems, extending, extension_size, onto
from dlopt.spec.load import SpecError
from dlopt.spec.plan import make_plan

LR = Optimizer(lr=tune.loguniform(1e-4, 1e-1), momentum=tune.choice([0.0, 0.9]))


GRID = Optimizer(lr=tune.grid([0.01, 0.1]))


def plan_of(optimizer=LR, **search):
    return make_plan(Experiment(name="t", optimizer=optimizer, search=Search(**search)),
                     cluster_cpus=2)


@pytest.mark.parametrize("search, expect", [
    (dict(algorithm="grid", optimizer=GRID), "--extend: a grid sweep has no further points"),
    (dict(algorithm="random", optimizer=GRID), "--extend: a grid sweep has no further points"),
    (dict(algorithm="hyperopt", num_samples=4), "--extend: search.algorithm 'hyperopt' cannot"),
    (dict(algorithm="bayesian", num_samples=4,
          objectives={"val_accuracy": "max", "model_bytes": "min"}),
     "--extend: a multi-objective 'bayesian' search (NSGA-II) cannot"),
])
def test_searches_that_cannot_be_extended_say_why(search, expect):
    (line,) = extend_problems(plan_of(**search), 5)
    assert line.startswith(expect), line
    with pytest.raises(SpecError):
        extending(plan_of(**search), 5)


def test_random_and_bayesian_searches_extend():
    assert extend_problems(plan_of(algorithm="random", num_samples=3), 2) == []
    assert extend_problems(plan_of(algorithm="bayesian", num_samples=3), 0) == [
        "--extend: the number of trials to add must be at least 1 (got 0)"]
    plan = extending(plan_of(algorithm="bayesian", num_samples=3, seed=7, max_concurrent_trials=4,
                             points_to_evaluate=[{"optimizer.lr": 0.01, "optimizer.momentum": 0.0}]),
                     2)
    assert (plan.extend, plan.num_samples, plan.trials, plan.start_points) == (2, 2, 2, [])
    assert plan.max_concurrent_trials == 2
    assert "extend       2 more trials for the latest sweep of 't' in MLflow" in plan.describe()
    placed = onto(plan, "t-20260101-000000", 3)
    assert placed.sweep_name == "t-20260101-000000" and placed.seed == 10  # 7 + 3 earlier
    assert placed.tune_name.startswith("t-20260101-000000-x2-")
    assert extension_size(placed.tune_name, "t-20260101-000000") == 2
    assert extension_size("t-20260101-000000", "t-20260101-000000") is None
    assert "sweep t-20260101-000000 (3 earlier trials)" in placed.describe()


def test_cli_refuses_to_extend_a_grid_before_ray_starts(tmp_path, capsys):
    spec = tmp_path / "g.yaml"
    spec.write_text("name: g\noptimizer: {lr: {domain: grid, values: [0.01, 0.1]}}\n"
                    "search: {algorithm: grid}\n")
    assert main(["plan", str(spec), "--extend", "3"]) == 2
    assert main(["run", str(spec), "--extend", "3", "--tracking-uri",
                 f"sqlite:///{tmp_path / 'm.db'}", "--storage", str(tmp_path / "rr")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["--extend: a grid sweep has no further points to try (search.algorithm "
                   "'grid', 2 grid points); raise num_samples or use a 'random' or 'bayesian' "
                   "search"] * 2
    assert not (tmp_path / "rr").exists()  # Ray never started


def make_sweep(client, exp, name, domains, rows):
    parent = client.create_run(exp, tags={"dlopt.sweep": name, "dlopt.role": "sweep"})
    client.log_param(parent.info.run_id, "domains", domains)
    for i, (lr, momentum, loss, status) in enumerate(rows):
        run = client.create_run(exp, tags={"mlflow.parentRunId": parent.info.run_id,
                                           "dlopt.trial_id": f"{name}_{i}",
                                           "dlopt.model_checkpoint": f"/ckpt/{i}"})
        client.log_param(run.info.run_id, "optimizer.lr", lr)
        client.log_param(run.info.run_id, "optimizer.momentum", momentum)
        client.log_metric(run.info.run_id, "val_loss", loss)
        if status == "diverged":
            client.set_tag(run.info.run_id, "dlopt.status", "diverged")
        client.set_terminated(run.info.run_id, "FAILED" if status == "killed" else "FINISHED")
    return parent


def test_the_latest_sweep_and_its_trials_are_found_and_merged(tmp_path):
    from dlopt.driver.extend import extension_plan
    from dlopt.driver.finalize import earlier

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("t")
    plan = extending(plan_of(algorithm="bayesian", metric="val_loss", mode="min", seed=1), 4)
    with pytest.raises(SpecError, match="--extend: no sweep of 't' in MLflow experiment 't'"):
        extension_plan(plan, uri)
    domains = "optimizer.lr, optimizer.momentum"
    make_sweep(client, exp, "t-20260101-000000", domains, [("0.001", "0.0", 0.3, None)])
    parent = make_sweep(client, exp, "t-20260102-000000", domains,
                        [("0.001", "0.9", 0.2, None), ("0.05", "0.0", 0.9, "diverged"),
                         ("0.01", "0.9", 0.5, "killed")])
    client.create_run(exp, tags={"dlopt.sweep": "t-20260102-000000-other", "dlopt.role": "sweep"})
    placed, warm = extension_plan(plan, uri)
    assert (placed.sweep_name, placed.earlier_trials, placed.seed) == ("t-20260102-000000", 3, 4)
    assert sorted((t.config["optimizer.lr"], t.value, t.diverged) for t in warm) == [
        (0.001, 0.2, False), (0.01, 0.5, False), (0.05, 0.9, True)]
    tracker = SimpleNamespace(client=client, experiment_id=exp, parent_id=parent.info.run_id)
    merged = earlier(tracker, placed, known={"t-20260102-000000_2"})
    assert [(t.trial_id, t.status, t.checkpoint_path) for t in merged] == [
        ("t-20260102-000000_0", "ok", "/ckpt/0"), ("t-20260102-000000_1", "diverged", "/ckpt/1")]
    assert merged[0].config == {"optimizer.lr": 0.001, "optimizer.momentum": 0.9}
    assert merged[0].metrics == {"val_loss": 0.2}
    other = extending(make_plan(Experiment(name="t", optimizer=Optimizer(
        lr=tune.loguniform(1e-4, 1e-1)), search=Search(algorithm="random")), cluster_cpus=2), 2)
    with pytest.raises(SpecError, match="searched optimizer.lr, optimizer.momentum; this spec "
                                        "searches optimizer.lr"):
        extension_plan(other, uri)


def test_a_non_scalar_choice_is_read_back_as_its_table_index():
    from dlopt.driver.warmstart import searched_config
    from dlopt.spec import flatten

    spec = Experiment(name="t", model={"hidden": tune.choice([[8], [16, 8]])},
                      search=Search(algorithm="bayesian", num_samples=2))
    plan = make_plan(spec, cluster_cpus=2)
    assert "model.hidden" in plan.tables
    from dlopt.tracking.names import param_text

    params = {k: param_text(v) for k, v in flatten({"model": {"hidden": [16, 8]}}).items()}
    assert searched_config(plan, params) == {"model.hidden": 1}
    assert searched_config(plan, {"model.hidden": "[4]"}) is None
