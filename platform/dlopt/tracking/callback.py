"""The Ray Tune callback that feeds trial events to the MLflow write queue.

Tune calls it on the driver for every trial start, result, completion and error, which is
what keeps MLflow writes in one process (docs/architecture.md, "One MLflow writer: the
driver"). The only tracking module that imports Ray.

Tune's event loop never waits on MLflow: each event is handed (O(1): a snapshot of the
trial's id, config and the result) to one writer thread that owns the Tracker and makes the
writes in event order. A store write costs 5-50 ms (a SQLite commit, an HTTP round trip);
made inline they held up Tune's loop, and so every trial's next start, for each of them
(benchmarks/sweep_scale.py). `close()` waits for the thread; the sweep calls it before
draining the Tracker, so after `Tuner.fit` the Tracker is used by the driver thread alone.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Any, Callable, Optional

from ray.tune import Callback

from dlopt.runtime.storage import full_uri
from dlopt.spec import flatten
from dlopt.spec.plan import Plan
from dlopt.spec.report import CHECKPOINT_PATH
from dlopt.tracking.names import trial_run_name
from dlopt.tracking.perturbations import PerturbationLog
from dlopt.tracking.scrub import scrub_value
from dlopt.tracking.store import Tracker

log = logging.getLogger(__name__)

# writes the Tracker may hold: bounds what waits unflushed
HOLD_WRITES = 64
# how long a write may wait for others of its run to merge with (dlopt.tracking.coalesce):
# a short trial's params, epochs, final metrics and tags then go as one request instead of
# one each, which is most of the driver's CPU per trial on a busy machine
# (benchmarks/sweep_scale.py --phases); MLflow shows an epoch at most this late
HOLD_SECONDS = 1.0
_FLUSH = object()  # the writer's own wake-up: the oldest held write has waited HOLD_SECONDS


class MlflowCallback(Callback):
    """Tune callback on the driver: trial events -> (writer thread) -> the Tracker."""

    def __init__(self, tracker: Tracker, plan: Plan, tags: dict, background: bool = True,
                 storage: Optional[str] = None):
        self.tracker = tracker
        # remote Ray storage (a URI): checkpoints are tagged as URIs, not as the paths Ray
        # gives inside its filesystem (dlopt.runtime.storage.full_uri); None: local storage
        self.storage = storage
        self.plan = plan  # each trial's spec: plan.trial_spec(config)
        self.tags = {k: scrub_value(v) for k, v in tags.items()}  # also pickled in tuner.pkl
        self.order: dict[str, int] = {}
        self.pbt = PerturbationLog(tracker)  # PBT config changes: params cannot change
        self.background = background
        self._queue: Optional[queue.SimpleQueue] = None
        self._thread: Optional[threading.Thread] = None
        self._error: Optional[BaseException] = None

    def __getstate__(self):
        # Tune pickles its RunConfig (callbacks included) into tuner.pkl in Ray storage; the
        # tracker (client, URI with possible credentials, queued writes) stays out of it.
        # --resume installs fresh callbacks.
        return {**self.__dict__, "tracker": None, "pbt": None, "_queue": None, "_thread": None,
                "_error": None}

    # --- the writer thread
    def _submit(self, fn: Callable[[], Any]) -> None:
        if not self.background:
            fn()
            return
        if self._thread is None:
            self._queue = queue.SimpleQueue()
            self._thread = threading.Thread(target=self._drain_queue, name="dlopt-mlflow-writer",
                                            daemon=True)
            self._thread.start()
        self._queue.put(fn)

    def _drain_queue(self) -> None:
        held_since: Optional[float] = None  # when the oldest write still held was queued
        while True:
            wait = None if held_since is None else held_since + HOLD_SECONDS - time.monotonic()
            try:
                fn = self._queue.get(timeout=max(0.0, wait)) if wait is not None \
                    else self._queue.get()
            except queue.Empty:
                fn = _FLUSH
            if fn is None:
                return
            if self._error is not None:
                continue  # after a failure: no further writes (close() raises it)
            # writes wait while more events do, and go together (dlopt.tracking.coalesce)
            self.tracker.hold_writes(HOLD_WRITES)
            try:
                if fn is _FLUSH:
                    self.tracker.flush()
                    held_since = None
                else:
                    fn()
                if self.tracker.pending_count == 0:
                    held_since = None
                elif held_since is None:
                    held_since = time.monotonic()
            except BaseException as err:  # re-raised on the driver thread by close()
                log.debug("MLflow writer failed", exc_info=True)
                self._error = err

    def close(self) -> None:
        """Wait until every event handed over so far is written (or queued in the Tracker);
        re-raise a failure of the writer here, on the driver thread."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None
            # from here the driver thread writes, each at once; what the last events held
            # is flushed now (still queued if MLflow is down)
            self.tracker.write_at_once()
        if self._error is not None:
            err, self._error = self._error, None
            raise err

    def _with_uri(self, result: dict) -> dict:
        """The result with its checkpoint named by URI where storage is remote."""
        if self.storage is None or not result.get(CHECKPOINT_PATH):
            return result
        return {**result, CHECKPOINT_PATH: full_uri(self.storage, result[CHECKPOINT_PATH])}

    # --- events (run on the writer thread)
    def _ensure_child(self, trial_id: str, config: dict) -> Optional[str]:
        if self.tracker.has_trial(trial_id):
            return self.tracker.run_id_of(trial_id)
        assigned = self.plan.assignment(config)
        self.order.setdefault(trial_id, self.tracker.trial_count + 1)  # created or queued
        spec = self.plan.trial_spec(config)
        spec_json = spec.model_dump(mode="json")
        return self.tracker.child(
            trial_id, trial_run_name(self.order[trial_id], assigned),
            flatten(spec_json), {**self.tags, "dlopt.spec_hash": spec.spec_hash()}, spec_json)

    def on_trial_start(self, iteration, trials, trial, **info):
        now = _Snapshot(trial)

        def write():
            self._ensure_child(now.trial_id, now.config)
            self.pbt.started(now)

        self._submit(write)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        now = _Snapshot(trial)

        def write():
            self._ensure_child(now.trial_id, now.config)
            self.pbt.result(now, trials, result)
            self.tracker.log_result(now.trial_id, self._with_uri(result))

        self._submit(write)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._end(trial, "FINISHED")

    def on_trial_error(self, iteration, trials, trial, **info):
        self._end(trial, "FAILED")

    def _end(self, trial, status: str) -> None:
        now = _Snapshot(trial)
        # An in-trial run's model is Tune's last checkpoint; tagged here, merged into the
        # trial's last write (a TorchTrainer trial's final report names its own).
        reported = (getattr(trial, "last_result", None) or {}).get(CHECKPOINT_PATH)
        model = now.checkpoint.path if now.checkpoint is not None and not reported else None
        if self.storage is not None:
            model = full_uri(self.storage, model)

        def write():
            self._ensure_child(now.trial_id, now.config)
            if model:
                self.tracker.set_tag(now.trial_id, "dlopt.model_checkpoint", model)
            self.tracker.end_child(now.trial_id, status)

        self._submit(write)


class _Snapshot:
    """What the writer needs of a Tune trial, as it was at the event (PBT changes a trial's
    config and checkpoint later, on Tune's thread)."""

    __slots__ = ("trial_id", "config", "checkpoint")

    def __init__(self, trial):
        self.trial_id = trial.trial_id
        self.config = dict(trial.config)
        self.checkpoint = getattr(trial, "checkpoint", None)
