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
from dlopt.spec.plan import assignment, trial_spec
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


def publish(tracker, plan, spec, trials, best, registered: list[dict], tables: dict,
            space) -> dict:
    """Write the review of a finished sweep to MLflow; returns what it wrote (for tests)."""
    client = tracker.client
    parent_id = tracker.parent_id
    plan_dict = plan.to_dict()
    metric, mode = plan.headline
    children = child_runs(client, tracker.experiment_id, parent_id)
    names = {t: run.info.run_name for t, run in children.items()}
    configs = {t.trial_id: {k: v for k, v in (t.config or {}).items() if k in space} for t in trials}
    assignments = {trial_id: assignment(config, tables) for trial_id, config in configs.items()}
    rows = trial_rows(trials, names, assignments)
    best_id = best.trial_id if best else None
    parent = client.get_run(parent_id)
    tags = parent.data.tags
    compression = bool(plan.spec_json.get("compression"))

    written = []
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
        written = sorted(f"{ARTIFACT_DIR}/{p.name}" for p in d.iterdir())
        client.log_artifacts(parent_id, str(d), ARTIFACT_DIR)

    for r in rows:  # each child: its compression report and checkpoint reference
        if not r["run_id"]:
            continue
        if compression:  # without compression stages there is nothing to report
            stages = trial_spec(plan.spec_json, tables, configs.get(r["trial_id"], {})).model_dump(
                mode="json")["compression"]  # as the trial ran them (its spec.json)
            tracker.log_json(r["run_id"], compression_report(r, stages), "compression_report.json")
        run = children.get(r["trial_id"])
        tagged = run.data.tags.get("dlopt.model_checkpoint") if run is not None else None
        if r["checkpoint"] and tagged != r["checkpoint"]:  # a TorchTrainer trial's is set already
            client.set_tag(r["run_id"], "dlopt.model_checkpoint", r["checkpoint"])

    text = description(plan=plan_dict, rows=rows, best_id=best_id, registered=registered,
                       experiment_id=tracker.experiment_id, parent_run_id=parent_id,
                       command=tags.get("dlopt.command"), commit=tags.get("mlflow.source.git.commit"),
                       source=tags.get("mlflow.source.name"), artifacts=written,
                       compression=compression)
    client.set_tag(parent_id, "mlflow.note.content", text)
    return {"rows": rows, "artifacts": written, "description": text}


def publish_safely(*args, **kwargs) -> Optional[dict]:
    """`publish`, but a failure to draw or upload the review never fails a finished sweep:
    the trials and the registered model are already in MLflow. The error is logged and tagged."""
    try:
        return publish(*args, **kwargs)
    except Exception as err:  # noqa: BLE001 (reported, not hidden)
        tracker = args[0] if args else kwargs.get("tracker")
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
