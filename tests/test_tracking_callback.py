"""The MLflow callback hands trial events to one writer thread: Tune's loop never waits on
the store, writes keep event order, every epoch is logged once (real MLflow, SQLite; no Ray
cluster: the events are called as Tune calls them)."""
import threading
import time
from types import SimpleNamespace

import pytest
from mlflow.tracking import MlflowClient

from dlopt.tracking.callback import MlflowCallback
from dlopt.tracking.store import Tracker

BASE = {"name": "cb", "epochs": 2, "data": {"dataset": "linear_1d"}, "model": {"arch": "linear"},
        "search": {"metric": "val_loss", "mode": "min"}, "resources": {"num_workers": 1},
        "tracking": {"experiment": "cb"}}


def _trial(i):
    return SimpleNamespace(trial_id=f"t{i}", config={}, checkpoint=None, path=None)


def _tracker(tmp_path):
    from dlopt.spec import Experiment

    base = Experiment.model_validate(BASE).model_dump(mode="json")
    tracker = Tracker(f"sqlite:///{tmp_path}/mlflow.db", "cb")
    tracker.start_parent("cb-20260101-000000", {"spec_json": base, "trials": 3, "domains": []}, {})
    return tracker, base


def test_events_are_written_in_order_off_tunes_thread(tmp_path):
    tracker, base = _tracker(tmp_path)
    cb = MlflowCallback(tracker, base, {}, {"dlopt.sweep": "cb-20260101-000000"})
    gate = threading.Event()
    real = tracker.log_result

    def slow_log_result(trial_id, result):
        gate.wait(10)  # the store is slow: the writer waits, Tune's thread must not
        real(trial_id, result)

    tracker.log_result = slow_log_result
    trials = [_trial(i) for i in range(3)]
    t0 = time.monotonic()
    for trial in trials:
        cb.on_trial_start(0, trials, trial)
        for epoch in (1, 2, 2):  # epoch 2 reported twice (a restarted worker): logged once
            cb.on_trial_result(0, trials, trial, {"epoch": epoch, "train_loss": 1.0 / epoch,
                                                  "val_loss": 2.0 / epoch})
        cb.on_trial_complete(0, trials, trial)
    assert time.monotonic() - t0 < 1.0  # nine results and six other events handed over
    gate.set()
    cb.close()
    client = MlflowClient(tracker.uri)
    runs = {tracker.children[t.trial_id]: t for t in trials}
    assert len(runs) == 3
    for run_id in runs:
        assert [m.step for m in client.get_metric_history(run_id, "train_loss")] == [1, 2]
        run = client.get_run(run_id)
        assert run.info.status == "FINISHED" and run.data.params["epochs"] == "2"
    names = sorted(client.get_run(r).info.run_name for r in runs)
    assert names == ["trial-001", "trial-002", "trial-003"]


def test_a_writer_failure_is_raised_on_the_driver_thread(tmp_path):
    tracker, base = _tracker(tmp_path)
    cb = MlflowCallback(tracker, base, {}, {})

    def broken(trial_id, result):
        raise RuntimeError("store broke")

    tracker.log_result = broken
    trial = _trial(0)
    cb.on_trial_start(0, [trial], trial)
    cb.on_trial_result(0, [trial], trial, {"epoch": 1, "train_loss": 1.0})
    cb.on_trial_complete(0, [trial], trial)  # not written after the failure
    with pytest.raises(RuntimeError, match="store broke"):
        cb.close()
    assert MlflowClient(tracker.uri).get_run(tracker.children["t0"]).info.status == "RUNNING"


def test_the_callback_pickles_without_tracker_or_thread(tmp_path):
    import pickle

    tracker, base = _tracker(tmp_path)
    cb = MlflowCallback(tracker, base, {}, {})
    trial = _trial(0)
    cb.on_trial_start(0, [trial], trial)
    state = pickle.loads(pickle.dumps(cb)).__dict__
    assert state["tracker"] is None and state["_thread"] is None
    cb.close()
