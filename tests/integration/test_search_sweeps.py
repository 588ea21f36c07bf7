"""Search with real Ray and real MLflow (SQLite), tiny budgets: digits, 1 worker per trial.

- a grid sweep runs exactly the grid (FIFO), and ASHA on the same spec runs fewer epochs;
- PBT perturbs at least once, the clone trains on with the new lr, and every trial's
  MLflow history has exactly one value per epoch per metric;
- PBT over 2-worker trials (TorchTrainer, checkpoint forwarder) clones and keeps the history;
- a multi-objective sweep registers every Pareto-optimal model and the aliases point at
  the right versions, and NSGA-II breeds generations past its random first one;
- HyperBand and the median rule stop hopeless trials; hyperopt and bayesian_gp leave their
  warm-up and model the rest.
"""
import csv
import io
import json
import math
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from dlopt import Data, Experiment, Model, Optimizer, Resources, Search, Tracking, tune
from dlopt.driver.sweep import run

EPOCH_METRICS = ("train_loss", "val_loss", "val_accuracy", "lr")
GRID_LRS = [0.01, 0.003, 0.0003, 0.0001]  # good ones first: ASHA has them on record early
EPOCHS = 6


def sweep(tmp_path_factory, name, spec):
    work = tmp_path_factory.mktemp(name)
    uri = f"sqlite:///{work / 'mlflow.db'}"
    result = run(spec, tracking_uri=uri, storage=str(work / "ray_results"), progress=False)
    return result, MlflowClient(uri)


def grid_spec(scheduler: str) -> Experiment:
    return Experiment(
        name=f"it-{scheduler}", seed=0, epochs=EPOCHS,
        data=Data(dataset="digits", batch_size=64),
        model=Model(hidden=[32], init="kaiming_uniform"),
        optimizer=Optimizer(name="adam", lr=tune.grid(GRID_LRS)),
        search=Search(algorithm="grid", scheduler=scheduler, max_concurrent_trials=2,
                      **(dict(grace_period=1, reduction_factor=2) if scheduler == "asha" else {})),
        resources=Resources(num_workers=1),
        tracking=Tracking(experiment=f"it-{scheduler}"),
    )


def epochs_logged(client, result) -> dict[str, list[int]]:
    return {t.trial_id: sorted(m.step for m in client.get_metric_history(t.run_id, "val_accuracy"))
            for t in result.trials}


@pytest.fixture(scope="module")
def fifo(tmp_path_factory):
    return sweep(tmp_path_factory, "fifo", grid_spec("fifo"))


@pytest.fixture(scope="module")
def asha(tmp_path_factory):
    return sweep(tmp_path_factory, "asha", grid_spec("asha"))


def test_grid_sweep_runs_exactly_the_grid(fifo):
    result, client = fifo
    assert len(result.trials) == len(GRID_LRS) == result.plan.trials
    children = client.search_runs([result.experiment_id],
                                  f"tags.`mlflow.parentRunId` = '{result.parent_run_id}'")
    assert sorted(float(c.data.params["optimizer.lr"]) for c in children) == sorted(GRID_LRS)
    assert all(t.status == "ok" for t in result.trials)
    for steps in epochs_logged(client, result).values():
        assert steps == list(range(1, EPOCHS + 1))  # FIFO: every trial runs every epoch


def test_asha_stops_some_trials_early(fifo, asha):
    fifo_result, fifo_client = fifo
    asha_result, asha_client = asha
    fifo_epochs = epochs_logged(fifo_client, fifo_result)
    asha_epochs = epochs_logged(asha_client, asha_result)
    assert len(asha_epochs) == len(GRID_LRS)
    total_fifo = sum(len(s) for s in fifo_epochs.values())
    total_asha = sum(len(s) for s in asha_epochs.values())
    assert total_fifo == EPOCHS * len(GRID_LRS)
    assert total_asha < total_fifo, (asha_epochs, total_asha)
    stopped = [tid for tid, s in asha_epochs.items() if len(s) < EPOCHS]
    assert stopped and all(s == list(range(1, len(s) + 1)) for s in asha_epochs.values())
    # ASHA still finds a good configuration: the best is one of the two strong learning rates
    assert float(asha_result.best.config["optimizer.lr"]) in GRID_LRS[:2]


# ------------------------------------------------------------------ PBT
PBT_EPOCHS = 5


@pytest.fixture(scope="module")
def pbt(tmp_path_factory):
    spec = Experiment(
        name="it-pbt", seed=0, epochs=PBT_EPOCHS,
        data=Data(dataset="digits", batch_size=64),
        model=Model(hidden=[32], init="kaiming_uniform"),
        optimizer=Optimizer(name="sgd", lr=tune.loguniform(1e-3, 1e-1), momentum=0.5),
        search=Search(algorithm="random", num_samples=2, seed=3, scheduler="pbt",
                      perturbation_interval=2, max_concurrent_trials=2,
                      pbt_mutations={"optimizer.lr": tune.loguniform(1e-3, 1e-1)}),
        resources=Resources(num_workers=1),
        tracking=Tracking(experiment="it-pbt"),
    )
    return sweep(tmp_path_factory, "pbt", spec)


def test_pbt_perturbs_and_mlflow_history_is_complete(pbt):
    assert_pbt_history(*pbt, PBT_EPOCHS)


@pytest.fixture(scope="module")
def pbt_two_workers(tmp_path_factory):
    """PBT over 2-worker trials: each trial is a TorchTrainer whose checkpoints reach Tune
    through the checkpoint forwarder (dlopt.runtime.trial.CheckpointForwarder); a clone
    restarts both workers from the other trial's checkpoint."""
    spec = Experiment(
        name="it-pbt2", seed=0, epochs=PBT2_EPOCHS,
        data=Data(dataset="digits", batch_size=64),
        model=Model(hidden=[16], init="kaiming_uniform"),
        optimizer=Optimizer(name="sgd", lr=tune.loguniform(1e-3, 1e-1), momentum=0.5),
        search=Search(algorithm="random", num_samples=2, seed=3, scheduler="pbt",
                      perturbation_interval=2, max_concurrent_trials=2,
                      pbt_mutations={"optimizer.lr": tune.loguniform(1e-3, 1e-1)}),
        resources=Resources(num_workers=2, cpus_per_worker=1),
        tracking=Tracking(experiment="it-pbt2"),
    )
    return sweep(tmp_path_factory, "pbt2", spec)


PBT2_EPOCHS = 3


def test_pbt_with_two_worker_trials_clones_checkpoints(pbt_two_workers):
    result, client = pbt_two_workers
    assert_pbt_history(result, client, PBT2_EPOCHS)
    for t in result.trials:
        assert client.get_run(t.run_id).data.params["resources.num_workers"] == "2"


def assert_pbt_history(result, client, epochs: int) -> None:
    """PBT perturbed at least once, each clone names the trial and run it cloned and trained
    on with the new lr, and every MLflow history has exactly one value per epoch."""
    assert len(result.trials) == 2 and all(t.status == "ok" for t in result.trials)
    parent = client.get_run(result.parent_run_id)
    assert int(parent.data.tags["dlopt.pbt.perturbations"]) >= 1

    by_run = {t.run_id: t for t in result.trials}
    perturbed = []
    for t in result.trials:
        for name in EPOCH_METRICS:  # exactly one value per epoch per metric, no gap, no repeat
            steps = [m.step for m in client.get_metric_history(t.run_id, name)]
            assert sorted(steps) == list(range(1, epochs + 1)), (t.trial_id, name, steps)
        run = client.get_run(t.run_id)
        if "dlopt.pbt.perturbations" in run.data.tags:
            perturbed.append((t, run))
    assert perturbed
    for t, run in perturbed:
        path = client.download_artifacts(t.run_id, "pbt_perturbations.json")
        events = json.load(open(path))
        assert len(events) == int(run.data.tags["dlopt.pbt.perturbations"])
        lr_events = [e for e in events if "optimizer.lr" in e["changes"]]
        for e in events:
            other = [o for o in result.trials if o.trial_id != t.trial_id][0]
            assert e["cloned_trial"] == other.trial_id and e["cloned_run"] == other.run_id
        # a clone may keep its lr (explore can land on the same value): check those that moved
        for e in lr_events:
            old, new = e["changes"]["optimizer.lr"]
            assert old != new and 1e-3 <= new <= 1e-1
            # the clone trained on with the new lr (constant schedule: logged lr == spec lr)
            lr_hist = {m.step: m.value for m in client.get_metric_history(t.run_id, "lr")}
            assert lr_hist[e["epoch"] + 1] == pytest.approx(new, rel=1e-6)
            pbt_hist = {m.step: m.value for m in client.get_metric_history(t.run_id, "pbt.optimizer.lr")}
            assert pbt_hist[e["epoch"]] == pytest.approx(new) and pbt_hist[0] == pytest.approx(
                float(run.data.params["optimizer.lr"]))
        # params stay as first logged (MLflow cannot change them): the starting lr
        if lr_events:
            assert run.data.params["optimizer.lr"] == str(lr_events[0]["changes"]["optimizer.lr"][0])
    assert set(by_run) == {t.run_id for t in result.trials}


# ------------------------------------------------------------------ multi-objective
OBJECTIVES = {"compressed_val_accuracy": "max", "model_bytes": "min"}


@pytest.fixture(scope="module")
def pareto_sweep(tmp_path_factory):
    from dlopt.spec.load import load

    root = Path(__file__).resolve().parents[2]
    base = load(str(root / "experiments" / "pareto_digits.py")).model_dump(mode="json")
    base.update(epochs=3, name="it-pareto")
    # NSGA-II generations of 2: trials 3-5 are bred from finished ones, not random
    base["search"].update(num_samples=5, objectives=OBJECTIVES, population_size=2)
    base["tracking"].update(experiment="it-pareto", register_as="it-pareto")
    work = tmp_path_factory.mktemp("pareto")
    uri = f"sqlite:///{work / 'mlflow.db'}"
    result = run(Experiment.model_validate(base), tracking_uri=uri,
                 storage=str(work / "ray_results"), progress=False)
    return result, MlflowClient(uri), work / "ray_results"


def test_nsga2_breeds_past_its_first_generation(pareto_sweep):
    import optuna

    result, _, storage = pareto_sweep
    state = searcher_state(result, storage)
    assert isinstance(state["_sampler"], optuna.samplers.NSGAIISampler)
    assert state["_sampler"].population_size == 2
    done = state["_ot_study"].get_trials(states=[optuna.trial.TrialState.COMPLETE])
    assert len(done) == 5
    # Optuna moves to generation g+1 only once `population_size` trials of g have finished
    generations = sorted(t.system_attrs["NSGAIISampler:generation"] for t in done)
    assert generations[:2] == [0, 0] and generations[-1] >= 1, generations


def dominated(p, others):
    return any(all((q[k] >= p[k]) if m == "max" else (q[k] <= p[k]) for k, m in OBJECTIVES.items())
               and any((q[k] > p[k]) if m == "max" else (q[k] < p[k]) for k, m in OBJECTIVES.items())
               for q in others)


def test_multi_objective_registers_the_pareto_front_with_aliases(pareto_sweep):
    result, client, _ = pareto_sweep
    assert len(result.trials) == 5 and all(t.status == "ok" for t in result.trials)
    # the front, recomputed here by brute force from what MLflow holds for each trial run
    points = {}
    for t in result.trials:
        m = client.get_run(t.run_id).data.metrics
        points[t.run_id] = {k: m[k] for k in (*OBJECTIVES, "latency_ms")}
    front = {rid for rid, p in points.items()
             if not dominated(p, [q for r, q in points.items() if r != rid])}
    versions = client.search_model_versions("name = 'it-pareto'")
    assert {v.tags["dlopt.source_run"] for v in versions} == front
    assert len(versions) == len(front) == len(result.registered)
    for v in versions:
        p = points[v.tags["dlopt.source_run"]]
        assert v.tags["dlopt.pareto_rank"] == "1"
        for k in OBJECTIVES:
            assert float(v.tags[f"objective.{k}"]) == pytest.approx(p[k], rel=1e-5)
    source = {v.version: v.tags["dlopt.source_run"] for v in versions}

    def alias_run(alias):
        return source[client.get_model_version_by_alias("it-pareto", alias).version]

    assert points[alias_run("most-accurate")]["compressed_val_accuracy"] == max(
        points[r]["compressed_val_accuracy"] for r in front)
    assert points[alias_run("smallest")]["model_bytes"] == min(points[r]["model_bytes"] for r in front)
    assert points[alias_run("fastest")]["latency_ms"] == min(points[r]["latency_ms"] for r in front)

    # the plot and the CSV of all trials are on the parent run
    names = {a.path for a in client.list_artifacts(result.parent_run_id, "pareto")}
    assert names == {"pareto/pareto.png", "pareto/trials.csv"}
    rows = list(csv.DictReader(io.StringIO(open(client.download_artifacts(
        result.parent_run_id, "pareto/trials.csv")).read())))
    assert len(rows) == 5
    assert {r["run_id"] for r in rows if r["pareto_rank"] == "1"} == front
    assert all(r["pareto_rank"] for r in rows) and all(
        math.isfinite(float(r["model_bytes"])) for r in rows)


# ------------------------------------------------------------------ HyperBand and the median rule
# Good learning rates first, hopeless ones last: by the time a hopeless trial reports, the
# good ones are on record for the scheduler to compare it with.
STOP_LRS = [0.01, 0.003, 0.001, 1e-6, 3e-7, 1e-7]
STOP_EPOCHS = 4


def stopping_spec(scheduler: str, **settings) -> Experiment:
    # HyperBand (max_t 4, eta 2) fills a bracket of 3 full-length trials, then one of 3 that
    # is halved after 2 epochs. It halves only the trials it has been given by then, so all
    # 6 start at once (a quarter CPU each); 2 at a time, it would halve a lone trial.
    together = scheduler == "hyperband"
    return Experiment(
        name=f"it-{scheduler}", seed=0, epochs=STOP_EPOCHS,
        data=Data(dataset="digits", batch_size=64),
        model=Model(hidden=[16], init="kaiming_uniform"),
        optimizer=Optimizer(name="adam", lr=tune.grid(STOP_LRS)),
        search=Search(algorithm="grid", scheduler=scheduler,
                      max_concurrent_trials=len(STOP_LRS) if together else 2, **settings),
        resources=Resources(num_workers=1, cpus_per_worker=0.25 if together else 1.0),
        # The median rule judges whatever result arrives: "auto" would batch these ~0.1 s
        # epochs into one report at the end (dlopt.train.cadence), leaving nothing to stop.
        tracking=Tracking(experiment=f"it-{scheduler}",
                          report_every=1 if scheduler == "median" else "auto"),
    )


@pytest.mark.parametrize("scheduler, settings", [("hyperband", dict(reduction_factor=2)),
                                                  ("median", dict(grace_period=1))])
def test_early_stopping_schedulers_stop_hopeless_trials(tmp_path_factory, scheduler, settings):
    result, client = sweep(tmp_path_factory, scheduler, stopping_spec(scheduler, **settings))
    assert len(result.trials) == len(STOP_LRS)
    epochs = epochs_logged(client, result)
    # every history has one value per epoch from 1, no gap or repeat (HyperBand pauses and
    # resumes trials from their checkpoints)
    for tid, steps in epochs.items():
        assert steps == list(range(1, len(steps) + 1)), (tid, steps)
    lr_of = {t.trial_id: float(t.config["optimizer.lr"]) for t in result.trials}
    stopped = {lr_of[tid] for tid, s in epochs.items() if len(s) < STOP_EPOCHS}
    assert stopped, epochs
    assert sum(len(s) for s in epochs.values()) < STOP_EPOCHS * len(STOP_LRS)
    assert float(result.best.config["optimizer.lr"]) in STOP_LRS[:3]
    assert stopped <= set(STOP_LRS[3:]), (stopped, epochs)  # only hopeless ones


# ------------------------------------------------------------------ model-based samplers
def searcher_state(result, storage: Path) -> dict:
    """The base searcher Tune saved with the experiment (its __dict__, pickled)."""
    import pickle

    files = sorted((storage / result.plan.sweep_name).glob("searcher-state-*.pkl"))
    assert files, list((storage / result.plan.sweep_name).iterdir())
    with open(files[-1], "rb") as f:
        return pickle.load(f)


@pytest.mark.parametrize("algorithm", ["hyperopt", "bayesian_gp"])
def test_model_based_samplers_leave_their_warmup(tmp_path_factory, algorithm):
    """hyperopt and bayesian_gp run end to end: 5 trials, 2 of them warm-up, the rest
    proposed by the model; every trial is in MLflow with its sampled values."""
    spec = Experiment(
        name=f"it-{algorithm}", seed=0, epochs=2,
        data=Data(dataset="linear_1d", batch_size=32),
        model=Model(arch="linear"),
        optimizer=Optimizer(name="sgd", lr=tune.loguniform(1e-3, 0.3),
                            momentum=tune.uniform(0.0, 0.9)),
        search=Search(algorithm=algorithm, num_samples=5, seed=1, warmup_trials=2,
                      metric="val_loss", mode="min", max_concurrent_trials=1),
        resources=Resources(num_workers=1),
        tracking=Tracking(experiment=f"it-{algorithm}"),
    )
    work = tmp_path_factory.mktemp(algorithm)
    uri = f"sqlite:///{work / 'mlflow.db'}"
    result = run(spec, tracking_uri=uri, storage=str(work / "ray_results"), progress=False)
    client = MlflowClient(uri)
    assert len(result.trials) == 5 and all(t.status == "ok" for t in result.trials)
    children = client.search_runs([result.experiment_id],
                                  f"tags.`mlflow.parentRunId` = '{result.parent_run_id}'")
    lrs = sorted(float(c.data.params["optimizer.lr"]) for c in children)
    assert len(set(lrs)) == 5 and all(1e-3 <= lr <= 0.3 for lr in lrs)
    assert result.best.metrics["val_loss"] == min(t.metrics["val_loss"] for t in result.trials)
    state = searcher_state(result, work / "ray_results")
    if algorithm == "hyperopt":
        assert state["algo"].keywords["n_startup_jobs"] == 2
        trials = state["_hpopt_trials"]
        assert len([t for t in trials.trials if t["result"].get("status") == "ok"]) == 5
    else:
        import optuna

        assert isinstance(state["_sampler"], optuna.samplers.GPSampler)
        assert state["_sampler"]._n_startup_trials == 2
        study = state["_ot_study"]
        done = study.get_trials(states=[optuna.trial.TrialState.COMPLETE])
        assert len(done) == 5
        # the study saw what MLflow holds: the same val_loss per trial
        assert sorted(t.value for t in done) == pytest.approx(
            sorted(t.metrics["val_loss"] for t in result.trials), rel=1e-6)
