"""A real sweep (local Ray, SQLite MLflow) that searches augmentation: digits as 8x8 images
with the `cnn` model, random crop and mixup searched (on training batches only). Each trial trains,
the best registers, and the registered model takes raw rows exactly as before (its input
contract and predictions on the raw test split are those of a model trained without it)."""
import mlflow
import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

import dlopt
from dlopt import (Augment, Data, Experiment, Model, Optimizer, Regularization, Resources,
                   Search, Tracking, tune)
from dlopt.driver.sweep import run
from dlopt.ml.data import load as load_data


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    work = tmp_path_factory.mktemp("augment-sweep")
    uri = f"sqlite:///{work / 'mlflow.db'}"
    spec = Experiment(
        name="it-augment", seed=0, epochs=4,
        data=Data(dataset="digits", batch_size=64),
        model=Model(arch="cnn"),
        optimizer=Optimizer(name="adam", lr=3e-3),
        regularization=Regularization(augment=Augment(
            crop_padding=tune.grid([1, 0]), mixup_alpha=tune.grid([0.2, 0.0]))),
        search=Search(algorithm="grid", max_concurrent_trials=2),
        resources=Resources(num_workers=1),
        tracking=Tracking(experiment="it-augment", register_as="it-augment"))
    result = run(spec, tracking_uri=uri, storage=str(work / "ray_results"), progress=False)
    return spec, result, uri


def test_every_augmented_trial_trains_and_logs_its_augmentation(swept):
    spec, result, uri = swept
    assert len(result.trials) == 4 and all(t.status == "ok" for t in result.trials)
    drawn = {(t.config["regularization.augment.crop_padding"],
              t.config["regularization.augment.mixup_alpha"]) for t in result.trials}
    assert drawn == {(1, 0.2), (1, 0.0), (0, 0.2), (0, 0.0)}
    for t in result.trials:
        assert t.metrics["val_accuracy"] > 0.5, (t.config, t.metrics)
    params = MlflowClient(uri).get_run(result.best.run_id).data.params
    assert params["regularization.augment.flip"] == "False"


def test_registered_model_takes_raw_rows_as_before(swept):
    spec, result, uri = swept
    (registered,) = result.registered
    mlflow.set_tracking_uri(uri)
    model = dlopt.load_model(registered.uri)
    raw = load_data(spec.data, spec.seed, with_test=True).raw_test
    assert raw.x.shape[1:] == (64,)  # digits' raw 64 pixel values 0..16, not images
    with torch.no_grad():
        pred = model(raw.x).argmax(1).numpy()
    accuracy = float(np.mean(pred == raw.y.numpy()))
    assert accuracy == pytest.approx(registered.test_metrics["test_accuracy"], abs=1e-9)
    assert accuracy > 0.5
    pyfunc = mlflow.pyfunc.load_model(registered.uri)
    assert pyfunc.metadata.metadata["dlopt.input"]["shape"] == [-1, 64]  # as before
    out = pyfunc.predict(raw.x[:5].numpy().astype(np.float64))  # any numeric dtype, raw rows
    assert np.asarray(out).shape[0] == 5
