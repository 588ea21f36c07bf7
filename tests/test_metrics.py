"""Metric values on hand-made predictions equal scikit-learn's."""
import numpy as np
import pytest
import torch
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    log_loss,
    mean_absolute_error,
    mean_squared_error,
    precision_recall_fscore_support,
    r2_score,
    top_k_accuracy_score,
)

from dlopt.ml import metrics


def sk_classification(logits: np.ndarray, y: np.ndarray) -> dict:
    pred = logits.argmax(1)
    p, r, f, _ = precision_recall_fscore_support(y, pred, average="macro", zero_division=0)
    probs = torch.softmax(torch.from_numpy(logits).double(), 1).numpy()
    out = {"accuracy": accuracy_score(y, pred), "precision": p, "recall": r, "f1": f,
           "loss": log_loss(y, probs, labels=list(range(logits.shape[1])))}
    if logits.shape[1] > 5:
        out["top5_accuracy"] = top_k_accuracy_score(y, logits, k=5,
                                                    labels=list(range(logits.shape[1])))
    return out


def one_hot_logits(pred, k):
    logits = np.full((len(pred), k), -3.0)
    logits[np.arange(len(pred)), pred] = 3.0
    return logits


# Hand-made cases: perfect, all wrong, a class never predicted, a class never true,
# a class in neither (it must not count in the macro average), a single example.
HAND = [
    ([0, 1, 2, 0, 1, 2], [0, 1, 2, 0, 1, 2], 3),
    ([0, 1, 2, 0, 1, 2], [1, 2, 0, 1, 2, 0], 3),
    ([0, 0, 1, 1, 2, 2], [0, 0, 1, 1, 1, 1], 3),
    ([0, 0, 1, 1], [0, 2, 1, 2], 3),
    ([0, 1, 0, 1, 3], [0, 1, 1, 1, 3], 4),
    ([2], [2], 3),
]


@pytest.mark.parametrize("y,pred,k", HAND)
def test_hand_made_classification_equals_sklearn(y, pred, k):
    y, pred = np.array(y), np.array(pred)
    logits = one_hot_logits(pred, k)
    ours = metrics.classification(torch.tensor(logits, dtype=torch.float32), torch.tensor(y), k)
    ref = sk_classification(logits, y)
    for name in ("accuracy", "precision", "recall", "f1"):
        assert ours[name] == pytest.approx(ref[name], abs=1e-12), name
    assert ours["loss"] == pytest.approx(ref["loss"], rel=1e-5)
    assert "top5_accuracy" not in ours  # only with more than 5 classes
    cm = metrics.confusion_matrix(torch.tensor(y), torch.tensor(pred), k).numpy()
    assert (cm == confusion_matrix(y, pred, labels=list(range(k)))).all()


def test_hand_made_values():
    """A worked example, independent of any library: classes 0,1,2; class 2 never predicted."""
    y = torch.tensor([0, 0, 1, 1, 2, 2])
    pred = torch.tensor([0, 0, 1, 1, 1, 1])
    m = metrics.classification(torch.tensor(one_hot_logits(pred.numpy(), 3)), y, 3)
    # precision: class0 2/2, class1 2/4, class2 0 (no predictions) -> 0.5
    # recall:    class0 2/2, class1 2/2, class2 0/2 -> 2/3
    # f1:        1, 2*.5*1/1.5 = 2/3, 0 -> 5/9
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["precision"] == pytest.approx(0.5)
    assert m["recall"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx(5 / 9)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_predictions_many_classes_equal_sklearn(seed):
    rng = np.random.default_rng(seed)
    k, n = 10, 257
    y = rng.integers(0, k, n)
    logits = rng.normal(size=(n, k)).astype(np.float32)
    logits[np.arange(n), y] += rng.uniform(0, 2, n).astype(np.float32)  # better than chance
    ours = metrics.classification(torch.from_numpy(logits), torch.from_numpy(y), k, prefix="val_")
    ref = sk_classification(logits.astype(np.float64), y)
    assert set(ours) == {f"val_{n}" for n in metrics.CLASSIFICATION}
    for name, value in ref.items():
        tol = 1e-5 if name == "loss" else 1e-12
        assert ours[f"val_{name}"] == pytest.approx(value, rel=tol, abs=tol), name
    cm = metrics.confusion_matrix(torch.from_numpy(y), torch.from_numpy(logits.argmax(1)), k)
    assert (cm.numpy() == confusion_matrix(y, logits.argmax(1), labels=list(range(k)))).all()
    assert cm.sum() == n


@pytest.mark.parametrize("shape", [(50,), (50, 1), (50, 3)])
def test_regression_equals_sklearn(shape):
    rng = np.random.default_rng(7)
    true = rng.normal(size=shape)
    pred = true + rng.normal(scale=0.3, size=shape)
    ours = metrics.regression(torch.from_numpy(pred).float(), torch.from_numpy(true).float(),
                              prefix="test_")
    p32 = torch.from_numpy(pred).float().double().numpy()
    t32 = torch.from_numpy(true).float().double().numpy()
    assert set(ours) == {f"test_{n}" for n in metrics.REGRESSION}
    assert ours["test_mse"] == pytest.approx(mean_squared_error(t32, p32), rel=1e-12)
    assert ours["test_loss"] == ours["test_mse"]
    assert ours["test_mae"] == pytest.approx(mean_absolute_error(t32, p32), rel=1e-12)
    assert ours["test_r2"] == pytest.approx(r2_score(t32, p32), rel=1e-12)


def test_regression_edge_cases_match_sklearn():
    const = np.full(5, 2.0)
    for pred in (const.copy(), const + 1):  # constant target: perfect -> 1, otherwise 0
        ours = metrics.regression(torch.from_numpy(pred), torch.from_numpy(const))
        assert ours["r2"] == r2_score(const, pred)
    worse = np.array([3.0, -1.0, 4.0])  # worse than predicting the mean: negative R^2
    true = np.array([1.0, 2.0, 3.0])
    assert metrics.regression(torch.from_numpy(worse), torch.from_numpy(true))["r2"] == \
        pytest.approx(r2_score(true, worse), rel=1e-12)


def test_compute_dispatches_on_task():
    logits = torch.randn(8, 3)
    assert set(metrics.compute(logits, torch.randint(0, 3, (8,)), "classification", 3)) == \
        {"loss", "accuracy", "precision", "recall", "f1"}
    assert set(metrics.compute(torch.randn(8, 1), torch.randn(8, 1), "regression")) == \
        set(metrics.REGRESSION)
    assert set(metrics.MODES) >= set(metrics.CLASSIFICATION) | set(metrics.REGRESSION)


def test_spec_metric_names_match_the_metrics_module():
    from dlopt.spec import VAL_METRICS

    assert VAL_METRICS["classification"] == tuple(f"val_{n}" for n in metrics.CLASSIFICATION)
    assert VAL_METRICS["regression"] == tuple(f"val_{n}" for n in metrics.REGRESSION)


@pytest.mark.parametrize("data,search,ok", [
    ({"dataset": "digits"}, {"metric": "val_f1"}, True),
    ({"dataset": "digits"}, {"metric": "val_top5_accuracy"}, True),
    ({"dataset": "linear_1d"}, {"metric": "val_r2"}, True),
    ({"dataset": "linear_1d"}, {"metric": "val_mae", "mode": "min"}, True),
    ({"dataset": "digits"}, {"objectives": {"val_f1": "max", "model_bytes": "min"}}, True),
    ({"dataset": "linear_1d"}, {}, False),  # default val_accuracy on a regression task
    ({"dataset": "digits"}, {"metric": "val_r2"}, False),
    ({"dataset": "synthetic", "n_classes": 3}, {"metric": "val_top5_accuracy"}, False),
    ({"dataset": "linear_1d"}, {"objectives": {"val_mse": "min", "val_f1": "max"}}, False),
])
def test_search_metric_must_be_one_the_task_reports(data, search, ok, tmp_path):
    import json

    from dlopt.spec.load import SpecError, load

    path = tmp_path / "spec.json"
    path.write_text(json.dumps({"name": "m", "data": data, "search": search}))
    if ok:
        load(path)
    else:
        with pytest.raises(SpecError) as err:
            load(path)
        assert err.value.lines[0].startswith("search.") and "does not report" in err.value.lines[0]
