"""dlopt.tracking.artifacts: text artifacts land in the run's artifact location, scrubbed, and
a run the Tracker created is not fetched again to find it. Real MLflow (SQLite store)."""
import json
from pathlib import Path

import mlflow.tracking._tracking_service.client as service
from mlflow.tracking import MlflowClient

from dlopt.tracking.artifacts import RunArtifacts
from dlopt.tracking.store import Tracker
from dlopt_testing import sweep_plan


def _read(client, run_id, name, tmp_path):
    d = tmp_path / "dl"
    d.mkdir(exist_ok=True)
    return Path(client.download_artifacts(run_id, name, str(d))).read_text()


def _count_run_fetches(monkeypatch) -> list:
    fetched, real = [], service.TrackingServiceClient.get_run
    monkeypatch.setattr(service.TrackingServiceClient, "get_run",
                        lambda self, run_id: fetched.append(run_id) or real(self, run_id))
    return fetched


def test_a_created_runs_artifact_is_written_without_fetching_the_run(tmp_path, monkeypatch):
    monkeypatch.setenv("MY_SERVICE_TOKEN", "tok-123456")
    uri = f"sqlite:///{tmp_path}/m.db"
    tracker = Tracker(uri, "artifacts", tmp_path)
    tracker.start_parent(sweep_plan("sweep-1"), {})
    fetched = _count_run_fetches(monkeypatch)
    tracker.child("t1", "trial-1", {"a": 1}, {}, {"data": {}, "token": "tok-123456"})
    tracker.flush()
    run_id = tracker.run_id_of("t1")
    assert fetched == []  # spec.json written from create_run's artifact URI
    text = _read(MlflowClient(uri), run_id, "spec.json", tmp_path)
    assert json.loads(text)["token"] != "tok-123456" and "tok-123456" not in text


def test_a_run_of_an_earlier_process_is_found_by_the_client(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path}/m.db"
    client = MlflowClient(uri)
    run = client.create_run(client.create_experiment("x"))
    fetched = _count_run_fetches(monkeypatch)
    RunArtifacts(uri).write_text(client, run.info.run_id, "note.json", '{"ok": 1}')
    assert fetched == [run.info.run_id]  # what every artifact write cost before
    assert json.loads(_read(client, run.info.run_id, "note.json", tmp_path)) == {"ok": 1}
