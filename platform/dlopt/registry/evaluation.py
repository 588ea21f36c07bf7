"""The final report: the chosen model, as saved (compressed), evaluated on the test split.

Selection uses validation metrics only, so the best validation score is biased upward;
the test split (withheld from training and selection, see dlopt.ml.data) gives an unbiased
number. It runs once per sweep on the driver, after selection and registration
(dlopt.driver.finalize), and again on demand with `dlopt evaluate models:/NAME@ALIAS`. Both
load the model the same way (dlopt.artifact.files.build_inference_model: the saved input
transform in front of the network, compressed formats included), feed it the test split as
the data source gives it (raw, as a user of the registered model would), evaluate it on the
CPU in fp32 and so print the same numbers.

This is the only module that calls `data.load(..., with_test=True)`
(tests/test_splits.py checks that statically).
"""
from __future__ import annotations

import csv
import json
import math
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Optional

import torch
from pydantic import ValidationError

from dlopt.artifact.files import META, SPEC, build_inference_model
from dlopt.ml import data as data_mod
from dlopt.ml import metrics as metrics_mod
from dlopt.ml import streams
from dlopt.registry.register import local_copy
from dlopt.registry.versions import RegisteredModel
from dlopt.spec import Data, Experiment
from dlopt.spec.load import SpecError, load
from dlopt.tracking.retry import drain_timeout_s, retry_transient
from dlopt.train.loop import predict
from dlopt.train.steps import predict_streamed

PREFIX = "test_"
TAG_PREFIX = "metric."  # version tags: metric.test_accuracy = repr(value), exact
ARTIFACT_DIR = "evaluation"


class EvaluationError(ValueError):
    """The model cannot be evaluated on the data asked for (no test split, wrong shape)."""


@dataclass
class Report:
    metrics: dict[str, float]  # test_* names, see dlopt.ml.metrics
    task: str
    n: int  # test examples
    data: str  # what was evaluated: dataset, seed, fractions
    confusion: Optional[torch.Tensor] = None  # classification only, rows = true class
    source: dict = field(default_factory=dict)  # where the model came from

    def lines(self) -> list[str]:
        """`name value` per metric, full float precision (repr), so runs compare exactly."""
        return [f"{k} {v!r}" for k, v in sorted(self.metrics.items())]

    def to_json(self) -> dict:
        return {"metrics": self.metrics, "task": self.task, "n": self.n, "data": self.data,
                "source": self.source,
                "confusion_matrix": self.confusion.tolist() if self.confusion is not None else None}


# ------------------------------------------------------------------ loading
def model_dir_from_uri(uri: str) -> Path:
    """A registered model (`models:/NAME@ALIAS`, `models:/NAME/3`, `runs:/...`) -> its saved dir."""
    import mlflow  # deferred on purpose: only this function needs MLflow (heavy to import)

    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri))
    for candidate in (local / "artifacts" / "model_dir", local):  # pyfunc layout of dlopt.registry.register
        if (candidate / "spec.json").exists():
            return candidate
    raise EvaluationError(f"{uri}: not a dlopt model (no spec.json in its artifacts)")


def load_saved(model_dir: Path) -> tuple[torch.nn.Module, Experiment, dict]:
    """The saved model (dense or compressed, behind its input transform), its resolved spec
    and its metadata."""
    model_dir = Path(model_dir)
    spec = Experiment.model_validate(json.loads((model_dir / SPEC).read_text()))
    meta = json.loads((model_dir / META).read_text())
    return build_inference_model(model_dir), spec, meta


def data_override(spec: Experiment, data: Optional[str]) -> tuple[Data, int]:
    """`--data`: a spec file (its data section and seed) or a dataset name (the model's own
    data settings with that dataset). Without it, the model's own data and seed."""
    if not data:
        return spec.data, spec.seed
    if Path(data).suffix in (".py", ".yaml", ".yml", ".json") and Path(data).exists():
        try:
            other = load(data)
        except SpecError as err:
            raise EvaluationError(f"--data {data}: " + "; ".join(err.lines)) from None
        return other.data, other.seed
    merged = {**spec.data.model_dump(mode="json"), "dataset": data}
    try:
        return Data.model_validate(merged), spec.seed
    except ValidationError as err:  # pydantic's message names the field
        raise EvaluationError(f"--data {data!r}: {err}") from None


# ------------------------------------------------------------------ evaluating
def evaluate_model(model: torch.nn.Module, data: Data, seed: int, meta: Optional[dict] = None,
                   batch_size: int = 1024) -> Report:
    """Test-split metrics (and confusion matrix) of `model` on `data` split with `seed`."""
    if data.source is not None and data.source.format == "function":
        raise EvaluationError(f"data.source: {data.source.function} returns a ray.data.Dataset, "
                              "and the test report does not start Ray; no test report")
    datasets = data_mod.load(data, seed, with_test=True)
    test = datasets.test
    if test is None:
        raise EvaluationError(f"data.test_fraction is {data.test_fraction}: there is no test "
                              f"split of {data.dataset!r} to evaluate on")
    if meta and (tuple(meta.get("input_shape", datasets.input_shape)) != datasets.input_shape
                 or meta.get("out_features", datasets.out_features) != datasets.out_features
                 or meta.get("task", datasets.task) != datasets.task):
        raise EvaluationError(
            f"the model takes {tuple(meta['input_shape'])} -> {meta['out_features']} "
            f"({meta.get('task')}) but {data.dataset!r} is {datasets.input_shape} -> "
            f"{datasets.out_features} ({datasets.task})")
    # fp32 on the CPU: what a deployed (possibly int8) model runs as, and the same numbers
    # on the driver and in `dlopt evaluate`. A model saved with its input transform takes
    # the raw test inputs (what its users hold); an older one the standardized ones.
    raw = bool(meta and meta.get("input_transform"))
    if streams.is_streamed(test):  # a Data.source: read batch by batch, never whole
        out, y = predict_streamed(model, datasets.raw_test if raw else test, "32", "cpu",
                                  batch_size)
    else:
        x, y = datasets.raw_test.x if raw else test.x, test.y
        out = predict(model, x, precision="32", device="cpu", batch_size=batch_size)
    values = metrics_mod.compute(out, y, datasets.task, datasets.num_classes, prefix=PREFIX)
    confusion = None
    if datasets.task == "classification":
        confusion = metrics_mod.confusion_matrix(y, out.argmax(1), datasets.num_classes)
    name = data.dataset if data.source is None else f"{data.source.format}:{data.source.path}"
    where = (f"{name} seed={seed} val_fraction={data.val_fraction} "
             f"test_fraction={data.test_fraction} n={len(test)}")
    return Report(metrics=values, task=datasets.task, n=len(test), data=where, confusion=confusion)


def evaluate_uri(uri: str, data: Optional[str] = None) -> Report:
    """`dlopt evaluate`: a registered model on its own test split (or on `data`)."""
    model_dir = model_dir_from_uri(uri)
    model, spec, meta = load_saved(model_dir)
    data_spec, seed = data_override(spec, data)
    report = evaluate_model(model, data_spec, seed, meta)
    report.source = {"uri": uri}
    return report


# ------------------------------------------------------------------ writing
def confusion_csv(confusion: torch.Tensor, path: Path) -> Path:
    k = confusion.shape[0]
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["true\\predicted", *range(k)])
        for i in range(k):
            w.writerow([i, *confusion[i].tolist()])
    return path


def confusion_png(confusion: torch.Tensor, path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")  # the driver has no display
    from matplotlib import pyplot as plt

    k = confusion.shape[0]
    fig, ax = plt.subplots(figsize=(1.2 + 0.45 * k, 1 + 0.45 * k), dpi=100)
    ax.imshow(confusion.numpy(), cmap="Blues")
    ax.set(xticks=range(k), yticks=range(k), xlabel="predicted", ylabel="true", title=title)
    ax.tick_params(labelsize=8)
    ax.title.set_fontsize(9)
    top = confusion.max().item() or 1
    for i in range(k):
        for j in range(k):
            v = confusion[i, j].item()
            if v:
                ax.text(j, i, str(v), ha="center", va="center", fontsize=7,
                        color="white" if v > top / 2 else "black")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def log_report(client, run_id: str, report: Report, metric_prefix: str = "",
               artifact_dir: str = ARTIFACT_DIR) -> None:
    """Test metrics, the confusion matrix (PNG + CSV) and the report JSON on one MLflow run."""
    from mlflow.entities import (
        Metric,  # deferred on purpose: `dlopt evaluate` loads MLflow late
    )

    now = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(metric_prefix + k, v, now, 0)
                                      for k, v in report.metrics.items() if math.isfinite(v)])
    client.set_tag(run_id, "dlopt.test_split", report.data)
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "test_metrics.json").write_text(json.dumps(report.to_json(), indent=1))
        if report.confusion is not None:
            acc = report.metrics.get(PREFIX + "accuracy", float("nan"))
            confusion_csv(report.confusion, Path(d) / "confusion_matrix.csv")
            confusion_png(report.confusion, Path(d) / "confusion_matrix.png",
                          f"test confusion matrix (n={report.n}, accuracy={acc:.4f})")
        client.log_artifacts(run_id, d, artifact_dir)


def tag_version(client, name: str, version: str, report: Report) -> None:
    for k, v in report.metrics.items():
        client.set_model_version_tag(name, version, TAG_PREFIX + k, repr(v))
    client.set_model_version_tag(name, version, "dlopt.test_split", report.data)


def final_report(tracker, best, registered: list[RegisteredModel],
                 trials: list) -> list[RegisteredModel]:
    """Once per sweep, after selection: each registered model (or the best trial's saved
    model when nothing is registered) on the test split, logged on its trial run, on the
    parent run, and as tags on its model version. Returns `registered`, each with the test
    metrics measured for it (for the run summary)."""
    by_trial = {t.trial_id: t for t in trials}
    targets: list[tuple[str, Optional[RegisteredModel]]] = [(r.trial_id, r) for r in registered]
    if not targets and best is not None and best.checkpoint_path:
        targets = [(best.trial_id, None)]
    measured: dict[str, dict[str, float]] = {}
    for i, (trial_id, reg) in enumerate(targets):
        report = evaluate_target(tracker, by_trial, trial_id, reg)
        if report is None:
            continue
        log_target(tracker, by_trial.get(trial_id), trial_id, reg, report, first=i == 0)
        if reg is not None:
            measured[reg.version] = report.metrics
    return [replace(r, test_metrics=measured[r.version]) if r.version in measured else r
            for r in registered]


def evaluate_target(tracker, by_trial: dict, trial_id: str,
                    reg: Optional[RegisteredModel]) -> Optional[Report]:
    """The test-split report of a registered version (downloaded) or of a trial's saved
    model; None, tagged on the parent, where the model cannot be evaluated."""
    if reg is not None:
        # the download is the one call here that is not the (retrying) tracker client's:
        # it retries through an MLflow outage the same bounded way
        model_dir = retry_transient(lambda: model_dir_from_uri(reg.version_uri), drain_timeout_s(),
                                    f"download {reg.label}")
    else:
        model_dir = local_copy(by_trial[trial_id].checkpoint_path)
    model, spec, meta = load_saved(model_dir)
    try:
        report = evaluate_model(model, spec.data, spec.seed, meta)
    except EvaluationError as err:
        tracker.client.set_tag(tracker.parent_id, "dlopt.test_report", f"skipped: {err}")
        return None
    report.source = {"trial_id": trial_id, **({"model": reg.label} if reg else {})}
    return report


def log_target(tracker, trial, trial_id: str, reg: Optional[RegisteredModel], report: Report,
               first: bool) -> None:
    """The report on the trial's run, on the parent (the chosen model's numbers; further
    Pareto models by trial) and as tags on the model version."""
    client = tracker.client
    run_id = (trial.run_id if trial else None) or tracker.run_id_of(trial_id)
    if run_id:
        log_report(client, run_id, report)
    log_report(client, tracker.parent_id, report,
               metric_prefix="" if first else f"{trial_id}/",
               artifact_dir=ARTIFACT_DIR if first else f"{ARTIFACT_DIR}/{trial_id}")
    if reg is not None:
        tag_version(client, reg.name, reg.version, report)
