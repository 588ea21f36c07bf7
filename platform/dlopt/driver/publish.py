"""The sweep review, written to MLflow by the driver after the sweep.

Called once from `finalize.finalize` (docs/architecture.md, "One MLflow writer: the
driver"). It writes:

- the parent run's description (`mlflow.note.content`, dlopt.driver.description): the
  experiment, the search, the best trial and its metrics, the registered model versions
  with links, and the command that reproduces the sweep;
- artifacts on the parent under `review/`: `results.csv` / `results.html` (every trial),
  `learning_curves.png` (the best 20 trials, one figure), and for sweeps with compression stages
  `compression.csv` / `compression.png` (accuracy against model bytes);
- on each child: `compression_report.json` (with compression stages) and the checkpoint
  reference tag where the trial did not set it (the resolved
  `spec.json` is already logged by the tracking callback).

Tables, text and plots are pure builders (dlopt.driver.tables, description, plots); this
module is the thin part that reads metric histories and writes.
"""
from __future__ import annotations

import logging
import math
import tempfile
from pathlib import Path
from typing import Optional, Sequence

from dlopt.driver import importance
from dlopt.driver.context import Sweep
from dlopt.driver.description import ARTIFACT_DIR, description
from dlopt.driver.plots import CURVE_METRICS, PLOTS
from dlopt.driver.tables import (
    compression_report,
    compression_rows,
    results_csv,
    results_html,
    sort_rows,
    trial_rows,
)
from dlopt.registry.versions import RegisteredModel
from dlopt.tracking.scrub import scrub

log = logging.getLogger(__name__)


# The learning-curve figure draws the best trials only: a line (and legend entry) per trial
# is unreadable past a few dozen, and each costs a metric-history read per curve metric.
CURVE_TRIALS = 20


def child_runs(client, experiment_id: str, parent_id: str) -> dict[str, object]:
    """trial id -> its child run (info, tags), in pages of 1,000: one query per 1,000 trials
    instead of a `get_run` per trial."""
    out, token = {}, None
    while True:
        page = client.search_runs([experiment_id], f"tags.`mlflow.parentRunId` = '{parent_id}'",
                                  max_results=1000, page_token=token)
        for run in page:
            trial_id = run.data.tags.get("dlopt.trial_id")
            if trial_id:
                out[trial_id] = run
        token = getattr(page, "token", None)
        if not token:
            return out


def histories_from_mlflow(client, rows: list[dict], metrics: Sequence[str]) -> dict[str, dict[str, list]]:
    """Per-epoch metric histories of the given child runs (logged once per epoch by the tracker)."""
    out: dict[str, dict[str, list]] = {}
    for r in rows:
        if not r["run_id"]:
            continue
        out[r["trial_id"]] = {m: [(h.step, h.value) for h in client.get_metric_history(r["run_id"], m)
                                  if math.isfinite(h.value)] for m in metrics}
    return out


def publish(sweep: Sweep, trials, best, registered: list[RegisteredModel]) -> dict:
    """Write the review of a finished sweep to MLflow; returns what it wrote (for tests)."""
    plan, tracker = sweep.plan, sweep.tracker
    client, parent_id = tracker.client, tracker.parent_id
    children = child_runs(client, tracker.experiment_id, parent_id)
    names = {t: run.info.run_name for t, run in children.items()}
    configs = {t.trial_id: plan.searched(t.config) for t in trials}
    rows = trial_rows(trials, names, {trial_id: plan.assignment(config)
                                      for trial_id, config in configs.items()})
    best_id = best.trial_id if best else None
    tags = client.get_run(parent_id).data.tags
    written, importances = write_review(client, parent_id, plan, rows, best_id)
    for r in rows:  # each child: its compression report and checkpoint reference
        if r["run_id"]:
            update_child(tracker, plan, r, configs.get(r["trial_id"], {}),
                         children.get(r["trial_id"]))
    text = description(plan=plan, rows=rows, best_id=best_id, registered=registered,
                       experiment_id=tracker.experiment_id, parent_run_id=parent_id,
                       command=tags.get("dlopt.command"), commit=tags.get("mlflow.source.git.commit"),
                       source=tags.get("mlflow.source.name"), artifacts=written,
                       stopped=tags.get("dlopt.stop_reason"), importances=importances,
                       compression=bool(plan.spec_json.get("compression")))
    client.set_tag(parent_id, "mlflow.note.content", text)
    return {"rows": rows, "artifacts": written, "description": text}


def write_review(client, parent_id: str, plan, rows: list[dict],
                 best_id: Optional[str]) -> tuple[list[str], dict[str, float]]:
    """The review's files (tables, plots, what mattered) on the parent run; returns their
    artifact paths and the searched fields' importances (dlopt.driver.importance)."""
    metric, mode = plan.headline
    compression = bool(plan.spec_json.get("compression"))
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp) / ARTIFACT_DIR
        d.mkdir()
        (d / "results.csv").write_text(results_csv(rows, metric, mode))
        (d / "results.html").write_text(results_html(rows, metric, mode, plan.sweep_name))
        if compression:
            header, cells = compression_rows(rows)
            (d / "compression.csv").write_text(
                ",".join(header) + "\n" + "\n".join(",".join("" if v is None else str(v) for v in c)
                                                    for c in cells) + "\n")
        histories = histories_from_mlflow(client, sort_rows(rows, metric, mode)[:CURVE_TRIALS],
                                          tuple(dict.fromkeys((*CURVE_METRICS, metric))))
        for name, build in PLOTS.items():
            if name == "compression.png" and not compression:
                continue
            build(rows, histories, d / name, metric, mode, best_id)
        importances = importance.write(plan, rows, d)
        written = sorted(f"{ARTIFACT_DIR}/{p.name}" for p in d.iterdir())
        client.log_artifacts(parent_id, str(d), ARTIFACT_DIR)
    return written, importances


def update_child(tracker, plan, row: dict, config: dict, run) -> None:
    """A trial's run: its compression report and its checkpoint reference tag."""
    if plan.spec_json.get("compression"):  # without compression stages there is nothing to report
        stages = plan.trial_spec(config).model_dump(
            mode="json")["compression"]  # as the trial ran them (its spec.json)
        tracker.log_json(row["run_id"], compression_report(row, stages), "compression_report.json")
    tagged = run.data.tags.get("dlopt.model_checkpoint") if run is not None else None
    if row["checkpoint"] and tagged != row["checkpoint"]:  # a TorchTrainer trial's is set already
        tracker.client.set_tag(row["run_id"], "dlopt.model_checkpoint", row["checkpoint"])


def publish_safely(sweep: Sweep, trials, best, registered: list[RegisteredModel]) -> Optional[dict]:
    """`publish`, but a failure to draw or upload the review never fails a finished sweep:
    the trials and the registered model are already in MLflow. The error is logged and tagged."""
    try:
        return publish(sweep, trials, best, registered)
    except Exception as err:  # noqa: BLE001 (reported, not hidden)
        tracker = sweep.tracker
        log.warning("warning: the sweep review could not be written to MLflow: %s", scrub(repr(err)))
        try:
            tracker.client.set_tag(tracker.parent_id, "dlopt.review_error", repr(err)[:5000])
        except Exception:  # noqa: BLE001 (the tracking store itself is down)
            pass
        return None


def run_name(tracking_uri: str, run_id: Optional[str]) -> Optional[str]:
    """A run's name for the terminal summary (None when the store cannot be read)."""
    if not run_id:
        return None
    try:
        from mlflow.tracking import (
            MlflowClient,  # MLflow loads only when a summary asks
        )

        return MlflowClient(tracking_uri).get_run(run_id).info.run_name
    except Exception:  # noqa: BLE001 (the summary falls back to the trial id)
        return None
