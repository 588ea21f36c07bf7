"""MLflow tracking, written by the driver only (DESIGN rule 5).

One parent run per sweep, one nested child run per trial. A Tune callback receives
every trial result on the driver and writes it; workers never talk to MLflow, and the
SQLite store is never written from several processes at once. Each epoch is logged
exactly once per trial, even when a restarted worker reports it again.
"""
from __future__ import annotations

import getpass
import json
import math
import os
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

from ray.tune import Callback

from dlopt.spec import flatten, resolve

TUNE_KEYS = {
    "training_iteration", "time_this_iter_s", "time_total_s", "timestamp", "pid", "done",
    "time_since_restore", "iterations_since_restore", "checkpoint_path", "final", "epoch",
    "date", "hostname", "node_ip", "trial_id", "experiment_tag", "config", "diverged",
}
PER_EPOCH_STEP_KEY = "epoch"
# Logged once per epoch; the final report repeats them, so it logs only what is new.
PER_EPOCH_METRICS = {"train_loss", "val_loss", "val_accuracy", "lr", "epoch_seconds", "val_mse",
                     "val_mae", "val_r2", "val_precision", "val_recall", "val_f1",
                     "val_top5_accuracy", "report_seconds"}


def default_tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / 'mlflow.db'}"


def git_commit(cwd: Optional[Path] = None) -> Optional[str]:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True,
                             timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def redact_uri(uri: str) -> str:
    """Drop credentials from a URI (user:password@host) before it is written anywhere."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(uri)
    if parts.username or parts.password:
        host = parts.hostname or ""
        if parts.port:
            host += f":{parts.port}"
        return urlunsplit(parts._replace(netloc=host))
    return uri


def numeric_metrics(result: dict) -> dict[str, float]:
    out = {}
    for key, value in result.items():
        if key in TUNE_KEYS or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        out[key] = float(value)
    return out


def check_reachable(tracking_uri: str, timeout_s: float = 5.0) -> None:
    """Fail fast (before Ray starts) when an MLflow server cannot be reached."""
    if not tracking_uri.startswith(("http://", "https://")):
        return
    import urllib.error
    import urllib.request

    url = tracking_uri.rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:  # noqa: S310 (user's URI)
            if resp.status >= 500:
                raise ConnectionError(f"HTTP {resp.status}")
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as err:
        raise SystemExit(f"error: MLflow tracking server {redact_uri(tracking_uri)} is not "
                         f"reachable ({err}); start it or pass --tracking-uri") from None


class Tracker:
    """Owns the MlflowClient, the parent run and the trial -> child run map."""

    def __init__(self, tracking_uri: str, experiment_name: str):
        import mlflow
        from mlflow.tracking import MlflowClient

        mlflow.set_tracking_uri(tracking_uri)
        self.uri = tracking_uri
        self.client = MlflowClient(tracking_uri)
        exp = self.client.get_experiment_by_name(experiment_name)
        self.experiment_id = exp.experiment_id if exp else self.client.create_experiment(experiment_name)
        self.parent_id: Optional[str] = None
        self.children: dict[str, str] = {}
        self.last_epoch: dict[str, int] = {}
        self.finals: set[str] = set()

    # --- parent
    def start_parent(self, sweep_name: str, plan_dict: dict, tags: dict[str, str]) -> str:
        existing = self.client.search_runs(
            [self.experiment_id], f"tags.`dlopt.sweep` = '{sweep_name}' and tags.`dlopt.role` = 'sweep'")
        if existing:  # --resume: reuse the sweep's parent run
            self.parent_id = existing[0].info.run_id
            self.client.update_run(self.parent_id, status="RUNNING")
            self._load_children()
            return self.parent_id
        run = self.client.create_run(self.experiment_id, run_name=sweep_name, tags={
            "dlopt.sweep": sweep_name, "dlopt.role": "sweep", "mlflow.user": getpass.getuser(),
            **tags})
        self.parent_id = run.info.run_id
        spec = plan_dict["spec_json"]
        self._log_params(self.parent_id, {f"search.{k}": v for k, v in
                                          flatten(spec["search"]).items()})
        self._log_params(self.parent_id, {"trials": plan_dict["trials"], "domains":
                                          ", ".join(plan_dict["domains"]) or "none"})
        self.log_json(self.parent_id, spec, "spec.json")
        self.log_json(self.parent_id, plan_dict, "plan.json")
        return self.parent_id

    def _load_children(self) -> None:
        for run in self.client.search_runs(
                [self.experiment_id], f"tags.`mlflow.parentRunId` = '{self.parent_id}'",
                max_results=10000):
            trial_id = run.data.tags.get("dlopt.trial_id")
            if not trial_id:
                continue
            self.children[trial_id] = run.info.run_id
            history = self.client.get_metric_history(run.info.run_id, "train_loss")
            self.last_epoch[trial_id] = max((m.step for m in history), default=0)
            if "model_bytes" in run.data.metrics:
                self.finals.add(trial_id)

    def finish_parent(self, status: str = "FINISHED") -> None:
        if self.parent_id:
            self.client.set_terminated(self.parent_id, status=status)

    # --- children
    def child(self, trial_id: str, run_name: str, params: dict, tags: dict[str, str]) -> str:
        if trial_id in self.children:
            return self.children[trial_id]
        run = self.client.create_run(self.experiment_id, run_name=run_name, tags={
            "mlflow.parentRunId": self.parent_id, "dlopt.trial_id": trial_id,
            "dlopt.role": "trial", "mlflow.user": getpass.getuser(), **tags})
        self.children[trial_id] = run.info.run_id
        self.last_epoch[trial_id] = 0
        self._log_params(run.info.run_id, params)
        return run.info.run_id

    def log_result(self, trial_id: str, result: dict) -> None:
        """Per-epoch metrics once per epoch; the final (compression) report once."""
        from mlflow.entities import Metric

        run_id = self.children[trial_id]
        epoch = int(result.get(PER_EPOCH_STEP_KEY, 0))
        now = int(time.time() * 1000)
        metrics = numeric_metrics(result)
        if result.get("final"):
            if trial_id in self.finals:
                return
            self.finals.add(trial_id)
            if result.get("checkpoint_path"):
                self.client.set_tag(run_id, "dlopt.model_checkpoint", result["checkpoint_path"])
            self.client.log_batch(run_id, metrics=[
                Metric(k, v, now, epoch) for k, v in metrics.items()
                if k not in PER_EPOCH_METRICS and math.isfinite(v)])
            return
        if epoch <= self.last_epoch.get(trial_id, 0):
            return  # a restarted worker re-reporting an epoch already logged
        self.last_epoch[trial_id] = epoch
        if result.get("diverged"):
            self.client.set_tag(run_id, "dlopt.status", "diverged")
        self.client.log_batch(run_id, metrics=[
            Metric(k, v if math.isfinite(v) else float("nan"), now, epoch) for k, v in metrics.items()])

    def end_child(self, trial_id: str, status: str) -> None:
        if trial_id in self.children:
            self.client.set_terminated(self.children[trial_id], status=status)

    # --- helpers
    def _log_params(self, run_id: str, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, _param_text(v)) for k, v in params.items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(run_id, params=items[i:i + 100])

    def log_json(self, run_id: str, obj: Any, name: str) -> None:
        with tempfile.TemporaryDirectory() as d:
            path = Path(d) / name
            path.write_text(json.dumps(obj, indent=1, default=str))
            self.client.log_artifact(run_id, str(path))


def _param_text(value: Any) -> str:
    text = json.dumps(value) if isinstance(value, (list, dict)) else str(value)
    return text[:6000]


def short_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    if isinstance(value, list):
        return f"[{len(value)} stages]" if value and isinstance(value[0], dict) else str(value)
    return str(value)


def trial_run_name(index: int, assignment: dict) -> str:
    """`trial-003 lr=0.031 sparsity=0.9`: the swept values, shortened."""
    parts = [f"{path.rsplit('.', 1)[-1]}={short_value(v)}" for path, v in assignment.items()]
    return " ".join([f"trial-{index:03d}"] + parts)[:250]


class MlflowCallback(Callback):
    """Tune callback on the driver: trial events -> the Tracker."""

    def __init__(self, tracker: Tracker, base_json: dict, tables: dict[str, list], tags: dict):
        self.tracker = tracker
        self.base_json = base_json
        self.tables = tables
        self.tags = tags
        self.order: dict[str, int] = {}
        from dlopt.perturbations import PerturbationLog

        self.pbt = PerturbationLog(tracker)  # PBT config changes: params cannot change

    def _ensure_child(self, trial) -> str:
        from dlopt.trial import assignment_from_config

        if trial.trial_id in self.tracker.children:
            return self.tracker.children[trial.trial_id]
        assignment = assignment_from_config(
            {k: v for k, v in trial.config.items()}, self.tables)
        self.order.setdefault(trial.trial_id, len(self.tracker.children) + 1)
        spec = resolve(self.base_json, assignment)
        spec_json = spec.model_dump(mode="json")
        run_id = self.tracker.child(
            trial.trial_id, trial_run_name(self.order[trial.trial_id], assignment),
            flatten(spec_json), {**self.tags, "dlopt.spec_hash": spec.spec_hash()})
        self.tracker.log_json(run_id, spec_json, "spec.json")
        return run_id

    def on_trial_start(self, iteration, trials, trial, **info):
        self._ensure_child(trial)
        self.pbt.started(trial)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self._ensure_child(trial)
        self.pbt.result(trial, trials, result)
        self.tracker.log_result(trial.trial_id, result)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._ensure_child(trial)
        self.tracker.end_child(trial.trial_id, "FINISHED")

    def on_trial_error(self, iteration, trials, trial, **info):
        self._ensure_child(trial)
        self.tracker.end_child(trial.trial_id, "FAILED")
