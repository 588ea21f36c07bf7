"""Evaluation metrics as pure functions of (outputs, targets).

One set of names everywhere: the loop reports them per epoch on validation with the
prefix `val_`, the final report and `dlopt evaluate` report them on the test split with
the prefix `test_`. Any `val_` name may be used as `Search.metric` or in `objectives`.

Classification (`outputs` are logits, `targets` class indices):
  loss            cross-entropy (no label smoothing)                      min
  accuracy        fraction of argmax predictions equal to the target      max
  precision       macro-averaged precision                                max
  recall          macro-averaged recall                                   max
  f1              macro-averaged F1                                       max
  top5_accuracy   target among the 5 largest logits (only when > 5 classes) max
Regression (`outputs` and `targets` of shape [n] or [n, d]):
  loss, mse       mean squared error (averaged over outputs)              min
  mae             mean absolute error                                     min
  r2              coefficient of determination (averaged over outputs)    max

Macro averages follow scikit-learn's defaults (`precision_recall_fscore_support(
average="macro", zero_division=0)`): the classes averaged over are those present in the
targets or the predictions, and a ratio with a zero denominator counts as 0.

Why not call scikit-learn here: everything comes from one confusion matrix built with
`torch.bincount`, so the per-epoch cost is a single pass over tensors already in memory
(on any device), with no copy to numpy. tests/test_metrics.py checks every value against
scikit-learn on hand-made predictions.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

CLASSIFICATION = ("loss", "accuracy", "precision", "recall", "f1", "top5_accuracy")
REGRESSION = ("loss", "mse", "mae", "r2")
# Direction of each metric, for a Search.mode / objectives default and for documentation.
MODES = {"loss": "min", "accuracy": "max", "precision": "max", "recall": "max", "f1": "max",
         "top5_accuracy": "max", "mse": "min", "mae": "min", "r2": "max"}


def confusion_matrix(targets: torch.Tensor, predictions: torch.Tensor,
                     num_classes: int) -> torch.Tensor:
    """[num_classes, num_classes] int64 counts; row = true class, column = predicted class."""
    targets, predictions = targets.reshape(-1).long(), predictions.reshape(-1).long()
    flat = targets * num_classes + predictions
    return torch.bincount(flat, minlength=num_classes * num_classes).reshape(
        num_classes, num_classes).cpu()


def macro_precision_recall_f1(cm: torch.Tensor) -> tuple[float, float, float]:
    """Macro precision, recall and F1 from a confusion matrix (scikit-learn's semantics)."""
    cm = cm.double()
    tp = cm.diag()
    predicted, actual = cm.sum(0), cm.sum(1)
    present = (predicted + actual) > 0  # labels seen in targets or predictions
    precision = torch.where(predicted > 0, tp / predicted.clamp(min=1), torch.zeros_like(tp))
    recall = torch.where(actual > 0, tp / actual.clamp(min=1), torch.zeros_like(tp))
    denom = precision + recall
    f1 = torch.where(denom > 0, 2 * precision * recall / denom.clamp(min=1e-300),
                     torch.zeros_like(tp))
    n = present.sum().clamp(min=1)
    return tuple((v[present].sum() / n).item() for v in (precision, recall, f1))


def classification(logits: torch.Tensor, targets: torch.Tensor, num_classes: int | None = None,
                   prefix: str = "") -> dict[str, float]:
    """Loss, accuracy, macro precision/recall/F1 and (over 5 classes) top-5 accuracy."""
    logits, targets = logits.float(), targets.reshape(-1).long()
    num_classes = num_classes or logits.shape[1]
    predictions = logits.argmax(1)
    cm = confusion_matrix(targets, predictions, num_classes)
    precision, recall, f1 = macro_precision_recall_f1(cm)
    out = {
        "loss": F.cross_entropy(logits.double(), targets).item(),
        "accuracy": (predictions == targets).double().mean().item(),
        "precision": precision, "recall": recall, "f1": f1,
    }
    if num_classes > 5:
        top5 = logits.topk(5, dim=1).indices
        out["top5_accuracy"] = (top5 == targets[:, None]).any(1).double().mean().item()
    return {prefix + k: v for k, v in out.items()}


def regression(outputs: torch.Tensor, targets: torch.Tensor, prefix: str = "") -> dict[str, float]:
    """MSE (also reported as loss), MAE and R^2, each averaged uniformly over outputs."""
    pred = outputs.double().reshape(len(outputs), -1)
    true = targets.double().reshape(len(targets), -1)
    err = pred - true
    mse = err.pow(2).mean().item()
    ss_res = err.pow(2).sum(0)
    ss_tot = (true - true.mean(0)).pow(2).sum(0)
    # scikit-learn: a constant target gives R^2 = 1 for a perfect fit, else 0.
    r2 = torch.where(ss_tot > 0, 1 - ss_res / ss_tot.clamp(min=1e-300),
                     torch.where(ss_res == 0, torch.ones_like(ss_res), torch.zeros_like(ss_res)))
    out = {"loss": mse, "mse": mse, "mae": err.abs().mean().item(), "r2": r2.mean().item()}
    return {prefix + k: v for k, v in out.items()}


def compute(outputs: torch.Tensor, targets: torch.Tensor, task: str, num_classes: int = 0,
            prefix: str = "") -> dict[str, float]:
    """The metric set of `task` ("classification" | "regression")."""
    if task == "regression":
        return regression(outputs, targets, prefix)
    return classification(outputs, targets, num_classes or None, prefix)
