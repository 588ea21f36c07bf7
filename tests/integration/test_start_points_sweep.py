"""Starting points, warm start and sweep-level stops with real Ray, MLflow (SQLite), PyTorch.

- `points_to_evaluate`: the first trial runs the given configuration;
- `warm_start`: a second sweep names the first by its sweep name and starts (the earlier
  trials are read from MLflow before Ray starts; an unknown name exits 2 before Ray);
- `stop_when`: the sweep ends once a trial reaches the goal, before num_samples trials,
  and the summary, the parent's tag and its description say why.
"""
import pytest
from mlflow.tracking import MlflowClient

from dlopt import Data, Experiment, Model, Optimizer, Resources, Search, Tracking, tune
from dlopt.driver.sweep import run
from dlopt.spec.load import SpecError

START_LR = 0.01


def spec(name: str, search: Search) -> Experiment:
    return Experiment(
        name=name, seed=0, epochs=2,
        data=Data(dataset="digits", batch_size=64),
        model=Model(hidden=[32]),
        optimizer=Optimizer(name="adam", lr=tune.loguniform(1e-4, 3e-2)),
        search=search, resources=Resources(num_workers=1),
        tracking=Tracking(experiment="it-start"),
    )


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    work = tmp_path_factory.mktemp("start")
    return f"sqlite:///{work / 'mlflow.db'}", str(work / "ray_results")


@pytest.fixture(scope="module")
def first(store):
    uri, storage = store
    search = Search(algorithm="random", num_samples=3, seed=0, max_concurrent_trials=1,
                    points_to_evaluate=[{"optimizer.lr": START_LR}])
    return run(spec("it-first", search), tracking_uri=uri, storage=storage, progress=False)


def test_the_first_trial_runs_the_given_point(first, store):
    client = MlflowClient(store[0])
    children = client.search_runs([first.experiment_id],
                                  f"tags.`mlflow.parentRunId` = '{first.parent_run_id}'",
                                  order_by=["attributes.start_time ASC"])
    assert len(children) == 3
    assert float(children[0].data.params["optimizer.lr"]) == START_LR
    assert first.stop_reason == "all 3 trials ran"
    review = {a.path for a in client.list_artifacts(first.parent_run_id, "review")}
    assert {"review/parallel_coordinates.png", "review/parallel_coordinates.html"} <= review


def test_warm_started_sweep_stops_at_its_goal(first, store):
    uri, storage = store
    search = Search(algorithm="bayesian", num_samples=8, seed=0, max_concurrent_trials=1,
                    warm_start=first.plan.sweep_name, stop_when={"val_accuracy": 0.5})
    result = run(spec("it-second", search), tracking_uri=uri, storage=storage, progress=False)
    assert 1 <= len([t for t in result.trials if t.metrics]) < 8
    assert result.stop_reason.startswith("stop_when: val_accuracy reached 0.5")
    parent = MlflowClient(uri).get_run(result.parent_run_id)
    assert parent.data.tags["dlopt.stop_reason"] == result.stop_reason
    assert f"**Stopped:** {result.stop_reason}" in parent.data.tags["mlflow.note.content"]


def test_unknown_warm_start_is_refused_before_ray(store):
    uri, storage = store
    search = Search(algorithm="bayesian", num_samples=2, warm_start="no-such-sweep")
    with pytest.raises(SpecError) as info:
        run(spec("it-third", search), tracking_uri=uri, storage=storage, progress=False)
    assert info.value.lines[0].startswith("search.warm_start: no sweep or MLflow parent run")
