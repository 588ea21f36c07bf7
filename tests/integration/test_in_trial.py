"""A 1-worker trial runs its loop inside the Tune trial: no TorchTrainer, same metrics,
real Tune checkpoints, the model registered from the trial's final checkpoint."""
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from dlopt import Data, Experiment, Model, Optimizer, Resources, Search, Tracking
from dlopt.driver.sweep import run

EPOCHS = 6  # short epochs (~5 ms): report_every='auto' batches them


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
    # each epoch is stamped with its own end time, in epoch order, even when reported in a batch
    ends = [m.timestamp for m in sorted(client.get_metric_history(run_id, "val_loss"),
                                         key=lambda m: m.step)]
    assert ends == sorted(ends)
    # a report carries the previous report's cost; the first epoch and the last are reported
    costs = client.get_metric_history(run_id, "report_seconds")
    steps = sorted(m.step for m in costs)
    assert steps and steps[-1] == EPOCHS and set(steps) <= set(range(2, EPOCHS + 1)), steps
    assert all(0 <= m.value < 2.0 for m in costs)


def test_short_epochs_reported_in_batches(sweep):
    """Epochs far shorter than a report are batched (dlopt.train.cadence): Tune saw fewer
    reports than epochs, yet MLflow has every epoch (checked above)."""
    result, client, _ = sweep
    reports = client.get_metric_history(result.trials[0].run_id, "report_seconds")
    # reports = epoch reports + the final one; each after the first logs report_seconds
    assert len(reports) + 1 < EPOCHS, [m.step for m in reports]
    assert result.best is not None and result.best.metrics["val_accuracy"] >= 0.9


def test_registered_from_in_trial_checkpoint(sweep):
    result, client, _ = sweep
    version = client.get_model_version_by_alias("it-in-trial-model", "champion")
    assert version.tags["dlopt.source_run"] == result.best.run_id
