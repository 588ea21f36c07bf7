"""A real sweep: local Ray, TorchTrainer with 2 DDP workers per trial, SQLite MLflow."""
import subprocess
import sys

import pytest
from mlflow.tracking import MlflowClient

from dlopt import Data, Experiment, Model, Optimizer, Resources, Search, Tracking, tune
from dlopt.driver.sweep import run

EPOCHS = 4


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    work = tmp_path_factory.mktemp("sweep")
    spec = Experiment(
        name="it-sweep", seed=0, epochs=EPOCHS,
        data=Data(dataset="digits", batch_size=64),
        model=Model(hidden=[64], init="kaiming_uniform"),
        optimizer=Optimizer(name="adam", lr=tune.grid([0.003, 0.01])),
        search=Search(algorithm="grid", max_concurrent_trials=2),
        resources=Resources(num_workers=2),
        tracking=Tracking(experiment="it", register_as="it-model"),
    )
    uri = f"sqlite:///{work / 'mlflow.db'}"
    result = run(spec, tracking_uri=uri, storage=str(work / "ray_results"), progress=False)
    return result, MlflowClient(uri), work


def test_one_parent_two_children(sweep):
    result, client, _ = sweep
    runs = client.search_runs([result.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == result.parent_run_id]
    assert len(parents) == 1 and parents[0].info.run_id == result.parent_run_id
    # dlopt's summary carries Ray's own ResultGrid too
    assert len(result.result_grid) == 2 and not result.result_grid.errors
    assert len(children) == 2 and len(runs) == 3
    assert sorted(float(c.data.params["optimizer.lr"]) for c in children) == [0.003, 0.01]
    for c in children:
        assert c.data.params["resources.num_workers"] == "2"
        assert c.data.tags["dlopt.spec_hash"] and c.data.tags["dlopt.trial_id"]
        assert c.info.status == "FINISHED"


def test_every_epoch_metric_exactly_once(sweep):
    result, client, _ = sweep
    for t in result.trials:
        for name in ("train_loss", "val_loss", "val_accuracy", "lr"):
            steps = [m.step for m in client.get_metric_history(t.run_id, name)]
            assert sorted(steps) == list(range(1, EPOCHS + 1)), (name, steps)
        assert len(client.get_metric_history(t.run_id, "model_bytes")) == 1


def test_best_accuracy_and_registered_champion(sweep):
    result, client, work = sweep
    assert result.best is not None and result.best.metrics["val_accuracy"] >= 0.9
    version = client.get_model_version_by_alias("it-model", "champion")
    assert version.tags["dlopt.source_run"] == result.best.run_id
    # the registered model loads in a fresh process and reproduces the logged accuracy
    code = (
        "import mlflow, torch, dlopt\n"
        f"mlflow.set_tracking_uri({result.tracking_uri!r})\n"
        # the registered model takes the raw rows sklearn returns (its input transform inside)
        "from sklearn.datasets import load_digits\nfrom dlopt.ml.splits import split_indices\n"
        "m = dlopt.load_model('models:/it-model@champion')\n"
        "b = load_digits()\n_, val, _ = split_indices(b.target, 0.2, 0.2, 0, True)\n"
        "x, y = torch.from_numpy(b.data[val]), torch.from_numpy(b.target[val])\n"
        "print(int((m(x).argmax(1) == y).sum()), len(y))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=work)
    assert out.returncode == 0, out.stderr
    # the same predictions: the number of correct answers matches the logged accuracy
    correct, n_val = map(int, out.stdout.split())
    assert correct == round(result.best.metrics["val_accuracy"] * n_val)
