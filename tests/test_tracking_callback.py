"""The MLflow callback hands trial events to one writer thread: Tune's loop never waits on
the store, writes keep event order, every epoch is logged once (real MLflow, SQLite; no Ray
cluster: the events are called as Tune calls them)."""
import pickle
import threading
import time
from types import SimpleNamespace

import pytest
from dlopt.tracking.callback import MlflowCallback
from dlopt.tracking.store import Tracker
from dlopt_testing import sweep_plan
from mlflow.tracking import MlflowClient

BASE = {"name": "cb", "epochs": 2, "data": {"dataset": "linear_1d"}, "model": {"arch": "linear"},
        "search": {"metric": "val_loss", "mode": "min"}, "resources": {"num_workers": 1},
        "tracking": {"experiment": "cb"}}


def _trial(i):
    return SimpleNamespace(trial_id=f"t{i}", config={}, checkpoint=None, path=None)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    from dlopt.spec import Experiment

    base = Experiment.model_validate(BASE).model_dump(mode="json")
    uri = f"sqlite:///{tmp_path_factory.mktemp('cb')}/mlflow.db"
    return uri, base


def _tracker(store, sweep):
    uri, base = store
    tracker = Tracker(uri, "cb")
    tracker.start_parent(sweep_plan(sweep, base, trials=3), {})
    return tracker, base


def test_events_are_written_in_order_off_tunes_thread(store):
    tracker, base = _tracker(store, "cb-20260101-000001")
    cb = MlflowCallback(tracker, sweep_plan("cb", base), {"dlopt.sweep": "cb-20260101-000001"})
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
    runs = [tracker.run_id_of(t.trial_id) for t in trials]
    for run_id in runs:
        assert [m.step for m in client.get_metric_history(run_id, "train_loss")] == [1, 2]
        run = client.get_run(run_id)
        assert run.info.status == "FINISHED" and run.data.params["epochs"] == "2"
    assert [client.get_run(r).info.run_name for r in runs] == ["trial-001", "trial-002", "trial-003"]


def test_a_writer_failure_is_raised_on_the_driver_thread(store):
    tracker, base = _tracker(store, "cb-20260101-000002")
    cb = MlflowCallback(tracker, sweep_plan("cb", base), {})

    def broken(trial_id, result):
        raise RuntimeError("store broke")

    tracker.log_result = broken
    trial = _trial(0)
    cb.on_trial_start(0, [trial], trial)
    cb.on_trial_result(0, [trial], trial, {"epoch": 1, "train_loss": 1.0})
    cb.on_trial_complete(0, [trial], trial)  # not written after the failure
    with pytest.raises(RuntimeError, match="store broke"):
        cb.close()
    assert MlflowClient(tracker.uri).get_run(tracker.run_id_of("t0")).info.status == "RUNNING"
    # pickled into tuner.pkl: no tracker, queue or thread
    state = pickle.loads(pickle.dumps(cb)).__dict__
    assert state["tracker"] is None and state.get("_thread") is None


def test_the_sweeps_sqlite_store_uses_wal_and_others_are_left_alone(tmp_path):
    import sqlite3

    import sqlalchemy
    from dlopt.tracking.sqlite import use_wal
    from dlopt.tracking.uris import sqlite_path

    ours, other = tmp_path / "mlflow.db", tmp_path / "other.db"
    assert sqlite_path(f"sqlite:///{ours}").resolve() == ours.resolve()
    assert not use_wal("http://127.0.0.1:5000") and sqlite_path("sqlite:///:memory:") is None
    assert use_wal(f"sqlite:///{ours}")
    for path, mode in ((ours, "wal"), (other, "delete")):
        with sqlalchemy.create_engine(f"sqlite:///{path}").connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == mode
            assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == (1 if mode == "wal" else 2)
    assert sqlite3.connect(ours).execute("PRAGMA journal_mode").fetchone()[0] == "wal"  # persistent


def test_an_in_trial_runs_model_checkpoint_is_tagged_when_it_ends(store):
    """Tune's last checkpoint of a trial is its model (in-trial runs): tagged with the trial's
    last write, not afterwards one request per trial; a TorchTrainer trial's reported path wins."""
    tracker, base = _tracker(store, "cb-20260101-000003")
    cb = MlflowCallback(tracker, sweep_plan("cb", base), {})
    in_trial = SimpleNamespace(trial_id="a", config={}, path=None, last_result={"epoch": 2},
                               checkpoint=SimpleNamespace(path="/ray/a/checkpoint_000002"))
    trainer = SimpleNamespace(trial_id="b", config={}, path=None,
                              last_result={"checkpoint_path": "/ray/b/train/checkpoint_1"},
                              checkpoint=SimpleNamespace(path="/ray/b/checkpoint_000002"))
    for trial in (in_trial, trainer):
        cb.on_trial_start(0, [trial], trial)
        cb.on_trial_complete(0, [trial], trial)
    cb.close()
    client = MlflowClient(store[0])
    tags = {t: client.get_run(tracker.run_id_of(t)).data.tags for t in ("a", "b")}
    assert tags["a"]["dlopt.model_checkpoint"] == "/ray/a/checkpoint_000002"
    assert "dlopt.model_checkpoint" not in tags["b"]  # its FINAL report tags it (Tracker.log_result)


def test_a_short_trials_writes_go_as_one_batch_and_none_waits_past_the_hold(store):
    """A trial whose events come within HOLD_SECONDS: its params, epochs, final metrics and
    tags go in one log_batch (the driver's CPU per trial, benchmarks/sweep_scale.py); a write
    with nothing after it is still made within the hold, without waiting for the sweep's end."""
    from dlopt.tracking.callback import HOLD_SECONDS

    tracker, base = _tracker(store, "cb-20260101-000004")
    calls = []
    real_batch = tracker.client.log_batch

    def counted(run_id, **kw):
        calls.append(run_id)
        return real_batch(run_id, **kw)

    tracker.client.log_batch = counted
    cb = MlflowCallback(tracker, sweep_plan("cb", base), {})
    trial = SimpleNamespace(trial_id="s", config={}, path=None, last_result={"epoch": 2},
                            checkpoint=SimpleNamespace(path="/ray/s/checkpoint_000002"))
    cb.on_trial_start(0, [trial], trial)
    for epoch in (1, 2):  # events apart, as a trial's are: the writer is idle in between
        time.sleep(HOLD_SECONDS / 8)
        cb.on_trial_result(0, [trial], trial, {"epoch": epoch, "train_loss": 1.0 / epoch})
    time.sleep(HOLD_SECONDS / 8)
    cb.on_trial_complete(0, [trial], trial)
    late = _trial(9)
    cb.on_trial_start(0, [late], late)
    cb.on_trial_result(0, [late], late, {"epoch": 1, "train_loss": 0.5})
    client = MlflowClient(tracker.uri)
    deadline = time.monotonic() + HOLD_SECONDS + 5
    while time.monotonic() < deadline and not (
            tracker.run_id_of("t9") and client.get_metric_history(tracker.run_id_of("t9"),
                                                                  "train_loss")):
        time.sleep(0.1)
    assert client.get_metric_history(tracker.run_id_of("t9"), "train_loss")  # before close()
    cb.close()
    run_id = tracker.run_id_of("s")
    assert calls.count(run_id) == 1
    run = client.get_run(run_id)
    assert [m.step for m in client.get_metric_history(run_id, "train_loss")] == [1, 2]
    assert run.info.status == "FINISHED" and run.data.params["epochs"] == "2"
    assert run.data.tags["dlopt.model_checkpoint"] == "/ray/s/checkpoint_000002"
