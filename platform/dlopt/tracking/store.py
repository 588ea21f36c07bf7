"""The MLflow write queue of a sweep, and the look-ups --resume needs.

Written by the driver only (docs/architecture.md, "One MLflow writer: the driver"): one
parent run per sweep, one nested child run per trial. The Tune callback
(dlopt.tracking.callback) hands every trial result to the Tracker here; workers never talk
to MLflow, and the SQLite store is never written from several processes at once. Each epoch
is logged exactly once per trial, even when a restarted worker reports it again.
"""
from __future__ import annotations

import getpass
import hashlib
import json
import logging
import math
import os
import re
import time
from collections import deque
from pathlib import Path
from typing import Any, Optional

import mlflow
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from dlopt.spec import flatten
from dlopt.spec.report import (
    CHECKPOINT_PATH,
    DIVERGED,
    END_TIME,
    EPOCH,
    FINAL,
    HISTORY,
    PER_EPOCH_METRICS,
    WORKER_NODES,
)
from dlopt.tracking import coalesce
from dlopt.tracking.artifacts import RunArtifacts
from dlopt.tracking.journal import NAME as JOURNAL_NAME
from dlopt.tracking.journal import Journal
from dlopt.tracking.names import numeric_metrics, param_text
from dlopt.tracking.retry import DRAIN_TIMEOUT_S, TrackingUnavailable, is_transient
from dlopt.tracking.scrub import ScrubbingClient, scrub
from dlopt.tracking.uris import redact_uri

log = logging.getLogger(__name__)
# --resume: how long the journal replay waits for the store before the sweep goes on anyway
# (what is left stays queued and journaled, ahead of new writes).
REPLAY_WAIT_S = 30.0

# MLflow 3's UI opens an experiment by this tag's kind; without it, an experiment with no
# traces may open in the GenAI view. "custom_model_development" is its model-training kind
# (the value MLflow's UI names ExperimentKind.CUSTOM_MODEL_DEVELOPMENT).
EXPERIMENT_KIND = "mlflow.experimentKind"
EXPERIMENT_TAGS = {EXPERIMENT_KIND: "custom_model_development"}


class SweepFinished(RuntimeError):
    """--resume of a sweep whose MLflow parent run already FINISHED: nothing to resume
    (finishing it again would register its model a second time)."""


def finished_sweep(tracking_uri: str, experiment_name: str, sweep_name: str) -> Optional[str]:
    """The parent run id when the sweep `sweep_name` already finished, else None."""
    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(experiment_name)
    if exp is None:
        return None
    runs = client.search_runs([exp.experiment_id], f"tags.`dlopt.sweep` = '{sweep_name}' and "
                              "tags.`dlopt.role` = 'sweep' and attributes.status = 'FINISHED'")
    return runs[0].info.run_id if runs else None


class Tracker:
    """Owns the MlflowClient, the parent run and the trial -> child run map.

    Every write is a JSON record (`_apply` runs it) that goes through a FIFO queue on the
    driver (`_write`), and first into the sweep's journal on local disk (`open_journal`,
    dlopt.tracking.journal) when there is one. When the store is unreachable the write stays
    queued and the sweep goes on; each later Tune event retries the queue in order, and
    `drain` waits (bounded) at the end. So an outage of the MLflow server delays metrics but
    never drops or reorders them, training never waits on it, and a driver killed meanwhile
    leaves the queue in the journal for `--resume` to replay. Every record is idempotent (a
    retried or replayed run is looked up before it is created; a metric carries its own
    timestamp, and MLflow keeps one row per key, value, timestamp and step), so replaying one
    the store took just before the kill writes nothing twice.
    """

    def __init__(self, tracking_uri: str, experiment_name: str,
                 artifact_root: Optional[Path] = None):
        if tracking_uri.startswith(("http://", "https://")):
            # MLflow's own retry loop would block the Tune event loop for minutes (7 retries,
            # exponential backoff); fail fast and let the queue retry instead.
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
        mlflow.set_tracking_uri(tracking_uri)
        self.uri = tracking_uri
        self.client = ScrubbingClient(MlflowClient(tracking_uri))
        self.artifacts = RunArtifacts(tracking_uri)
        exp = self.client.get_experiment_by_name(experiment_name)
        if exp is None:
            # a local store's artifacts live beside it (dlopt.tracking.uris.artifact_root),
            # not under whatever the working directory is
            location = (str(artifact_root / re.sub(r"[^\w.-]", "_", experiment_name))
                        if artifact_root is not None else None)
            self.experiment_id = self.client.create_experiment(
                experiment_name, artifact_location=location, tags=EXPERIMENT_TAGS)
        else:
            self.experiment_id = exp.experiment_id
            if exp.tags.get(EXPERIMENT_KIND) is None:
                self.client.set_experiment_tag(self.experiment_id, EXPERIMENT_KIND,
                                               EXPERIMENT_TAGS[EXPERIMENT_KIND])
        self.parent_id: Optional[str] = None
        self.children: dict[str, str] = {}
        self.known: set[str] = set()  # trials whose child run is created or queued
        self.last_epoch: dict[str, int] = {}  # per trial: the last epoch the store took or queued
        self.finals: set[str] = set()
        self.pending: deque[dict] = deque()  # write records, oldest first
        self.journal: Optional[Journal] = None
        self._seq = 0
        self.outage_since: Optional[float] = None
        self.buffered = 0      # writes that waited in the queue during an outage
        self.replayed = 0      # journal records replayed by --resume
        # writes queued before a flush: 1 writes at once; the MLflow callback raises it while
        # more events wait, so their writes merge into fewer requests (dlopt.tracking.coalesce)
        self.hold = 1
        self.refused: list[str] = []  # writes the store refused for good (reported, not hidden)

    # --- the journal
    def open_journal(self, directory: Path) -> None:
        """Journal every write under `directory` (the sweep's directory in local storage);
        records a killed driver left there are queued again, in order, before any new one."""
        self.journal = Journal(Path(directory) / JOURNAL_NAME)
        for rec in self.journal.pending():
            rec["retried"] = True  # the killed driver may have made it
            self._seq = max(self._seq, rec["seq"])
            self.pending.append(rec)
            self._note(rec)
        self.replayed = len(self.pending)
        if self.pending:
            log.warning("replaying %d MLflow writes a previous driver queued but did not make "
                        "(%s)", len(self.pending), self.journal.path)

    def _note(self, rec: dict) -> None:
        """What a queued record means for the dedup state (from the journal on --resume)."""
        trial = rec.get("trial")
        if rec["op"] == "create_run":
            self.known.add(trial)
        if rec.get("epoch") is not None:
            self.last_epoch[trial] = max(self.last_epoch.get(trial, 0), rec["epoch"])
        if rec.get("final"):
            self.finals.add(trial)

    def close(self) -> None:
        """End of the driver: the journal goes once every record in it was written."""
        if self.journal is not None:
            self.journal.close(remove=not self.pending)

    # --- the write queue
    def _write(self, rec: dict) -> None:
        self._seq += 1
        rec["seq"] = self._seq
        if self.journal is not None:
            self.journal.append(rec)
        self.pending.append(rec)
        if len(self.pending) >= self.hold:
            self.flush()

    @staticmethod
    def _what(rec: dict) -> str:
        return f"{rec['op']} {rec.get('ref') or rec.get('trial') or ''}".strip()

    def flush(self, wait_s: float = 0.0) -> bool:
        """Write queued operations in order; True when the queue is empty."""
        deadline = time.monotonic() + wait_s
        delay = 0.5
        try:
            while self.pending:
                rec, group = coalesce.take(self.pending)  # one request for a run's queued writes
                try:
                    self._apply(rec)
                except Exception as err:  # noqa: BLE001 - classified below, never swallowed silently
                    if not is_transient(err):
                        line = f"warning: MLflow refused {self._what(rec)}: {scrub(str(err))[:300]}"
                        self.refused.append(line)
                        log.warning("%s", line)
                    else:
                        if self.outage_since is None:
                            self.outage_since = time.monotonic()
                            log.warning("warning: MLflow at %s is unreachable; buffering tracking "
                                        "writes on the driver until it returns",
                                        redact_uri(self.uri))
                        if time.monotonic() >= deadline:
                            self.buffered = max(self.buffered, len(self.pending))
                            return False
                        rec["retried"] = True  # the store may have taken it: look before creating
                        time.sleep(delay)
                        delay = min(delay * 2, 5.0)
                        continue
                for done in group:
                    self.pending.remove(done)  # the head or a later one of its run (seq: unique)
                    if self.journal is not None:
                        self.journal.done(done["seq"])
        finally:
            if self.journal is not None:
                # writes still waiting are fsynced once per flush (per Tune event), not per record
                self.journal.sync() if self.pending else self.journal.all_done()
        if self.outage_since is not None:
            # a warning like the outage it ends: shown wherever that one was
            log.warning("MLflow reachable again after %.0f s; buffered writes written",
                        time.monotonic() - self.outage_since)
            self.outage_since = None
        return True

    def drain(self, timeout_s: Optional[float] = None) -> None:
        """End of sweep: everything queued is written, or a clear error after bounded retry."""
        timeout_s = DRAIN_TIMEOUT_S if timeout_s is None else timeout_s
        if not self.flush(wait_s=timeout_s):
            kinds = sorted({rec["op"] for rec in self.pending})
            raise TrackingUnavailable(
                f"MLflow at {redact_uri(self.uri)} stayed unreachable for {timeout_s:.0f} s; "
                f"{len(self.pending)} tracking writes ({', '.join(kinds)}) were not written. "
                "Training results are in Ray storage"
                + (f" and the writes in {self.journal.path}" if self.journal else "")
                + "; rerun with --resume once MLflow is back.")

    def _apply(self, rec: dict) -> None:
        """Make one write record; each is idempotent (see the class docstring)."""
        op, c = rec["op"], self.client
        if op == "create_run":
            trial = rec["trial"]
            # looked up only where a first attempt may have landed (a retry, a replay)
            found = rec.get("retried") and c.search_runs(
                [self.experiment_id], f"tags.`dlopt.trial_id` = '{trial}' and "
                f"tags.`mlflow.parentRunId` = '{rec['tags']['mlflow.parentRunId']}'")
            self.children[trial] = self.artifacts.remember(found[0] if found else c.create_run(
                self.experiment_id, run_name=rec["name"], tags=rec["tags"]))
            return
        run_id = self.children.get(rec["ref"], rec["ref"])  # a trial id, or a run id
        if op == "log_batch":
            c.log_batch(run_id, metrics=[Metric(*m) for m in rec.get("metrics", ())],
                        params=[Param(*p) for p in rec.get("params", ())],
                        tags=[RunTag(*t) for t in rec.get("tags", ())])
        elif op == "set_tag":
            c.set_tag(run_id, rec["key"], rec["value"])
        elif op == "set_terminated":
            c.set_terminated(run_id, status=rec["status"])
        elif op == "log_inputs":  # MLflow keeps one input per (run, dataset digest)
            from mlflow.entities import Dataset, DatasetInput, InputTag
            from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

            c.log_inputs(run_id, datasets=[DatasetInput(
                Dataset(**rec["dataset"]), tags=[InputTag(MLFLOW_DATASET_CONTEXT, "training")])])
        elif op == "log_artifact":
            self.artifacts.write_text(c, run_id, rec["name"], rec["text"])
        else:
            raise ValueError(f"unknown tracking write {op!r}")

    # --- writes other modules queue (PBT perturbations)
    def set_tag(self, ref: str, key: str, value: str) -> None:
        self._write({"op": "set_tag", "ref": ref, "key": key, "value": str(value)})

    def log_metrics(self, ref: str, metrics: list[Metric]) -> None:
        self._write({"op": "log_batch", "ref": ref,
                     "metrics": [[m.key, m.value, m.timestamp, m.step] for m in metrics]})

    # --- parent
    def start_parent(self, sweep_name: str, plan_dict: dict, tags: dict[str, str]) -> str:
        existing = self.client.search_runs(
            [self.experiment_id], f"tags.`dlopt.sweep` = '{sweep_name}' and tags.`dlopt.role` = 'sweep'")
        if existing:  # --resume: reuse the sweep's parent run
            self.parent_id = existing[0].info.run_id
            self.client.update_run(self.parent_id, status="RUNNING")
            self._load_children()
            if self.pending:  # the journal a killed driver left: replayed before the sweep goes on
                if self.flush(wait_s=REPLAY_WAIT_S):
                    self._load_children()  # how far each trial got, now that the store has it all
                else:  # a second outage: the rest stays queued (and journaled) ahead of new writes
                    log.warning("%d journaled MLflow writes still wait for the store",
                                len(self.pending))
            return self.parent_id
        run = self.client.create_run(self.experiment_id, run_name=sweep_name, tags={
            "dlopt.sweep": sweep_name, "dlopt.role": "sweep", "mlflow.user": getpass.getuser(),
            **tags})
        self.parent_id = self.artifacts.remember(run)
        spec = plan_dict["spec_json"]
        self._log_params(self.parent_id, {f"search.{k}": v for k, v in
                                          flatten(spec["search"]).items()})
        self._log_params(self.parent_id, {"trials": plan_dict["trials"], "domains":
                                          ", ".join(plan_dict["domains"]) or "none"})
        self.log_json(self.parent_id, spec, "spec.json")
        self.log_json(self.parent_id, plan_dict, "plan.json")
        return self.parent_id

    def _load_children(self) -> None:
        """--resume: the child runs a killed driver left, and how far each one got (the store's
        last epoch, or a later one still queued from the journal)."""
        for run in self.client.search_runs(
                [self.experiment_id], f"tags.`mlflow.parentRunId` = '{self.parent_id}'",
                max_results=10000):
            trial_id = run.data.tags.get("dlopt.trial_id")
            if not trial_id:
                continue
            self.children[trial_id] = run.info.run_id
            self.known.add(trial_id)
            history = self.client.get_metric_history(run.info.run_id, "train_loss")
            stored = max((m.step for m in history), default=0)
            self.last_epoch[trial_id] = max(stored, *(r["epoch"] for r in self.pending if
                                                      r.get("trial") == trial_id and r.get("epoch")),
                                            0)
            if "model_bytes" in run.data.metrics:
                self.finals.add(trial_id)

    def finish_parent(self, status: str = "FINISHED") -> None:
        if self.parent_id:
            self._write({"op": "set_terminated", "ref": self.parent_id, "status": status})

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
        self._write({"op": "create_run", "trial": trial_id, "name": run_name, "tags": run_tags})
        self._log_params(trial_id, params)
        if spec_json is not None:
            self.log_json(trial_id, spec_json, "spec.json")
            self._log_dataset(trial_id, spec_json)
        return self.children.get(trial_id)

    def _log_dataset(self, trial_id: str, spec_json: dict) -> None:
        """The trial's training data as an MLflow dataset input (the runs table's Dataset
        column): named by the data spec, its digest the split-defining settings. Built from
        the spec on the driver; the data itself is only loaded on the workers."""
        data = spec_json.get("data") or {}
        if not data.get("dataset"):
            return
        key = json.dumps([data, spec_json.get("seed")], sort_keys=True, default=str)
        self._write({"op": "log_inputs", "ref": trial_id, "dataset": {
            "name": str(data["dataset"]), "digest": hashlib.sha256(key.encode()).hexdigest()[:8],
            "source_type": "code", "source": json.dumps({"tags": {"dlopt.data": key}}),
            "profile": json.dumps({k: data.get(k) for k in ("val_fraction", "test_fraction")}
                                  | {"seed": spec_json.get("seed")})}})

    def log_result(self, trial_id: str, result: dict) -> None:
        """Per-epoch metrics once per epoch; the final (compression) report once."""
        epoch = int(result.get(EPOCH, 0))
        now = int(time.time() * 1000)
        metrics = numeric_metrics(result)
        if result.get(FINAL):
            if trial_id in self.finals:
                return
            self.finals.add(trial_id)
            if result.get(CHECKPOINT_PATH):
                self.set_tag(trial_id, "dlopt.model_checkpoint", result[CHECKPOINT_PATH])
            if result.get(WORKER_NODES):  # Ray node id of each DDP rank (dlopt.runtime.worker)
                self.set_tag(trial_id, "dlopt.worker_nodes", result[WORKER_NODES])
            batch = [[k, v, now, epoch] for k, v in metrics.items()
                     if k not in PER_EPOCH_METRICS and math.isfinite(v)]
            self._write({"op": "log_batch", "ref": trial_id, "trial": trial_id, "final": True,
                         "metrics": batch})
            return
        if result.get(DIVERGED):
            self.set_tag(trial_id, "dlopt.status", "diverged")
        batch = []
        for item in [*(result.get(HISTORY) or []), result]:
            epoch = int(item.get(EPOCH, 0))
            if epoch <= self.last_epoch.get(trial_id, 0):
                continue  # a restarted worker re-reporting an epoch already logged or queued
            self.last_epoch[trial_id] = epoch
            # stamped with the epoch's own end, not this report's arrival (batched reports)
            at = int(item[END_TIME] * 1000) if END_TIME in item else now
            batch += [[k, v if math.isfinite(v) else float("nan"), at, epoch]
                      for k, v in numeric_metrics(item).items()]
        for i in range(0, len(batch), 1000):  # MLflow's log_batch limit: 1000 metrics
            chunk = batch[i:i + 1000]
            self._write({"op": "log_batch", "ref": trial_id, "trial": trial_id,
                         "epoch": max(m[3] for m in chunk), "metrics": chunk})

    def end_child(self, trial_id: str, status: str) -> None:
        if trial_id in self.known:
            self._write({"op": "set_terminated", "ref": trial_id, "status": status})

    # --- helpers
    def _log_params(self, ref: str, params: dict[str, Any]) -> None:
        items = [[k, param_text(v)] for k, v in params.items()]
        for i in range(0, len(items), 100):
            self._write({"op": "log_batch", "ref": ref, "params": items[i:i + 100]})

    def log_json(self, ref: str, obj: Any, name: str) -> None:
        self._write({"op": "log_artifact", "ref": ref, "name": name,
                     "text": json.dumps(obj, indent=1, default=str)})
