"""Post-sweep writes survive a reply lost after the server took the request (issue 19).

A real `mlflow server` behind a loopback proxy (tests/dlopt_testing.LossyProxy) that forwards
a request, lets the server answer, and drops the connection before the reply: the caller
sees a transient error and retries (dlopt.tracking.retry). Each retried write must leave the
store as one attempt would: one model version, one metric row, one alias, one artifact.
"""
import os
import signal

import pytest
from dlopt_testing import LossyProxy, free_port, mlflow_server
from mlflow.tracking import MlflowClient


@pytest.fixture(scope="module")
def lossy(tmp_path_factory):
    """One server for the module (starting one takes long on a loaded machine)."""
    tmp_path = tmp_path_factory.mktemp("lossy")
    # no retries inside MLflow's HTTP client: the lost reply reaches dlopt's own retry
    saved = {k: os.environ.get(k) for k in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES",
                                            "MLFLOW_HTTP_REQUEST_TIMEOUT")}
    os.environ.update(MLFLOW_HTTP_REQUEST_MAX_RETRIES="0", MLFLOW_HTTP_REQUEST_TIMEOUT="20")
    port = free_port()
    server = mlflow_server(tmp_path / "s.db", tmp_path / "art", port, tmp_path / "server.log")
    proxy = LossyProxy(port)
    try:
        yield proxy, f"http://127.0.0.1:{proxy.port}", MlflowClient(f"http://127.0.0.1:{port}")
    finally:
        proxy.close()
        os.killpg(server.pid, signal.SIGKILL)
        server.wait(timeout=30)
        for k, v in saved.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)


def _checkpoint(path):
    from dlopt import Experiment, Model
    from dlopt.artifact.files import save_dense
    from dlopt.ml import models

    spec = Experiment(name="idem", model=Model(hidden=[8]))
    save_dense(models.build(spec.model, (64,), 10), spec.model_dump(mode="json"),
               {"input_shape": [64], "out_features": 10, "task": "classification"}, path)
    return str(path)


def test_retried_registration_finds_the_version_the_lost_reply_created(lossy, tmp_path):
    import mlflow
    from dlopt.registry.register import register
    from dlopt.tracking.retry import retry_transient
    from dlopt.tracking.scrub import ScrubbingClient

    proxy, uri, direct = lossy
    mlflow.set_tracking_uri(uri)
    run = MlflowClient(uri).create_run(MlflowClient(uri).create_experiment("idem"))
    ckpt = _checkpoint(tmp_path / "ckpt")
    # what `register` uses of the Tracker: its URI and its scrubbing client
    tracker = type("T", (), {"uri": uri, "client": ScrubbingClient(MlflowClient(uri))})()
    before = sum(proxy.lost.values())
    proxy.lose("/model-versions/create")  # the version is made; the reply is lost
    proxy.lose("/registered-models/alias")  # the alias is set; the reply is lost
    version = retry_transient(
        lambda: register(tracker, run.info.run_id, ckpt, "idem-model", "champion",
                         {"dlopt.sweep": "s"}), 120, "registering")
    assert sum(proxy.lost.values()) - before == 2  # both faults happened
    versions = direct.search_model_versions("name = 'idem-model'")
    assert [v.version for v in versions] == [version] == ["1"]
    assert direct.get_model_version_by_alias("idem-model", "champion").version == "1"
    assert versions[0].tags["dlopt.source_run"] == run.info.run_id
    # the whole registration again (e.g. finalize retried): still one version
    assert register(tracker, run.info.run_id, ckpt, "idem-model", "champion", {}) == "1"
    assert len(direct.search_model_versions("name = 'idem-model'")) == 1


def test_retried_metric_tag_and_artifact_writes_are_written_once(lossy, tmp_path):
    from dlopt.tracking.retry import RetryingClient

    proxy, uri, direct = lossy
    client = RetryingClient(MlflowClient(uri), 60)
    run_id = client.create_run(client.create_experiment("idem2")).info.run_id
    before = sum(proxy.lost.values())  # one proxy for the module
    proxy.lose("/runs/log-metric")
    client.log_metric(run_id, "best_val_accuracy", 0.93)  # finalize's best_* metrics
    proxy.lose("/runs/log-batch")
    from mlflow.entities import Metric

    client.log_batch(run_id, metrics=[Metric("test_accuracy", 0.91, 1234, 0)])  # test report
    proxy.lose("/runs/set-tag")
    client.set_tag(run_id, "dlopt.registered", "m v1")
    (tmp_path / "review").mkdir()
    (tmp_path / "review" / "trials.csv").write_text("trial,val\nt1,0.9\n")
    proxy.lose("/mlflow-artifacts/artifacts")  # the review's upload
    client.log_artifacts(run_id, str(tmp_path / "review"), "review")
    assert sum(proxy.lost.values()) - before == 4
    assert [m.value for m in direct.get_metric_history(run_id, "best_val_accuracy")] == [0.93]
    assert [m.value for m in direct.get_metric_history(run_id, "test_accuracy")] == [0.91]
    assert direct.get_run(run_id).data.tags["dlopt.registered"] == "m v1"
    assert [a.path for a in direct.list_artifacts(run_id, "review")] == ["review/trials.csv"]
