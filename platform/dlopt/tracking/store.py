"""The MLflow write queue of a sweep, and the look-ups --resume needs.

Written by the driver only (docs/architecture.md, "One MLflow writer: the driver"): one
parent run per sweep, one nested child run per trial. The Tune callback
(dlopt.tracking.callback) hands every trial result to the Tracker here; workers never talk
to MLflow, and the SQLite store is never written from several processes at once. Each epoch
is logged exactly once per trial, even when a restarted worker reports it again.
"""
from __future__ import annotations

import getpass
import json
import logging
import math
import time
from collections import deque
from pathlib import Path
from typing import Any, Optional

from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from dlopt.spec import flatten
from dlopt.spec.plan import Plan
from dlopt.spec.report import (
    CHECKPOINT_PATH,
    DIVERGED,
    EPOCH,
    FINAL,
    PER_EPOCH_METRICS,
    WORKER_NODES,
)
from dlopt.tracking import coalesce, records
from dlopt.tracking.artifacts import RunArtifacts
from dlopt.tracking.experiments import open_experiment
from dlopt.tracking.journal import NAME as JOURNAL_NAME
from dlopt.tracking.journal import Journal
from dlopt.tracking.names import numeric_metrics, param_text
from dlopt.tracking.retry import RetryingClient, TrackingUnavailable, drain_timeout_s, is_transient
from dlopt.tracking.scrub import ScrubbingClient, scrub
from dlopt.tracking.startup import at_start, create_parent, find_parent, parent_filter
from dlopt.tracking.uris import redact_uri

log = logging.getLogger(__name__)
# --resume: how long the journal replay waits for the store before the sweep goes on anyway
# (what is left stays queued and journaled, ahead of new writes).
REPLAY_WAIT_S = 30.0

class SweepFinished(RuntimeError):
    """--resume of a sweep whose MLflow parent run already FINISHED: nothing to resume
    (finishing it again would register its model a second time)."""


def finished_sweep(tracking_uri: str, experiment_name: str, sweep_name: str) -> Optional[str]:
    """The parent run id when the sweep `sweep_name` already finished, else None."""
    client = MlflowClient(tracking_uri)
    exp = at_start(lambda: client.get_experiment_by_name(experiment_name), "experiment look-up")
    if exp is None:
        return None
    runs = at_start(lambda: client.search_runs(
        [exp.experiment_id], parent_filter(sweep_name) + " and attributes.status = 'FINISHED'"),
        "parent run look-up")
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
        # MLflow's HTTP settings and global URI are the sweep environment's to set and
        # restore (dlopt.tracking.scope.store_settings), not the Tracker's.
        self._uri = tracking_uri
        self._client = ScrubbingClient(MlflowClient(tracking_uri))
        self._artifacts = RunArtifacts(tracking_uri)
        self._experiment_id = at_start(  # retried like the writes (dlopt.tracking.startup)
            lambda: open_experiment(self._client, experiment_name, artifact_root), "experiment")
        self._parent_id: Optional[str] = None
        self._children: dict[str, str] = {}
        self._known: set[str] = set()  # trials whose child run is created or queued
        self._last_epoch: dict[str, int] = {}  # per trial: the last epoch the store took or queued
        self._finals: set[str] = set()
        self._pending: deque[dict] = deque()  # write records, oldest first
        self._journal: Optional[Journal] = None
        self._seq = 0
        self._outage_since: Optional[float] = None
        self._buffered = 0      # writes that waited in the queue during an outage
        self._replayed = 0      # journal records replayed by --resume
        # writes queued before a flush: 1 writes at once; the MLflow callback raises it
        # (`hold_writes`) while more events wait, so their writes merge into fewer requests
        self._hold = 1
        self._refused: list[str] = []  # writes the store refused for good (reported, not hidden)

    # --- what callers may read (the rest is the queue's own state)
    @property
    def uri(self) -> str:
        """The store's tracking URI (may carry credentials: `redact_uri` before showing it)."""
        return self._uri

    @property
    def experiment_id(self) -> str:
        return self._experiment_id

    @property
    def parent_id(self) -> Optional[str]:
        """The sweep's parent run, once `start_parent` made or found it."""
        return self._parent_id

    @property
    def client(self):
        """The store's client for the driver's direct writes and reads after the Tune loop
        (registration, test report, review): it scrubs secrets out of every write, and after
        `direct_writes()` it retries transient errors, bounded."""
        return self._client

    @property
    def pending_count(self) -> int:
        """Writes queued and not yet taken by the store."""
        return len(self._pending)

    @property
    def replayed(self) -> int:
        """Journal records a killed driver left that `open_journal` queued again (--resume)."""
        return self._replayed

    @property
    def trial_count(self) -> int:
        """Trials whose child run is created or queued."""
        return len(self._known)

    def has_trial(self, trial_id: str) -> bool:
        """The trial's child run is created or queued (`child` was called for it)."""
        return trial_id in self._known

    def run_id_of(self, trial_id: str) -> Optional[str]:
        """The trial's child run id once the store made it (None while it is still queued)."""
        return self._children.get(trial_id)

    # --- how writes go
    def hold_writes(self, count: int) -> None:
        """Let up to `count` writes wait in the queue before a flush, so that the writes of
        events arriving together merge into fewer requests (dlopt.tracking.coalesce); the
        MLflow callback's writer thread holds while more events wait."""
        self._hold = max(1, count)

    def write_at_once(self) -> None:
        """From here each write is made when queued; what was held is flushed now (still
        queued if the store is down)."""
        self._hold = 1
        self.flush()

    def direct_writes(self) -> None:
        """After the Tune loop and the drain: every call through `client` retries transient
        errors, bounded like the drain (dlopt.tracking.retry.drain_timeout_s), so an outage
        delays registration and the review instead of failing the sweep."""
        if not isinstance(self._client, RetryingClient):
            self._client = RetryingClient(self._client, drain_timeout_s())

    # --- the journal
    def open_journal(self, directory: Path) -> None:
        """Journal every write under `directory` (on local disk: dlopt.runtime.storage.journal_dir);
        records a killed driver left there are queued again, in order, before any new one."""
        self._journal = Journal(Path(directory) / JOURNAL_NAME)
        for rec in self._journal.pending():
            rec["retried"] = True  # the killed driver may have made it
            self._seq = max(self._seq, rec["seq"])
            self._pending.append(rec)
            self._note(rec)
        self._replayed = len(self._pending)
        if self._pending:
            log.warning("replaying %d MLflow writes a previous driver queued but did not make "
                        "(%s)", len(self._pending), self._journal.path)

    def _note(self, rec: dict) -> None:
        """What a queued record means for the dedup state (from the journal on --resume)."""
        trial = rec.get("trial")
        if rec["op"] == "create_run":
            self._known.add(trial)
        if rec.get("epoch") is not None:
            self._last_epoch[trial] = max(self._last_epoch.get(trial, 0), rec["epoch"])
        if rec.get("final"):
            self._finals.add(trial)

    def close(self) -> None:
        """End of the driver: the journal goes once every record in it was written."""
        if self._journal is not None:
            self._journal.close(remove=not self._pending)

    # --- the write queue
    def _write(self, rec: dict) -> None:
        self._seq += 1
        rec["seq"] = self._seq
        if self._journal is not None:
            self._journal.append(rec)
        self._pending.append(rec)
        if len(self._pending) >= self._hold:
            self.flush()

    @staticmethod
    def _what(rec: dict) -> str:
        return f"{rec['op']} {rec.get('ref') or rec.get('trial') or ''}".strip()

    def flush(self, wait_s: float = 0.0) -> bool:
        """Write queued operations in order; True when the queue is empty."""
        deadline = time.monotonic() + wait_s
        delay = 0.5
        try:
            while self._pending:
                rec, group = coalesce.take(self._pending)  # one request for a run's queued writes
                try:
                    self._apply(rec)
                except Exception as err:  # noqa: BLE001 - classified below, never swallowed silently
                    if not is_transient(err):
                        line = f"warning: MLflow refused {self._what(rec)}: {scrub(str(err))[:300]}"
                        self._refused.append(line)
                        log.warning("%s", line)
                    else:
                        if self._outage_since is None:
                            self._outage_since = time.monotonic()
                            log.warning("warning: MLflow at %s is unreachable; buffering tracking "
                                        "writes on the driver until it returns",
                                        redact_uri(self._uri))
                        if time.monotonic() >= deadline:
                            self._buffered = max(self._buffered, len(self._pending))
                            return False
                        rec["retried"] = True  # the store may have taken it: look before creating
                        time.sleep(delay)
                        delay = min(delay * 2, 5.0)
                        continue
                for done in group:
                    self._pending.remove(done)  # the head or a later one of its run (seq: unique)
                    if self._journal is not None:
                        self._journal.done(done["seq"])
        finally:
            if self._journal is not None:
                # writes still waiting are fsynced once per flush (per Tune event), not per record
                self._journal.sync() if self._pending else self._journal.all_done()
        if self._outage_since is not None:
            # a warning like the outage it ends: shown wherever that one was
            log.warning("MLflow reachable again after %.0f s; buffered writes written",
                        time.monotonic() - self._outage_since)
            self._outage_since = None
        return True

    def drain(self, timeout_s: Optional[float] = None) -> None:
        """End of sweep: everything queued is written, or a clear error after bounded retry."""
        timeout_s = drain_timeout_s() if timeout_s is None else timeout_s
        if not self.flush(wait_s=timeout_s):
            kinds = sorted({rec["op"] for rec in self._pending})
            raise TrackingUnavailable(
                f"MLflow at {redact_uri(self._uri)} stayed unreachable for {timeout_s:.0f} s; "
                f"{len(self._pending)} tracking writes ({', '.join(kinds)}) were not written. "
                "Training results are in Ray storage"
                + (f" and the writes in {self._journal.path}" if self._journal else "")
                + "; rerun with --resume once MLflow is back.")

    def _apply(self, rec: dict) -> None:
        """Make one write record; each is idempotent (see the class docstring)."""
        if rec["op"] == "create_run":
            run = records.create_child(self._client, self._experiment_id, rec)
            self._children[rec["trial"]] = self._artifacts.remember(run)
            return
        run_id = self._children.get(rec["ref"], rec["ref"])  # a trial id, or a run id
        records.apply_write(self._client, self._artifacts, run_id, rec)

    # --- writes other modules queue (PBT perturbations)
    def set_tag(self, ref: str, key: str, value: str) -> None:
        self._write({"op": "set_tag", "ref": ref, "key": key, "value": str(value)})

    def log_metrics(self, ref: str, metrics: list[Metric]) -> None:
        self._write({"op": "log_batch", "ref": ref,
                     "metrics": [[m.key, m.value, m.timestamp, m.step] for m in metrics]})

    # --- parent
    def start_parent(self, plan: Plan, tags: dict[str, str]) -> str:
        """The sweep's parent run (found again on --resume), with the spec and the plan."""
        sweep_name = plan.sweep_name
        existing = find_parent(self._client, self._experiment_id, sweep_name)
        if existing:  # --resume: reuse the sweep's parent run
            self._parent_id = existing.info.run_id
            at_start(lambda: self._client.update_run(self._parent_id, status="RUNNING"), "resume")
            at_start(self._load_children, "trial runs look-up")
            if self._pending:  # the journal a killed driver left: replayed before the sweep goes on
                if self.flush(wait_s=REPLAY_WAIT_S):
                    self._load_children()  # how far each trial got, now that the store has it all
                else:  # a second outage: the rest stays queued (and journaled) ahead of new writes
                    log.warning("%d journaled MLflow writes still wait for the store",
                                len(self._pending))
            return self._parent_id
        run = create_parent(self._client, self._experiment_id, sweep_name, tags={
            "dlopt.sweep": sweep_name, "dlopt.role": "sweep", "mlflow.user": getpass.getuser(),
            **tags})
        self._parent_id = self._artifacts.remember(run)
        spec = plan.spec_json
        self._log_params(self._parent_id, {f"search.{k}": v for k, v in
                                          flatten(spec["search"]).items()})
        self._log_params(self._parent_id, {"trials": plan.trials, "domains":
                                          ", ".join(plan.domains) or "none"})
        self.log_json(self._parent_id, spec, "spec.json")
        self.log_json(self._parent_id, plan.to_dict(), "plan.json")  # written, never read back
        return self._parent_id

    def _load_children(self) -> None:
        """--resume: the child runs a killed driver left, and how far each one got (the store's
        last epoch, or a later one still queued from the journal)."""
        for run in self._client.search_runs(
                [self._experiment_id], f"tags.`mlflow.parentRunId` = '{self._parent_id}'",
                max_results=10000):
            trial_id = run.data.tags.get("dlopt.trial_id")
            if not trial_id:
                continue
            self._children[trial_id] = run.info.run_id
            self._known.add(trial_id)
            history = self._client.get_metric_history(run.info.run_id, "train_loss")
            stored = max((m.step for m in history), default=0)
            self._last_epoch[trial_id] = max(stored, *(r["epoch"] for r in self._pending if
                                                      r.get("trial") == trial_id and r.get("epoch")),
                                            0)
            if "model_bytes" in run.data.metrics:
                self._finals.add(trial_id)

    def finish_parent(self, status: str = "FINISHED") -> None:
        if self._parent_id:
            self._write({"op": "set_terminated", "ref": self._parent_id, "status": status})

    # --- children
    def child(self, trial_id: str, run_name: str, params: dict, tags: dict[str, str],
              spec_json: Optional[dict] = None) -> Optional[str]:
        """Create (or queue) the trial's child run; its run id once it exists."""
        if trial_id in self._known:
            return self._children.get(trial_id)
        self._known.add(trial_id)
        self._last_epoch.setdefault(trial_id, 0)
        run_tags = {"mlflow.parentRunId": self._parent_id, "dlopt.trial_id": trial_id,
                    "dlopt.role": "trial", "mlflow.user": getpass.getuser(), **tags}
        self._write({"op": "create_run", "trial": trial_id, "name": run_name, "tags": run_tags})
        self._log_params(trial_id, params)
        if spec_json is not None:
            self.log_json(trial_id, spec_json, "spec.json")
            self._log_dataset(trial_id, spec_json)
        return self._children.get(trial_id)

    def _log_dataset(self, trial_id: str, spec_json: dict) -> None:
        rec = records.dataset_input(trial_id, spec_json)
        if rec is not None:
            self._write(rec)

    def log_result(self, trial_id: str, result: dict) -> None:
        """Per-epoch metrics once per epoch; the final (compression) report once."""
        epoch = int(result.get(EPOCH, 0))
        now = int(time.time() * 1000)
        metrics = numeric_metrics(result)
        if result.get(FINAL):
            if trial_id in self._finals:
                return
            self._finals.add(trial_id)
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
        batch, self._last_epoch[trial_id] = records.epoch_metrics(
            result, self._last_epoch.get(trial_id, 0), now)
        for i in range(0, len(batch), records.BATCH_METRICS):
            chunk = batch[i:i + records.BATCH_METRICS]
            self._write({"op": "log_batch", "ref": trial_id, "trial": trial_id,
                         "epoch": max(m[3] for m in chunk), "metrics": chunk})

    def end_child(self, trial_id: str, status: str) -> None:
        if trial_id in self._known:
            self._write({"op": "set_terminated", "ref": trial_id, "status": status})

    # --- helpers
    def _log_params(self, ref: str, params: dict[str, Any]) -> None:
        items = [[k, param_text(v)] for k, v in params.items()]
        for i in range(0, len(items), 100):
            self._write({"op": "log_batch", "ref": ref, "params": items[i:i + 100]})

    def log_json(self, ref: str, obj: Any, name: str) -> None:
        self._write({"op": "log_artifact", "ref": ref, "name": name,
                     "text": json.dumps(obj, indent=1, default=str)})
