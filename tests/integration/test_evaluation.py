"""The final report after a real sweep (local Ray, SQLite MLflow): test metrics on the
registered champion, reproduced exactly by `dlopt evaluate` in a fresh process, and the
linear-regression example's test MSE, MAE and R^2 equal to scikit-learn's."""
import csv
import io
import subprocess
import sys

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from dlopt import Data, Experiment, Model, Optimizer, Resources, Search, Tracking, tune
from dlopt.driver.sweep import run

NOISE_VARIANCE = 0.25  # y = 2x + 1 + N(0, 0.5^2)


def run_cli(*args, cwd):
    """The real `dlopt` entry point in a fresh process."""
    return subprocess.run([sys.executable, "-m", "dlopt.cli", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


def sweep(tmp_path_factory, name, spec):
    work = tmp_path_factory.mktemp(name)
    uri = f"sqlite:///{work / 'mlflow.db'}"
    result = run(spec, tracking_uri=uri, storage=str(work / "ray_results"), progress=False)
    return result, MlflowClient(uri), work, uri


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    spec = Experiment(
        name="it-eval-digits", seed=0, epochs=3,
        data=Data(dataset="digits", batch_size=64, val_fraction=0.2, test_fraction=0.2),
        model=Model(hidden=[64]),
        optimizer=Optimizer(name="adam", lr=tune.grid([0.003, 0.01])),
        # a new metric name as the selection metric
        search=Search(algorithm="grid", metric="val_f1", mode="max", max_concurrent_trials=1),
        resources=Resources(num_workers=1),
        tracking=Tracking(experiment="it-eval", register_as="it-eval-digits"),
    )
    return sweep(tmp_path_factory, "eval-digits", spec)


@pytest.fixture(scope="module")
def linear(tmp_path_factory):
    spec = Experiment(
        name="it-eval-linear", seed=0, epochs=8,
        data=Data(dataset="linear_1d", n_samples=2000, batch_size=32),  # 400 test points
        model=Model(arch="linear"),
        optimizer=Optimizer(name="adam", lr=0.05),
        search=Search(metric="val_mse", mode="min"),
        resources=Resources(num_workers=1),
        tracking=Tracking(experiment="it-eval-linear", register_as="it-eval-linear"),
    )
    return sweep(tmp_path_factory, "eval-linear", spec)


def champion_test_tags(client, name):
    version = client.get_model_version_by_alias(name, "champion")
    return version, {k[len("metric."):]: v for k, v in version.tags.items()
                     if k.startswith("metric.test_")}


def evaluate_cli(work, uri, model):
    out = run_cli("evaluate", model, "--tracking-uri", uri, cwd=work)
    assert out.returncode == 0, out.stderr
    pairs = [line.split() for line in out.stdout.splitlines() if line.startswith("test_")]
    return {k: v for k, v in pairs}, out.stdout


def test_selection_used_validation_only(digits):
    result, client, _, _ = digits
    assert len(result.trials) == 2 and all(t.status == "ok" for t in result.trials)
    assert result.best.metrics["val_f1"] == max(t.metrics["val_f1"] for t in result.trials)
    for t in result.trials:  # what selection saw: validation metrics, nothing from the test split
        assert {"val_precision", "val_recall", "val_f1", "val_top5_accuracy"} <= set(t.metrics)
        assert not [k for k in t.metrics if k.startswith("test_")]
    # the test metrics were logged once, on the chosen trial only
    assert len(client.get_metric_history(result.best.run_id, "test_accuracy")) == 1
    for t in result.trials:
        if t.trial_id != result.best.trial_id:
            assert client.get_metric_history(t.run_id, "test_accuracy") == []


def test_champion_has_test_metrics_and_confusion_matrix(digits):
    result, client, _, _ = digits
    version, tags = champion_test_tags(client, "it-eval-digits")
    assert version.tags["dlopt.source_run"] == result.best.run_id
    assert set(tags) == {"test_loss", "test_accuracy", "test_precision", "test_recall", "test_f1",
                         "test_top5_accuracy"}
    assert float(tags["test_accuracy"]) > 0.85
    assert version.tags["dlopt.test_split"].startswith("digits seed=0")
    assert result.registered[0].test_metrics["test_accuracy"] == float(tags["test_accuracy"])
    for run_id in (result.best.run_id, result.parent_run_id):
        run = client.get_run(run_id)
        assert run.data.metrics["test_accuracy"] == float(tags["test_accuracy"])
        names = {a.path for a in client.list_artifacts(run_id, "evaluation")}
        assert names == {"evaluation/confusion_matrix.png", "evaluation/confusion_matrix.csv",
                         "evaluation/test_metrics.json"}
        text = client.download_artifacts(run_id, "evaluation/confusion_matrix.csv")
        rows = list(csv.reader(io.StringIO(open(text).read())))[1:]
        cm = np.array([[int(v) for v in r[1:]] for r in rows])
        assert cm.shape == (10, 10) and cm.sum() == 360  # 20% of 1797 digits
        assert np.trace(cm) / cm.sum() == pytest.approx(float(tags["test_accuracy"]), abs=1e-12)
        png = client.download_artifacts(run_id, "evaluation/confusion_matrix.png")
        assert open(png, "rb").read(8) == b"\x89PNG\r\n\x1a\n"


def test_dlopt_evaluate_reproduces_the_tags_exactly(digits):
    result, client, work, uri = digits
    _, tags = champion_test_tags(client, "it-eval-digits")
    printed, stdout = evaluate_cli(work, uri, "models:/it-eval-digits@champion")
    assert printed == tags  # same strings: full float precision, bit for bit
    assert "confusion matrix" in stdout


def test_dlopt_evaluate_refuses_unknown_model(digits, capsys):
    from dlopt.cli.main import main

    _, _, _, uri = digits
    assert main(["evaluate", "models:/no-such-model@champion", "--tracking-uri", uri]) == 1
    assert "no-such-model" in capsys.readouterr().err


def test_linear_regression_test_metrics_equal_sklearn(linear):
    from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score

    import dlopt
    from dlopt.ml.data import load

    result, client, work, uri = linear
    version, tags = champion_test_tags(client, "it-eval-linear")
    assert set(tags) == {"test_loss", "test_mse", "test_mae", "test_r2"}
    # the same predictions, computed here and scored by scikit-learn
    import mlflow

    mlflow.set_tracking_uri(uri)
    model = dlopt.load_model("models:/it-eval-linear@champion")
    spec = result.plan.spec_json
    d = load(Data.model_validate(spec["data"]), spec["seed"], with_test=True)
    with torch.no_grad():
        pred = model(d.test.x).double().numpy()
    true = d.test.y.double().numpy()
    assert len(true) == 400
    assert float(tags["test_mse"]) == pytest.approx(mean_squared_error(true, pred), rel=1e-12)
    assert float(tags["test_mae"]) == pytest.approx(mean_absolute_error(true, pred), rel=1e-12)
    assert float(tags["test_r2"]) == pytest.approx(r2_score(true, pred), rel=1e-12)
    assert abs(float(tags["test_mse"]) - NOISE_VARIANCE) <= 0.5 * NOISE_VARIANCE
    assert float(tags["test_r2"]) > 0.8
    printed, _ = evaluate_cli(work, uri, "models:/it-eval-linear@champion")
    assert printed == tags
