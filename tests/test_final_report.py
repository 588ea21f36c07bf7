"""The final evaluation without Ray or MLflow: a saved model on its test split."""
import json
import tempfile
from pathlib import Path

import pytest
import torch

from dlopt import Data, Experiment, Model, Optimizer
from dlopt.registry.evaluation import (EvaluationError, confusion_csv, data_override, evaluate_model,
                              load_saved)
from dlopt.train.loop import fit


@pytest.fixture(scope="module")
def saved():
    """A small digits model trained by the plain loop, saved as the final report saves it."""
    dirs, reports = [], []

    def report(metrics, write=None):
        reports.append(metrics)
        if write is not None and metrics.get("final"):
            d = Path(tempfile.mkdtemp(prefix="dlopt-eval-test-"))
            write(d)
            dirs.append(d)

    spec = Experiment(name="e", epochs=3, data=Data(dataset="digits", test_fraction=0.25),
                      model=Model(hidden=[32]), optimizer=Optimizer(name="adam", lr=3e-3))
    fit(spec, report)
    return dirs[-1], reports[-1]


def test_test_split_report_of_a_saved_model(saved, tmp_path):
    model_dir, final = saved
    model, spec, meta = load_saved(model_dir)
    report = evaluate_model(model, spec.data, spec.seed, meta)
    assert report.n == 450  # 25% of 1797, stratified
    assert set(report.metrics) == {"test_loss", "test_accuracy", "test_precision", "test_recall",
                                   "test_f1", "test_top5_accuracy"}
    assert report.metrics["test_accuracy"] > 0.8
    cm = report.confusion
    assert cm.shape == (10, 10) and cm.sum() == 450
    assert cm.trace().item() / 450 == pytest.approx(report.metrics["test_accuracy"], abs=1e-12)
    # the printed lines carry every digit: they parse back to the same floats
    for line in report.lines():
        name, text = line.split()
        assert float(text) == report.metrics[name]
    rows = (tmp_path / "cm.csv")
    confusion_csv(cm, rows)
    assert rows.read_text().splitlines()[0].startswith("true\\predicted,0,1")
    # evaluating twice gives the same numbers, bit for bit
    again = evaluate_model(load_saved(model_dir)[0], spec.data, spec.seed, meta)
    assert again.metrics == report.metrics and torch.equal(again.confusion, cm)


def test_data_override(saved, tmp_path):
    _, spec, meta = load_saved(saved[0])
    assert data_override(spec, None) == (spec.data, spec.seed)
    data, seed = data_override(spec, "synthetic")
    assert data.dataset == "synthetic" and data.test_fraction == 0.25 and seed == spec.seed
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"name": "o", "seed": 7,
                                 "data": {"dataset": "digits", "test_fraction": 0.3}}))
    data, seed = data_override(spec, str(other))
    assert (data.test_fraction, seed) == (0.3, 7)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"name": "o", "data": {"dataset": "digits", "val_fraction": 2}}))
    with pytest.raises(EvaluationError, match="val_fraction"):
        data_override(spec, str(bad))


def test_refuses_data_the_model_cannot_take(saved):
    model, spec, meta = load_saved(saved[0])
    with pytest.raises(EvaluationError, match="takes"):
        evaluate_model(model, Data(dataset="linear_1d"), 0, meta)
    with pytest.raises(EvaluationError, match="no test split"):
        evaluate_model(model, Data(dataset="digits", test_fraction=0.0), 0, meta)
