"""A 1-worker trial runs its loop inside the Tune trial: no TorchTrainer, same metrics,
real Tune checkpoints, the model registered from the trial's final checkpoint."""
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from dlopt import Data, Experiment, Model, Optimizer, Resources, Search, Tracking
from dlopt.sweep import run

EPOCHS = 3


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    work = tmp_path_factory.mktemp("in-trial")
    spec = Experiment(
        name="it-in-trial", seed=0, epochs=EPOCHS,
        data=Data(dataset="digits", batch_size=64),
        model=Model(hidden=[64]),
        optimizer=Optimizer(name="adam", lr=0.01),
        search=Search(algorithm="random", num_samples=1),
        resources=Resources(num_workers=1, max_failures=1),
        tracking=Tracking(experiment="it-in-trial", register_as="it-in-trial-model"),
    )
    uri = f"sqlite:///{work / 'mlflow.db'}"
    result = run(spec, tracking_uri=uri, storage=str(work / "ray_results"), progress=False)
    return result, MlflowClient(uri), work


def test_no_torch_trainer_and_tune_checkpoints(sweep):
    result, _, work = sweep
    storage = work / "ray_results"
    # a TorchTrainer run would have written storage/train-<trial_id>/
    assert not list(storage.glob("train-*"))
    trial = result.trials[0]
    assert trial.status == "ok"
    ckpt = Path(trial.checkpoint_path)
    assert ckpt.is_relative_to(storage / result.plan.sweep_name) and ckpt.name.startswith("checkpoint_")
    assert (ckpt / "model.safetensors").exists()
    # Tune keeps the last two: the final (model) checkpoint and the last epoch's
    assert len(list(ckpt.parent.glob("checkpoint_*"))) == 2


def test_metrics_once_and_report_cost_logged(sweep):
    result, client, _ = sweep
    run_id = result.trials[0].run_id
    for name in ("train_loss", "val_loss", "val_accuracy", "lr"):
        steps = [m.step for m in client.get_metric_history(run_id, name)]
        assert sorted(steps) == list(range(1, EPOCHS + 1)), (name, steps)
    costs = client.get_metric_history(run_id, "report_seconds")
    assert sorted(m.step for m in costs) == list(range(2, EPOCHS + 1))
    assert all(0 <= m.value < 2.0 for m in costs)
    assert result.best is not None and result.best.metrics["val_accuracy"] >= 0.9


def test_registered_from_in_trial_checkpoint(sweep):
    result, client, _ = sweep
    version = client.get_model_version_by_alias("it-in-trial-model", "champion")
    assert version.tags["dlopt.source_run"] == result.best.run_id
