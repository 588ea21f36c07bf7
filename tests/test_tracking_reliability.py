"""Driver-side tracking without Ray: secrets scrubbed, writes queued in order through an outage.

The store is a real SQLite MLflow store; the outage is injected by a client wrapper that
raises the connection error MLflow's REST client raises while the server is down.
"""
import subprocess
import sys

import pytest
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from dlopt.tracking.retry import TrackingUnavailable, is_transient
from dlopt.tracking.scrub import scrub
from dlopt.tracking.store import Tracker
from dlopt_testing import sweep_plan
from dlopt.tracking.uris import redact_uri


def test_scrub_drops_uri_credentials_and_secret_env_values(monkeypatch):
    monkeypatch.setenv("MY_SERVICE_TOKEN", "tok-123456")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "aws-abcdef")
    monkeypatch.setenv("UNRELATED", "visible-value")
    text = ("dlopt run x.py --tracking-uri https://bob:pa%40ss@mlflow.example:443/p "
            "s3://AKIA:SECRETKEY@bucket/x tok-123456 aws-abcdef visible-value")
    out = scrub(text)
    for secret in ("bob", "pa%40ss", "AKIA", "SECRETKEY", "tok-123456", "aws-abcdef"):
        assert secret not in out
    assert "https://mlflow.example:443/p" in out and "s3://bucket/x" in out
    assert "visible-value" in out
    assert redact_uri("http://u:p@h:5000") == "http://h:5000"


def test_scrub_uris_retry_and_names_load_neither_ray_nor_mlflow():
    """`dlopt evaluate` scrubs an MLflow error: that must not load Ray (nor MLflow early)."""
    code = ("import sys, dlopt.tracking.scrub, dlopt.tracking.uris, dlopt.tracking.retry, "
            "dlopt.tracking.names; print('ray' in sys.modules, 'mlflow' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_transient_errors_are_told_from_refusals():
    assert is_transient(MlflowException(
        "API request to http://127.0.0.1:1/api failed with exception ConnectionError"))
    assert is_transient(MlflowException("(sqlite3.OperationalError) database is locked"))
    assert not is_transient(MlflowException("INVALID_PARAMETER_VALUE: bad key"))


class Outage:
    """Wraps a real MlflowClient; while `down`, every call fails like an unreachable server."""

    def __init__(self, client):
        self.client, self.down, self.calls = client, False, 0

    def __getattr__(self, name):
        attr = getattr(self.client, name)
        if not callable(attr):
            return attr

        def call(*args, **kwargs):
            self.calls += 1
            if self.down:
                raise MlflowException("API request to http://127.0.0.1:5000/api/2.0 failed with "
                                      "exception ConnectionError('Connection refused')")
            return attr(*args, **kwargs)

        return call


def test_outage_buffers_in_order_and_drain_writes_everything(tmp_path, capsys, caplog):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = Tracker(uri, "reliability")
    tracker.start_parent(sweep_plan("s-1"), {})
    outage = Outage(tracker.client)
    tracker._client = outage
    tracker.child("t1", "trial-001", {"optimizer.lr": 0.1}, {})
    tracker.log_result("t1", {"epoch": 1, "train_loss": 1.0, "val_loss": 1.1})
    outage.down = True  # the server goes away: nothing raises, writes wait in the queue
    tracker.log_result("t1", {"epoch": 2, "train_loss": 0.8, "val_loss": 0.9})
    tracker.log_result("t1", {"epoch": 2, "train_loss": 0.8, "val_loss": 0.9})  # a re-report
    tracker.log_result("t1", {"epoch": 3, "train_loss": 0.7, "val_loss": 0.8})
    tracker.end_child("t1", "FINISHED")
    assert tracker.pending_count == 3  # epoch 2, epoch 3, end: the re-report is not queued
    # a warning through logging ("dlopt.tracking.store"); shown on stderr outside pytest
    assert "buffering tracking writes" in capsys.readouterr().err + caplog.text
    with pytest.raises(TrackingUnavailable, match="3 tracking writes"):
        tracker.drain(timeout_s=1.0)  # bounded retry, then a clear error
    outage.down = False
    tracker.drain(timeout_s=5.0)
    client = MlflowClient(uri)
    run = client.get_run(tracker.run_id_of("t1"))
    assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "train_loss")) == [1, 2, 3]
    assert run.info.status == "FINISHED"
    assert not tracker.pending_count


def test_child_created_during_outage_is_created_once(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = Tracker(uri, "reliability")
    tracker.start_parent(sweep_plan("s-2"), {})
    outage = Outage(tracker.client)
    tracker._client = outage
    outage.down = True
    assert tracker.child("t9", "trial-009", {"a": 1}, {}, {"name": "x"}) is None
    tracker.log_result("t9", {"epoch": 1, "train_loss": 1.0})
    outage.down = False
    tracker.drain(timeout_s=5.0)
    client = MlflowClient(uri)
    runs = client.search_runs([tracker.experiment_id], "tags.`dlopt.trial_id` = 't9'")
    assert len(runs) == 1 and runs[0].data.params == {"a": "1"}
    assert [m.step for m in client.get_metric_history(runs[0].info.run_id, "train_loss")] == [1]
    assert [a.path for a in client.list_artifacts(runs[0].info.run_id)] == ["spec.json"]


def test_failed_test_report_warning_hides_uri_credentials(monkeypatch, capsys, caplog):
    """An MLflow error quotes the request URL; the warning printed when the test-split report
    fails must not carry the tracking URI's password (seen once in a server-outage test)."""
    from dlopt.registry import evaluation
    from dlopt.driver import finalize

    def fail(*args, **kwargs):
        raise RuntimeError("API request to http://dlopt:pw-secret-1@127.0.0.1:5000/api/2.0/"
                           "mlflow/registered-models/get failed with exception HTTPConnect")

    class Client:
        tags = []

        def set_tag(self, run_id, key, value):
            self.tags.append((run_id, key, value))

    class Tracker:
        client, parent_id = Client(), "parent"

    monkeypatch.setattr(evaluation, "final_report", fail)
    finalize.final_test_report(Tracker(), None, [], [])
    err = capsys.readouterr().err + caplog.text  # printed or logged
    assert "the test-split report failed" in err and "127.0.0.1:5000" in err
    assert "pw-secret-1" not in err
    assert Tracker.client.tags and Tracker.client.tags[0][1] == "dlopt.test_report"


# ------------------------------------------------------------------ the journal (issue 19)
def _sweep(tracker, name="s-j"):
    tracker.start_parent(sweep_plan(name), {})


def test_driver_killed_during_outage_loses_nothing_replay_writes_each_epoch_once(tmp_path):
    """Outage, then the driver dies (its Tracker is dropped unclosed): the journal holds the
    queued writes; a new Tracker on the same journal replays them in order, and a record the
    store took just before the kill (its `done` mark lost) is not written twice."""
    from dlopt.tracking.journal import NAME, Journal

    uri, sweep_dir = f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path / "rr" / "s-j"
    tracker = Tracker(uri, "journal")
    tracker.open_journal(sweep_dir)
    _sweep(tracker)
    tracker.child("t1", "trial-001", {"optimizer.lr": 0.1}, {})
    for e in (1, 2):
        tracker.log_result("t1", {"epoch": e, "train_loss": 1.0 / e, "epoch_end_time": 1000.0 + e})
    outage = Outage(tracker.client)
    tracker._client = outage
    outage.down = True
    for e in range(3, 9):
        tracker.log_result("t1", {"epoch": e, "train_loss": 1.0 / e, "epoch_end_time": 1000.0 + e})
    assert tracker.pending_count == 6
    # the store took epoch 3 but the driver died before marking it done
    outage.down = False
    tracker._apply(tracker._pending[0])  # written, but neither popped nor marked done
    outage.down = True
    with open(sweep_dir / NAME, "ab") as f:
        f.write(b'{"seq": 999, "op": "log_b')  # killed mid-append: a torn last line
    del tracker  # SIGKILL: nothing closed, nothing flushed

    assert len(Journal(sweep_dir / NAME).pending()) == 6
    again = Tracker(uri, "journal")
    again.open_journal(sweep_dir)
    assert again.replayed == 6 and again._last_epoch["t1"] == 8
    _sweep(again)  # --resume: the parent is found, the journal replayed before the sweep goes on
    assert not again.pending_count and again._last_epoch["t1"] == 8
    again.log_result("t1", {"epoch": 8, "train_loss": 0.5})  # Tune re-reports: not written
    again.log_result("t1", {"epoch": 9, "train_loss": 1 / 9, "epoch_end_time": 1009.0})
    again.end_child("t1", "FINISHED")
    again.close()
    assert not (sweep_dir / NAME).exists()  # removed once the store took everything
    client = MlflowClient(uri)
    history = client.get_metric_history(again.run_id_of("t1"), "train_loss")
    assert sorted(m.step for m in history) == list(range(1, 10))  # each epoch exactly once
    assert [m.timestamp for m in sorted(history, key=lambda m: m.step)][:8] == [
        (1000 + e) * 1000 for e in range(1, 9)]


def test_second_outage_during_replay_keeps_the_rest_journaled(tmp_path):
    """The store goes away again while the journal replays: what is left stays queued and
    journaled, ahead of new writes, and reaches the store once it is back."""
    from dlopt.tracking import store
    from dlopt.tracking.journal import NAME, Journal

    uri, sweep_dir = f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path / "s-k"
    tracker = Tracker(uri, "journal2")
    tracker.open_journal(sweep_dir)
    _sweep(tracker, "s-k")
    tracker.child("t1", "trial-001", {}, {})
    tracker.child("t2", "trial-002", {}, {})
    tracker._client = outage = Outage(tracker.client)
    outage.down = True
    for e in range(1, 6):
        for trial in ("t1", "t2"):
            tracker.log_result(trial, {"epoch": e, "train_loss": 1.0 / e})
    del tracker

    again = Tracker(uri, "journal2")
    again.open_journal(sweep_dir)
    real = again.client

    class Flaky(Outage):  # one run's replayed epochs go through (one request), then the store is away
        batches = 0

        def __getattr__(self, name):
            if name == "log_batch":
                self.batches += 1
                self.down = self.down or self.batches > 1
            return super().__getattr__(name)

    again._client = flaky = Flaky(real)
    old, store.REPLAY_WAIT_S = store.REPLAY_WAIT_S, 0.0
    try:
        _sweep(again, "s-k")
    finally:
        store.REPLAY_WAIT_S = old
    assert 0 < again.pending_count < 10 and len(Journal(sweep_dir / NAME).pending()) == again.pending_count
    again.log_result("t1", {"epoch": 6, "train_loss": 1 / 6})  # the sweep goes on meanwhile
    flaky.down = False
    flaky.__class__ = Outage
    again.drain(timeout_s=5.0)
    again.close()
    client = MlflowClient(uri)
    steps = [m.step for m in client.get_metric_history(again.run_id_of("t1"), "train_loss")]
    assert sorted(steps) == [1, 2, 3, 4, 5, 6]
    steps = [m.step for m in client.get_metric_history(again.run_id_of("t2"), "train_loss")]
    assert sorted(steps) == [1, 2, 3, 4, 5]
    assert not (sweep_dir / NAME).exists()


def test_held_writes_of_a_run_go_in_one_request_and_a_first_create_looks_nothing_up(tmp_path):
    """While the writer is behind (the callback calls `hold_writes`), a trial's params, epochs and
    final metrics reach the store in one log_batch (dlopt.tracking.coalesce); a first
    create_run makes no search (only a retried or replayed one does)."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = Tracker(uri, "coalesce")
    _sweep(tracker, "s-c")
    tracker._client = counted = Outage(tracker.client)
    names = []
    real_getattr = Outage.__getattr__

    class Counting(Outage):
        def __getattr__(self, name):
            names.append(name)
            return real_getattr(self, name)

    counted.__class__ = Counting
    tracker.hold_writes(64)
    tracker.child("t1", "trial-001", {"lr": 0.1, "epochs": 3}, {})
    for e in (1, 2, 3):
        tracker.log_result("t1", {"epoch": e, "train_loss": 1.0 / e})
    tracker.log_result("t1", {"epoch": 3, "final": 1, "model_bytes": 10.0})
    tracker.end_child("t1", "FINISHED")
    assert names == [] and tracker.pending_count == 7
    assert tracker.flush()
    assert names == ["create_run", "log_batch", "set_terminated"]
    client = MlflowClient(uri)
    run = client.get_run(tracker.run_id_of("t1"))
    assert run.data.params == {"lr": "0.1", "epochs": "3"} and run.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train_loss")] == [1, 2, 3]
    assert run.data.metrics["model_bytes"] == 10.0
