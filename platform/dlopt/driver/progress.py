"""The terminal view of a running sweep: a live table of trials (status, epoch, metric).

It writes to the stream its caller gives (the CLI passes stdout); dlopt logs nothing here.
"""
from __future__ import annotations

import sys
import time

from ray.tune import Callback

from dlopt.spec.plan import assignment
from dlopt.spec.report import EPOCH
from dlopt.tracking.names import trial_run_name


class ProgressCallback(Callback):
    """A Tune callback printing the table every `every_s` seconds and when a trial ends."""

    def __init__(self, plan, tables, every_s: float = 5.0, stream=None):
        self.plan = plan
        self.tables = tables
        self.every_s = every_s
        self.stream = stream or sys.stdout
        self.rows: dict[str, dict] = {}
        self.last_print = 0.0
        self.metric = plan.headline[0]

    def _row(self, trial):
        if trial.trial_id not in self.rows:
            name = trial_run_name(len(self.rows) + 1, assignment(dict(trial.config), self.tables))
            self.rows[trial.trial_id] = {"name": name, "status": "RUNNING", "epoch": 0, "value": None}
        return self.rows[trial.trial_id]

    def _print(self, force=False):
        now = time.monotonic()
        if not force and now - self.last_print < self.every_s:
            return
        self.last_print = now
        done = sum(r["status"] != "RUNNING" for r in self.rows.values())
        lines = [f"-- {self.plan.sweep_name}: {done}/{self.plan.trials} trials done"]
        width = min(60, max((len(r["name"]) for r in self.rows.values()), default=10))
        for r in self.rows.values():
            value = "-" if r["value"] is None else f"{r['value']:.4g}"
            lines.append(f"   {r['name'][:width]:<{width}}  {r['status']:<8} epoch {r['epoch']:>3}/"
                         f"{self.plan.epochs}  {self.metric} {value}")
        print("\n".join(lines), file=self.stream, flush=True)

    def on_trial_start(self, iteration, trials, trial, **info):
        self._row(trial)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        row = self._row(trial)
        row["epoch"] = int(result.get(EPOCH, row["epoch"]))
        if self.metric in result:
            row["value"] = result[self.metric]
        self._print()

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._row(trial)["status"] = "DONE"
        self._print(force=True)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._row(trial)["status"] = "ERROR"
        self._print(force=True)
