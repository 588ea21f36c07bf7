"""The catalog's textbook experiments, run for real (local Ray, SQLite MLflow).

- linear_regression_gd.py: full-batch GD, mini-batch SGD (10) and per-sample SGD (1) each
  recover slope 2 and intercept 1 within 0.1 (read from each trial's saved final model);
- mlp_l2_sgd.py (digits, fewer epochs): val_accuracy >= 0.95.
"""
from pathlib import Path

import numpy as np
import pytest

from dlopt.artifact.files import build_from_dir
from dlopt.ml.data import load as load_data
from dlopt.spec.load import apply_overrides, load
from dlopt.driver.sweep import run

EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments"


def sweep(spec, tmp_path):
    return run(spec, tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
               storage=str(tmp_path / "ray_results"), progress=False)


def test_linear_regression_recovers_slope_and_intercept(tmp_path):
    spec = load(EXPERIMENTS / "linear_regression_gd.py")
    result = sweep(spec, tmp_path)
    assert len(result.trials) == 3 and all(t.status == "ok" for t in result.trials)
    train = load_data(spec.data.model_copy(update={"batch_size": 1}), spec.seed).train
    ols_slope, ols_intercept = np.polyfit(train.x[:, 0].numpy(), train.y[:, 0].numpy(), 1)
    fitted = {}
    for t in result.trials:
        layer = build_from_dir(Path(t.checkpoint_path))[1]
        fitted[t.config["data.batch_size"]] = (layer.weight.item(), layer.bias.item())
    assert set(fitted) == {1000, 10, 1}  # full batch (gd), mini-batch, per-sample
    for batch, (slope, intercept) in fitted.items():
        assert abs(slope - 2) < 0.1 and abs(intercept - 1) < 0.1, (batch, slope, intercept)
        # and each optimizer reached the least-squares solution of its training data
        assert slope == pytest.approx(ols_slope, abs=0.03), batch
        assert intercept == pytest.approx(ols_intercept, abs=0.03), batch
    assert result.best is not None and result.best.metrics["val_loss"] < 0.5  # noise var 0.25


def test_mlp_l2_sgd_reaches_95_percent_on_digits(tmp_path, monkeypatch):
    monkeypatch.delenv("DLOPT_MNIST_ROOT", raising=False)
    spec = apply_overrides(load(EXPERIMENTS / "mlp_l2_sgd.py"),
                           ["epochs=6", "tracking.register_as=null"])
    assert spec.data.dataset == "digits" and spec.model.hidden == [512]
    result = sweep(spec, tmp_path)
    (trial,) = result.trials
    assert trial.status == "ok"
    assert trial.metrics["val_accuracy"] >= 0.95, trial.metrics
