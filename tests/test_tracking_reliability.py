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
    tracker.start_parent("s-1", {"spec_json": {"search": {}}, "trials": 1, "domains": []}, {})
    outage = Outage(tracker.client)
    tracker.client = outage
    tracker.child("t1", "trial-001", {"optimizer.lr": 0.1}, {})
    tracker.log_result("t1", {"epoch": 1, "train_loss": 1.0, "val_loss": 1.1})
    outage.down = True  # the server goes away: nothing raises, writes wait in the queue
    tracker.log_result("t1", {"epoch": 2, "train_loss": 0.8, "val_loss": 0.9})
    tracker.log_result("t1", {"epoch": 2, "train_loss": 0.8, "val_loss": 0.9})  # a re-report
    tracker.log_result("t1", {"epoch": 3, "train_loss": 0.7, "val_loss": 0.8})
    tracker.end_child("t1", "FINISHED")
    assert len(tracker.pending) == 3  # epoch 2, epoch 3, end: the re-report is not queued
    # a warning through logging ("dlopt.tracking.store"); shown on stderr outside pytest
    assert "buffering tracking writes" in capsys.readouterr().err + caplog.text
    with pytest.raises(TrackingUnavailable, match="3 tracking writes"):
        tracker.drain(timeout_s=1.0)  # bounded retry, then a clear error
    outage.down = False
    tracker.drain(timeout_s=5.0)
    client = MlflowClient(uri)
    run = client.get_run(tracker.children["t1"])
    assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "train_loss")) == [1, 2, 3]
    assert run.info.status == "FINISHED"
    assert not tracker.pending


def test_child_created_during_outage_is_created_once(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = Tracker(uri, "reliability")
    tracker.start_parent("s-2", {"spec_json": {"search": {}}, "trials": 1, "domains": []}, {})
    outage = Outage(tracker.client)
    tracker.client = outage
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
