"""PBT perturbations -> MLflow, on the driver (called by dlopt.tracking.callback).

A trial's MLflow params are logged once, when its child run is created, and MLflow
refuses to change a param. When PBT clones a top trial's checkpoint into a bottom trial
and perturbs its config, the change is recorded beside the params instead:
- metric `pbt.<path>` (e.g. `pbt.optimizer.lr`) at step = the epoch it took effect after,
  with the starting value at step 0, so the hyperparameter's history plots like a metric;
- tags `dlopt.pbt.perturbations` (count) and `dlopt.pbt.last` (a readable line);
- artifact `pbt_perturbations.json`: every perturbation with the cloned trial and run.
The per-epoch metric history stays complete: the clone resumes at the epoch after the
cloned checkpoint (synchronous PBT), and the tracker logs each epoch once.
"""
from __future__ import annotations

import time
from typing import Any, Optional

from mlflow.entities import Metric

from dlopt.spec.report import EPOCH


def _numeric(value: Any) -> Optional[float]:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def changed(old: dict, new: dict) -> dict[str, list]:
    """Config keys whose value differs: path -> [old, new]."""
    return {k: [old.get(k), v] for k, v in new.items() if old.get(k) != v}


def source_trial(checkpoint_path: Optional[str], trials: list) -> Optional[Any]:
    """The trial whose storage directory holds `checkpoint_path` (the trial PBT cloned)."""
    if not checkpoint_path:
        return None
    for t in trials:
        root = getattr(t, "path", None)
        if root and checkpoint_path.rstrip("/").startswith(root.rstrip("/") + "/"):
            return t
    return None


class PerturbationLog:
    def __init__(self, tracker):
        self.tracker = tracker
        self.config: dict[str, dict] = {}       # trial id -> config its history was logged with
        self.start_ckpt: dict[str, Optional[str]] = {}
        self.pending: set[str] = set()
        self.history: dict[str, list[dict]] = {}

    def started(self, trial) -> None:
        """Trial (re)started: remember which checkpoint it restores from."""
        self.config.setdefault(trial.trial_id, dict(trial.config))
        ckpt = trial.checkpoint
        self.start_ckpt[trial.trial_id] = ckpt.path if ckpt is not None else None
        self.pending.add(trial.trial_id)

    def result(self, trial, trials: list, result: dict) -> Optional[dict]:
        """On the first result after a (re)start: record a perturbation if there was one."""
        tid = trial.trial_id
        if tid not in self.pending:
            return None
        self.pending.discard(tid)
        before = self.config.setdefault(tid, dict(trial.config))
        diff = changed(before, dict(trial.config))
        donor = source_trial(self.start_ckpt.get(tid), trials)
        cloned = donor is not None and donor.trial_id != tid
        if not diff and not cloned:
            return None  # a plain pause/resume of the same trial
        epoch = max(int(result.get(EPOCH, 1)) - 1, 0)  # the cloned checkpoint's epoch
        entry = {"epoch": epoch, "cloned_trial": donor.trial_id if cloned else None,
                 "cloned_run": self.tracker.run_id_of(donor.trial_id) if cloned else None,
                 "changes": diff, "time": time.time()}
        self.config[tid] = dict(trial.config)
        self.history.setdefault(tid, []).append(entry)
        self._write(tid, entry, first=len(self.history[tid]) == 1)
        return entry

    def _write(self, tid: str, entry: dict, first: bool) -> None:
        run_id = tid  # resolved to the child run when the queued write runs
        now = int(time.time() * 1000)
        metrics = []
        for path, (old, new) in entry["changes"].items():
            if first and _numeric(old) is not None:
                metrics.append(Metric(f"pbt.{path}", _numeric(old), now, 0))
            if _numeric(new) is not None:
                metrics.append(Metric(f"pbt.{path}", _numeric(new), now, entry["epoch"]))
        if metrics:
            self.tracker.log_metrics(run_id, metrics)
        shown = ", ".join(f"{k} {o!r}->{n!r}" for k, (o, n) in entry["changes"].items())
        line = (f"epoch {entry['epoch']}: cloned trial {entry['cloned_trial']}"
                + (f"; {shown}" if shown else ""))
        self.tracker.set_tag(run_id, "dlopt.pbt.perturbations", str(len(self.history[tid])))
        self.tracker.set_tag(run_id, "dlopt.pbt.last", line[:5000])
        self.tracker.log_json(run_id, self.history[tid], "pbt_perturbations.json")
        if self.tracker.parent_id:
            total = sum(len(h) for h in self.history.values())
            self.tracker.set_tag(self.tracker.parent_id, "dlopt.pbt.perturbations", str(total))
