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
import re
import subprocess
import sys
import tempfile
import time
from collections import deque
from pathlib import Path
from typing import Any, Callable, Optional

from ray.tune import Callback

from dlopt.spec import flatten, resolve

TUNE_KEYS = {
    "training_iteration", "time_this_iter_s", "time_total_s", "timestamp", "pid", "done",
    "time_since_restore", "iterations_since_restore", "checkpoint_path", "final", "epoch",
    "date", "hostname", "node_ip", "trial_id", "experiment_tag", "config", "diverged",
    "epoch_end_time",  # the MLflow timestamp of that epoch's metrics (dlopt.train.cadence)
}
HISTORY_KEY = "epoch_history"  # unreported earlier epochs a report carries (train.cadence)
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

    from urllib.parse import unquote, urlsplit

    # urllib cannot take user:password@ in the host; send it as basic auth, as requests does
    parts = urlsplit(tracking_uri)
    request = urllib.request.Request(redact_uri(tracking_uri).rstrip("/") + "/health")
    if parts.username is not None:
        import base64

        pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
        request.add_header("Authorization", "Basic " + base64.b64encode(pair).decode())
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as resp:  # noqa: S310 (user's URI)
            if resp.status >= 500:
                raise ConnectionError(f"HTTP {resp.status}")
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as err:
        raise SystemExit(f"error: MLflow tracking server {redact_uri(tracking_uri)} is not "
                         f"reachable ({scrub(str(err))}); start it or pass --tracking-uri") from None


# ------------------------------------------------------------------ secrets
_URI_CREDENTIALS = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)[^/@\s:]+(:[^/@\s]*)?@")
_SECRET_NAME = re.compile(r"TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL|API_KEY|ACCESS_KEY|AUTH",
                          re.IGNORECASE)


def secret_values(environ: Optional[dict] = None) -> list[str]:
    """Values of environment variables whose names say they hold a secret (longest first)."""
    env = os.environ if environ is None else environ
    values = {v for k, v in env.items() if _SECRET_NAME.search(k) and len(v) >= 6
              and v.lower() not in ("true", "false", "disabled", "enabled")}
    return sorted(values, key=len, reverse=True)


def scrub(text: str) -> str:
    """Drop URI credentials and the values of secret-named environment variables from text."""
    text = _URI_CREDENTIALS.sub(lambda m: m["scheme"], text)
    for value in secret_values():
        text = text.replace(value, "***")
    return text


def _scrub_value(value: Any) -> Any:
    return scrub(value) if isinstance(value, str) else value


class ScrubbingClient:
    """MlflowClient whose writes pass through `scrub`: one choke point for every tag, param,
    metric key and text artifact the driver writes (tracking, finalize, review, PBT log).

    Why hand-written: MLflow has no redaction hook; the command line and error messages that
    end up in tags may hold `--tracking-uri http://user:secret@host`.
    """

    _TEXT_SUFFIXES = {".json", ".csv", ".html", ".md", ".txt", ".yaml", ".yml", ".log"}

    def __init__(self, client):
        self._client = client

    def __getattr__(self, name):
        if name.startswith("__") or name == "_client":  # unpickling: no _client yet
            raise AttributeError(name)
        return getattr(self._client, name)

    def set_tag(self, run_id, key, value, *args, **kwargs):
        return self._client.set_tag(run_id, key, _scrub_value(value), *args, **kwargs)

    def log_param(self, run_id, key, value, *args, **kwargs):
        return self._client.log_param(run_id, key, _scrub_value(value), *args, **kwargs)

    def create_run(self, experiment_id, *args, tags=None, run_name=None, **kwargs):
        tags = {k: _scrub_value(v) for k, v in (tags or {}).items()}
        return self._client.create_run(experiment_id, *args, tags=tags,
                                       run_name=_scrub_value(run_name), **kwargs)

    def log_batch(self, run_id, metrics=(), params=(), tags=(), *args, **kwargs):
        from mlflow.entities import Param, RunTag

        params = [Param(p.key, scrub(p.value)) for p in params]
        tags = [RunTag(t.key, scrub(t.value)) for t in tags]
        return self._client.log_batch(run_id, metrics=list(metrics), params=params, tags=tags,
                                      *args, **kwargs)

    def log_text(self, run_id, text, artifact_file):
        return self._client.log_text(run_id, scrub(text), artifact_file)

    def log_artifact(self, run_id, local_path, artifact_path=None):
        with tempfile.TemporaryDirectory() as d:
            return self._client.log_artifact(run_id, self._scrubbed(Path(local_path), Path(d)),
                                             artifact_path)

    def log_artifacts(self, run_id, local_dir, artifact_path=None):
        with tempfile.TemporaryDirectory() as d:
            return self._client.log_artifacts(run_id, self._scrubbed(Path(local_dir), Path(d)),
                                              artifact_path)

    def _scrubbed(self, src: Path, tmp: Path) -> str:
        """A copy of src with its text files scrubbed (binary files copied as they are)."""
        import shutil

        dst = tmp / src.name
        files = [src] if src.is_file() else [p for p in src.rglob("*") if p.is_file()]
        for f in files:
            out = dst if src.is_file() else dst / f.relative_to(src)
            out.parent.mkdir(parents=True, exist_ok=True)
            if f.suffix.lower() in self._TEXT_SUFFIXES:
                out.write_text(scrub(f.read_text(errors="replace")))
            else:
                shutil.copy2(f, out)
        if src.is_dir() and not files:
            dst.mkdir(parents=True, exist_ok=True)
        return str(dst)


# ------------------------------------------------------------------ buffered writes
# Substrings of errors that mean "try again later": the server is down or restarting, a
# request timed out, or SQLite was busy. Anything else is a real refusal and is reported.
_TRANSIENT = ("failed with exception", "timeout", "timed out", "connection", "max retries",
              "database is locked", "temporarily unavailable", "502", "503", "504",
              "remote end closed", "bad gateway", "service unavailable")
# Each write is tried once per Tune event while the server is away; at the end of the sweep
# the driver waits this long (bounded retry) before failing with the count of unwritten ones.
DRAIN_TIMEOUT_S = float(os.environ.get("DLOPT_TRACKING_RETRY_S", "300"))


def is_transient(err: BaseException) -> bool:
    text = f"{type(err).__name__} {err}".lower()
    return isinstance(err, (ConnectionError, TimeoutError)) or any(t in text for t in _TRANSIENT)


def retry_transient(fn, timeout_s: float, what: str = "MLflow call"):
    """Call fn(); on a transient store error (server down, SQLite locked) retry with backoff
    until timeout_s, then raise TrackingUnavailable. Used after the Tune loop, when the driver
    writes directly (registration, test report, review) instead of through the write queue."""
    deadline = time.monotonic() + timeout_s
    delay = 0.5
    while True:
        try:
            return fn()
        except Exception as err:  # noqa: BLE001 - only transient errors are retried
            if not is_transient(err):
                raise
            if time.monotonic() >= deadline:
                raise TrackingUnavailable(f"{what}: MLflow stayed unreachable for "
                                          f"{timeout_s:.0f} s ({scrub(str(err))[:200]})") from None
            time.sleep(delay)
            delay = min(delay * 2, 5.0)


class RetryingClient:
    """Wraps the (scrubbing) client so every call retries transient errors, bounded."""

    def __init__(self, client, timeout_s: float):
        self._client, self._timeout_s = client, timeout_s

    def __getattr__(self, name):
        if name.startswith("__") or name in ("_client", "_timeout_s"):
            raise AttributeError(name)
        attr = getattr(self._client, name)
        if not callable(attr):
            return attr
        return lambda *a, **kw: retry_transient(lambda: attr(*a, **kw), self._timeout_s,
                                                f"MLflow {name}")


class TrackingUnavailable(RuntimeError):
    """The MLflow store stayed unreachable past the bounded retry; writes were not made."""


class SweepFinished(RuntimeError):
    """--resume of a sweep whose MLflow parent run already FINISHED: nothing to resume
    (finishing it again would register its model a second time)."""


def finished_sweep(tracking_uri: str, experiment_name: str, sweep_name: str) -> Optional[str]:
    """The parent run id when the sweep `sweep_name` already finished, else None."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(experiment_name)
    if exp is None:
        return None
    runs = client.search_runs([exp.experiment_id], f"tags.`dlopt.sweep` = '{sweep_name}' and "
                              "tags.`dlopt.role` = 'sweep' and attributes.status = 'FINISHED'")
    return runs[0].info.run_id if runs else None


class Tracker:
    """Owns the MlflowClient, the parent run and the trial -> child run map.

    Every write goes through a FIFO queue on the driver (`_write`): when the store is
    unreachable the write stays queued and the sweep goes on; each later Tune event retries
    the queue in order, and `drain` waits (bounded) at the end. So an outage of the MLflow
    server delays metrics but never drops or reorders them, and training never waits on it.
    """

    def __init__(self, tracking_uri: str, experiment_name: str):
        import mlflow
        from mlflow.tracking import MlflowClient

        if tracking_uri.startswith(("http://", "https://")):
            # MLflow's own retry loop would block the Tune event loop for minutes (7 retries,
            # exponential backoff); fail fast and let the queue retry instead.
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
        mlflow.set_tracking_uri(tracking_uri)
        self.uri = tracking_uri
        self.client = ScrubbingClient(MlflowClient(tracking_uri))
        exp = self.client.get_experiment_by_name(experiment_name)
        self.experiment_id = exp.experiment_id if exp else self.client.create_experiment(experiment_name)
        self.parent_id: Optional[str] = None
        self.children: dict[str, str] = {}
        self.known: set[str] = set()  # trials whose child run is created or queued
        self.last_epoch: dict[str, int] = {}
        self.finals: set[str] = set()
        self.pending: deque[tuple[str, Callable[[], Any]]] = deque()
        self.outage_since: Optional[float] = None
        self.buffered = 0      # writes that waited in the queue during an outage
        self.refused: list[str] = []  # writes the store refused for good (reported, not hidden)

    # --- the write queue
    def _write(self, what: str, fn: Callable[[], Any]) -> None:
        self.pending.append((what, fn))
        self.flush()

    def flush(self, wait_s: float = 0.0) -> bool:
        """Write queued operations in order; True when the queue is empty."""
        deadline = time.monotonic() + wait_s
        delay = 0.5
        while self.pending:
            what, fn = self.pending[0]
            try:
                fn()
            except Exception as err:  # noqa: BLE001 - classified below, never swallowed silently
                if not is_transient(err):
                    self.pending.popleft()
                    line = f"warning: MLflow refused {what}: {scrub(str(err))[:300]}"
                    self.refused.append(line)
                    print(line, file=sys.stderr, flush=True)
                    continue
                if self.outage_since is None:
                    self.outage_since = time.monotonic()
                    print(f"warning: MLflow at {redact_uri(self.uri)} is unreachable; buffering "
                          "tracking writes on the driver until it returns", file=sys.stderr,
                          flush=True)
                if time.monotonic() >= deadline:
                    self.buffered = max(self.buffered, len(self.pending))
                    return False
                time.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            self.pending.popleft()
        if self.outage_since is not None:
            print(f"MLflow reachable again after {time.monotonic() - self.outage_since:.0f} s; "
                  f"buffered writes written", file=sys.stderr, flush=True)
            self.outage_since = None
        return True

    def drain(self, timeout_s: Optional[float] = None) -> None:
        """End of sweep: everything queued is written, or a clear error after bounded retry."""
        timeout_s = DRAIN_TIMEOUT_S if timeout_s is None else timeout_s
        if not self.flush(wait_s=timeout_s):
            kinds = sorted({what.split(" ", 1)[0] for what, _ in self.pending})
            raise TrackingUnavailable(
                f"MLflow at {redact_uri(self.uri)} stayed unreachable for {timeout_s:.0f} s; "
                f"{len(self.pending)} tracking writes ({', '.join(kinds)}) were not written. "
                "Training results are in Ray storage; rerun with --resume once MLflow is back.")

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
        """--resume: the child runs a killed driver left, and how far each one got."""
        for run in self.client.search_runs(
                [self.experiment_id], f"tags.`mlflow.parentRunId` = '{self.parent_id}'",
                max_results=10000):
            trial_id = run.data.tags.get("dlopt.trial_id")
            if not trial_id:
                continue
            self.children[trial_id] = run.info.run_id
            self.known.add(trial_id)
            history = self.client.get_metric_history(run.info.run_id, "train_loss")
            self.last_epoch[trial_id] = max((m.step for m in history), default=0)
            if "model_bytes" in run.data.metrics:
                self.finals.add(trial_id)

    def finish_parent(self, status: str = "FINISHED") -> None:
        if self.parent_id:
            self._write("set_terminated parent",
                        lambda: self.client.set_terminated(self.parent_id, status=status))

    # --- children
    def child(self, trial_id: str, run_name: str, params: dict, tags: dict[str, str],
              spec_json: Optional[dict] = None) -> Optional[str]:
        """Create (or queue) the trial's child run; its run id once it exists."""
        if trial_id in self.known:
            return self.children.get(trial_id)
        self.known.add(trial_id)
        self.last_epoch.setdefault(trial_id, 0)
        run_tags = {"mlflow.parentRunId": self.parent_id, "dlopt.trial_id": trial_id,
                    "dlopt.role": "trial", "mlflow.user": getpass.getuser(), **tags}
        tries = []

        def create():
            if tries:  # a retry: the first attempt may have reached the server after all
                found = self.client.search_runs(
                    [self.experiment_id], f"tags.`dlopt.trial_id` = '{trial_id}' and "
                    f"tags.`mlflow.parentRunId` = '{self.parent_id}'")
                if found:
                    self.children[trial_id] = found[0].info.run_id
                    return
            tries.append(1)
            run = self.client.create_run(self.experiment_id, run_name=run_name, tags=run_tags)
            self.children[trial_id] = run.info.run_id

        self._write(f"create_run {trial_id}", create)
        self._log_params(trial_id, params)
        if spec_json is not None:
            self.log_json(trial_id, spec_json, "spec.json")
        return self.children.get(trial_id)

    def _run_id(self, ref: str) -> str:
        """A trial id (resolved when the queued write runs) or a run id."""
        return self.children.get(ref, ref)

    def log_result(self, trial_id: str, result: dict) -> None:
        """Per-epoch metrics once per epoch; the final (compression) report once."""
        from mlflow.entities import Metric

        epoch = int(result.get(PER_EPOCH_STEP_KEY, 0))
        now = int(time.time() * 1000)
        metrics = numeric_metrics(result)
        if result.get("final"):
            if trial_id in self.finals:
                return
            self.finals.add(trial_id)
            if result.get("checkpoint_path"):
                path = result["checkpoint_path"]
                self._write(f"set_tag {trial_id}", lambda: self.client.set_tag(
                    self._run_id(trial_id), "dlopt.model_checkpoint", path))
            if result.get("worker_nodes"):  # Ray node id of each DDP rank (train/worker.py)
                nodes = result["worker_nodes"]
                self._write(f"set_tag {trial_id}", lambda: self.client.set_tag(
                    self._run_id(trial_id), "dlopt.worker_nodes", nodes))
            batch = [Metric(k, v, now, epoch) for k, v in metrics.items()
                     if k not in PER_EPOCH_METRICS and math.isfinite(v)]
            self._write(f"log_batch {trial_id} final", lambda: self.client.log_batch(
                self._run_id(trial_id), metrics=batch))
            return
        if result.get("diverged"):
            self._write(f"set_tag {trial_id}", lambda: self.client.set_tag(
                self._run_id(trial_id), "dlopt.status", "diverged"))
        batch = []
        for item in [*(result.get(HISTORY_KEY) or []), result]:
            epoch = int(item.get(PER_EPOCH_STEP_KEY, 0))
            if epoch <= self.last_epoch.get(trial_id, 0):
                continue  # a restarted worker re-reporting an epoch already logged
            self.last_epoch[trial_id] = epoch
            # stamped with the epoch's own end, not this report's arrival (batched reports)
            at = int(item["epoch_end_time"] * 1000) if "epoch_end_time" in item else now
            batch += [Metric(k, v if math.isfinite(v) else float("nan"), at, epoch)
                      for k, v in numeric_metrics(item).items()]
        for i in range(0, len(batch), 1000):  # MLflow's log_batch limit: 1000 metrics
            chunk = batch[i:i + 1000]
            self._write(f"log_batch {trial_id} epoch {epoch}", lambda c=chunk: self.client.log_batch(
                self._run_id(trial_id), metrics=c))

    def end_child(self, trial_id: str, status: str) -> None:
        if trial_id in self.known:
            self._write(f"set_terminated {trial_id}", lambda: self.client.set_terminated(
                self._run_id(trial_id), status=status))

    # --- helpers
    def _log_params(self, ref: str, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, _param_text(v)) for k, v in params.items()]
        for i in range(0, len(items), 100):
            chunk = items[i:i + 100]
            self._write(f"log_params {ref}", lambda c=chunk: self.client.log_batch(
                self._run_id(ref), params=c))

    def log_json(self, ref: str, obj: Any, name: str) -> None:
        text = json.dumps(obj, indent=1, default=str)

        def upload():
            with tempfile.TemporaryDirectory() as d:
                path = Path(d) / name
                path.write_text(text)
                self.client.log_artifact(self._run_id(ref), str(path))

        self._write(f"log_artifact {ref} {name}", upload)


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
        self.tags = {k: _scrub_value(v) for k, v in tags.items()}  # also pickled in tuner.pkl
        self.order: dict[str, int] = {}
        from dlopt.tracking.perturbations import PerturbationLog

        self.pbt = PerturbationLog(tracker)  # PBT config changes: params cannot change

    def __getstate__(self):
        # Tune pickles its RunConfig (callbacks included) into tuner.pkl in Ray storage; the
        # tracker (client, URI with possible credentials, queued writes) stays out of it.
        # --resume installs fresh callbacks.
        return {**self.__dict__, "tracker": None, "pbt": None}

    def _ensure_child(self, trial) -> str:
        from dlopt.spec.plan import assignment

        if trial.trial_id in self.tracker.known:
            return self.tracker.children.get(trial.trial_id)
        assigned = assignment(dict(trial.config), self.tables)
        self.order.setdefault(trial.trial_id, len(self.tracker.children) + 1)
        spec = resolve(self.base_json, assigned)
        spec_json = spec.model_dump(mode="json")
        return self.tracker.child(
            trial.trial_id, trial_run_name(self.order[trial.trial_id], assigned),
            flatten(spec_json), {**self.tags, "dlopt.spec_hash": spec.spec_hash()}, spec_json)

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
