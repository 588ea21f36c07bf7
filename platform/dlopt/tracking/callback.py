"""The Ray Tune callback that feeds trial events to the MLflow write queue.

Tune calls it on the driver for every trial start, result, completion and error, which is
what keeps MLflow writes in one process (docs/architecture.md, "One MLflow writer: the
driver"). The only tracking module that imports Ray.
"""
from __future__ import annotations

from ray.tune import Callback

from dlopt.spec import flatten
from dlopt.spec.plan import assignment, trial_spec
from dlopt.tracking.names import trial_run_name
from dlopt.tracking.perturbations import PerturbationLog
from dlopt.tracking.scrub import scrub_value
from dlopt.tracking.store import Tracker


class MlflowCallback(Callback):
    """Tune callback on the driver: trial events -> the Tracker."""

    def __init__(self, tracker: Tracker, base_json: dict, tables: dict[str, list], tags: dict):
        self.tracker = tracker
        self.base_json = base_json
        self.tables = tables
        self.tags = {k: scrub_value(v) for k, v in tags.items()}  # also pickled in tuner.pkl
        self.order: dict[str, int] = {}
        self.pbt = PerturbationLog(tracker)  # PBT config changes: params cannot change

    def __getstate__(self):
        # Tune pickles its RunConfig (callbacks included) into tuner.pkl in Ray storage; the
        # tracker (client, URI with possible credentials, queued writes) stays out of it.
        # --resume installs fresh callbacks.
        return {**self.__dict__, "tracker": None, "pbt": None}

    def _ensure_child(self, trial) -> str:
        if trial.trial_id in self.tracker.known:
            return self.tracker.children.get(trial.trial_id)
        assigned = assignment(dict(trial.config), self.tables)
        self.order.setdefault(trial.trial_id, len(self.tracker.children) + 1)
        spec = trial_spec(self.base_json, self.tables, dict(trial.config))
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
