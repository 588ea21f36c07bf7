"""The tracking store users move to at scale: `mlflow server` on PostgreSQL (Debian's server,
started here on loopback by clusters/local/postgres.py, psycopg 3 as the driver), and a
200-trial sweep of tiny trials against it with every epoch of every trial checked."""
import importlib.util
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from dlopt_testing import free_port
from mlflow.tracking import MlflowClient

ROOT = Path(__file__).resolve().parents[2]
TRIALS, EPOCHS = 200, 2


def _postgres_module():
    spec = importlib.util.spec_from_file_location("pg_local", ROOT / "clusters" / "local" / "postgres.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    pg = _postgres_module()
    parent = tmp_path_factory.mktemp("pg")
    state = pg.up(parent, durable=False)
    port = free_port()
    log = open(parent / "mlflow.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1", "--backend-store-uri", state["uri"],
         "--artifacts-destination", str(parent / "artifacts")],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        env={**os.environ, "MLFLOW_ENABLE_TELEMETRY": "false", "DO_NOT_TRACK": "1"})
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                if urllib.request.urlopen(f"{url}/health", timeout=2).read() == b"OK":
                    break
            except OSError:
                pass
            assert proc.poll() is None, (parent / "mlflow.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "mlflow server on PostgreSQL did not start"
            time.sleep(1)
        yield url, state
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
        pg.down(parent)


def test_a_200_trial_sweep_on_postgres_logs_every_epoch_once(server, tmp_path):
    from dlopt import (
        Data,
        Experiment,
        Model,
        Optimizer,
        Resources,
        Search,
        Tracking,
        tune,
    )
    from dlopt.driver.sweep import run

    url, state = server
    assert state["uri"].startswith("postgresql+psycopg://")
    spec = Experiment(
        name="pg-scale", seed=0, epochs=EPOCHS,
        data=Data(dataset="linear_1d", batch_size=10), model=Model(arch="linear"),
        optimizer=Optimizer(name="sgd", lr=tune.loguniform(1e-3, 1e-1), momentum=0.8),
        search=Search(algorithm="random", metric="val_loss", mode="min", num_samples=TRIALS,
                      max_concurrent_trials=2, seed=0),
        resources=Resources(num_workers=1), tracking=Tracking(experiment="pg-scale"))
    result = run(spec, tracking_uri=url, storage=str(tmp_path / "ray"), progress=False)
    assert sum(t.status == "ok" for t in result.trials) == TRIALS
    client = MlflowClient(url)
    runs, token = [], None
    while True:
        page = client.search_runs([result.experiment_id],
                                  f"tags.`mlflow.parentRunId` = '{result.parent_run_id}'",
                                  max_results=1000, page_token=token)
        runs += page
        token = page.token
        if not token:
            break
    assert len(runs) == TRIALS
    assert {r.info.status for r in runs} == {"FINISHED"}
    for r in runs:
        steps = [m.step for m in client.get_metric_history(r.info.run_id, "train_loss")]
        assert sorted(steps) == list(range(1, EPOCHS + 1)), (r.info.run_name, steps)
    # regression without compression: no accuracy, no compression metrics anywhere
    assert not {"compressed_val_accuracy", "compression_ratio", "val_accuracy"} & set(result.best.metrics)
    assert client.get_run(result.parent_run_id).info.status == "FINISHED"
