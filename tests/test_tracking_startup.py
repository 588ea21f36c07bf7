"""The sweep's start-up MLflow calls (experiment look-up and creation, the parent run) retry
transient errors like its writes (dlopt.tracking.startup): a server slow to answer its first
requests delays the start, a lost reply makes nothing twice, a refusal fails at once. The
store is a real SQLite MLflow store; the faults come from a client wrapper (no Ray)."""
import pytest
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from dlopt.tracking import startup
from dlopt.tracking.retry import TrackingUnavailable
from dlopt.tracking.store import Tracker
from dlopt_testing import sweep_plan

TIMEOUT = MlflowException("API request to http://127.0.0.1:1/api/2.0/mlflow/experiments/"
                          "get-by-name failed with exception ReadTimeout: Read timed out")


class Flaky:
    """A real MlflowClient whose calls named in `fail` raise a read timeout their first n
    times; with `lose`, the call is made and then the reply is lost (the timeout raised)."""

    def __init__(self, client, fail: dict[str, int], lose: bool = False):
        self.client, self.fail, self.lose, self.calls = client, dict(fail), lose, []

    def __getattr__(self, name):
        attr = getattr(self.client, name)
        if not callable(attr):
            return attr

        def call(*args, **kwargs):
            self.calls.append(name)
            if self.fail.get(name, 0) > 0:
                self.fail[name] -= 1
                if self.lose:
                    attr(*args, **kwargs)
                raise TIMEOUT
            return attr(*args, **kwargs)
        return call


@pytest.fixture
def uri(tmp_path):
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def test_tracker_start_survives_a_store_that_times_out_its_first_requests(uri, monkeypatch):
    flaky = {}

    def client(tracking_uri):
        flaky["c"] = Flaky(MlflowClient(tracking_uri),
                           {"get_experiment_by_name": 2, "search_runs": 1, "create_run": 1})
        return flaky["c"]

    monkeypatch.setattr("dlopt.tracking.store.MlflowClient", client)
    monkeypatch.setenv("DLOPT_TRACKING_RETRY_S", "60")
    tracker = Tracker(uri, "exp")
    parent = tracker.start_parent(sweep_plan("sweep-1"), {})
    calls = flaky["c"].calls
    assert calls.count("get_experiment_by_name") == 3 and calls.count("create_run") == 2, calls
    runs = MlflowClient(uri).search_runs([tracker.experiment_id])
    assert [r.info.run_id for r in runs] == [parent]


def test_a_lost_create_reply_makes_one_experiment_and_one_parent_run(uri, monkeypatch):
    monkeypatch.setenv("DLOPT_TRACKING_RETRY_S", "60")
    from dlopt.tracking.experiments import open_experiment

    real = MlflowClient(uri)
    flaky = Flaky(real, {"create_experiment": 1, "create_run": 1}, lose=True)
    exp = startup.at_start(lambda: open_experiment(flaky, "exp"), "experiment")
    assert [e.experiment_id for e in real.search_experiments(filter_string="name = 'exp'")] == [exp]
    run = startup.create_parent(flaky, exp, "sweep-1", {"dlopt.sweep": "sweep-1",
                                                        "dlopt.role": "sweep"})
    assert [r.info.run_id for r in real.search_runs([exp])] == [run.info.run_id]
    assert startup.find_parent(flaky, exp, "sweep-1").info.run_id == run.info.run_id


def test_start_up_retry_is_bounded_and_refusals_fail_at_once(uri, monkeypatch):
    monkeypatch.setenv("DLOPT_TRACKING_RETRY_S", "1")
    flaky = Flaky(MlflowClient(uri), {"get_experiment_by_name": 100})
    with pytest.raises(TrackingUnavailable, match="experiment look-up at the sweep's start"):
        startup.at_start(lambda: flaky.get_experiment_by_name("x"), "experiment look-up")
    refusals = []

    def refuse():
        refusals.append(1)
        raise MlflowException("INVALID_PARAMETER_VALUE: bad name")

    with pytest.raises(MlflowException, match="bad name"):
        startup.at_start(refuse, "experiment")
    assert refusals == [1]
