"""`--resume` and `--extend` with Ray storage on an S3-compatible server (moto's, a real HTTP
server in a subprocess on 127.0.0.1), real Ray, MLflow (SQLite) and PyTorch, driver killed.

The endpoint and credentials come the standard way (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY); dlopt finds the sweep and extension directories, restores Tune's state
and copies the registered checkpoint through pyarrow (dlopt.runtime.storage). The same kill
and resume cases as tests/integration/test_faults.py and test_extend_sweep.py, with their
helpers; nothing of the sweep is written to local storage.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pyarrow.fs
import pytest
from mlflow.tracking import MlflowClient
from test_extend_sweep import (
    children,
    epochs_once,
    resume_extension,
    spec_file,
    sweep_then_kill_extension,
)
from test_faults import (
    assert_each_epoch_once,
    cli_env,
    dlopt_cmd,
    free_port,
    kill_driver_mid_second_trial,
    short_tmp,
    spec_yaml,
)

pytestmark = pytest.mark.integration
BUCKET = "dlopt-it"


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """moto's S3 server on a free port of 127.0.0.1 with one bucket; the variables a user
    sets for an S3-compatible store. Stopped by its pid."""
    port = free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    with open(log, "w") as out:
        server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1",
                                   "-p", str(port)], stdout=out, stderr=subprocess.STDOUT,
                                  start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2).close()
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"moto server did not start: {log.read_text()[-2000:]}") from None
                time.sleep(0.2)
        env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "testing",
               "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
        fs = pyarrow.fs.S3FileSystem(endpoint_override=f"127.0.0.1:{port}", scheme="http",
                                     access_key="testing", secret_key="testing",
                                     allow_bucket_creation=True)
        fs.create_dir(BUCKET)
        yield env, fs
    finally:
        os.kill(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.kill(server.pid, signal.SIGKILL)
            server.wait(timeout=10)


def stored_dirs(fs, prefix: str) -> list[str]:
    infos = fs.get_file_info(pyarrow.fs.FileSelector(f"{BUCKET}/{prefix}", allow_not_found=True))
    return sorted(i.base_name for i in infos if i.type == pyarrow.fs.FileType.Directory)


def test_driver_sigkilled_then_resume_on_s3_reuses_runs(tmp_path, s3):
    """test_faults' driver kill with storage on s3://: SIGKILL `dlopt run` after trial 1
    finished and trial 2 logged 2 epochs; `--resume` finds the sweep in the bucket, reruns
    nothing finished, continues trial 2 from its checkpoint; every epoch in MLflow once."""
    aws, fs = s3
    ray_tmp = short_tmp()
    marker = tmp_path / "never"  # epoch 999 never comes: only the `.resumed` record is used
    env = cli_env(ray_tmp, DLOPT_FAULT_KILL_AT_EPOCH=f"999:{marker}",
                  DLOPT_FAULT_EPOCH_DELAY_S="1.0", XDG_CACHE_HOME=str(tmp_path / "cache"), **aws)
    # trial 2 is seen between its epoch 2 and its end: 8 slow epochs, so a driver that gets
    # its results late on a loaded machine (CI saw it miss a 6 x 0.7 s window) still leaves one
    spec = spec_yaml(tmp_path / "s.yaml", "s3-driver", epochs=10, lrs=[0.003, 0.01],
                     batch_size=16, experiment="s3-driver")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = dlopt_cmd("run", str(spec), "--tracking-uri", uri, "--storage", f"s3://{BUCKET}/kill")
    client = MlflowClient(uri)
    done, killed_at = kill_driver_mid_second_trial(args, tmp_path, env, client, "s3-driver",
                                                   timeout=300)
    (sweep_dir,) = stored_dirs(fs, "kill")  # Tune's state is in the bucket
    exp = client.get_experiment_by_name("s3-driver")
    (parent_before,) = client.search_runs([exp.experiment_id], "tags.`dlopt.role` = 'sweep'")

    second = subprocess.run([*args, "--resume"], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=400)
    assert second.returncode == 0, second.stderr[-3000:]
    assert f"resuming sweep {sweep_dir}" in second.stderr

    parents = client.search_runs([exp.experiment_id], "tags.`dlopt.role` = 'sweep'")
    assert [p.info.run_id for p in parents] == [parent_before.info.run_id]  # reused
    assert parents[0].info.status == "FINISHED"
    runs = client.search_runs([exp.experiment_id], "tags.`dlopt.role` = 'trial'")
    assert len(runs) == 2 and len({r.data.tags["dlopt.trial_id"] for r in runs}) == 2
    for r in runs:
        assert r.info.status == "FINISHED"
        assert_each_epoch_once(client, r, 10)
        # the model is tagged by URI (its storage's endpoint kept), not by Ray's bucket path
        assert r.data.tags["dlopt.model_checkpoint"].startswith(f"s3://{BUCKET}/kill/{sweep_dir}/")
    finished = next(r for r in runs if r.info.run_id == done[0].info.run_id)
    history = [m for k in finished.data.metrics
               for m in client.get_metric_history(finished.info.run_id, k)]
    assert max(m.timestamp for m in history) < killed_at  # finished trial: nothing rerun
    resumed = [int(x) for x in Path(f"{marker}.resumed").read_text().split()]
    assert resumed and min(resumed) >= 1, resumed  # from a checkpoint in the bucket
    # registered from the checkpoint copied out of the bucket
    assert client.get_model_version_by_alias("s3-driver", "champion")
    assert stored_dirs(fs, "kill") == [sweep_dir]
    assert not (tmp_path / "ray_results").exists()  # nothing of the sweep on local storage

    third = subprocess.run([*args, "--resume"], cwd=tmp_path, env=env, capture_output=True,
                           text=True, timeout=120)
    assert third.returncode == 0 and "already finished" in third.stderr, third.stderr[-2000:]
    shutil.rmtree(ray_tmp, ignore_errors=True)


def test_extend_on_s3_killed_then_resumed_covers_every_trial_once(tmp_path, s3):
    """test_extend_sweep's case with storage on s3://: a 3-trial sweep, `--extend 3` killed
    once an extension trial has reported (its `SWEEP-x3-STAMP` directory in the bucket), then
    `--extend 3 --resume`: 6 child runs, every epoch once, registration over all 6."""
    aws, fs = s3
    ray_tmp = short_tmp()
    env = cli_env(ray_tmp, XDG_CACHE_HOME=str(tmp_path / "cache"), **aws)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = dlopt_cmd("run", str(spec_file(tmp_path / "s.yaml")), "--tracking-uri", uri,
                     "--storage", f"s3://{BUCKET}/extend")
    client, exp, parent = sweep_then_kill_extension(args, tmp_path, env, uri, timeout=300)
    ext = [*args, "--extend", "3"]
    dirs = stored_dirs(fs, "extend")
    assert len(dirs) == 2 and dirs[1].startswith(f"{dirs[0]}-x3-"), dirs  # its own directory

    resume_extension(ext, tmp_path, env, dirs[1])

    (after,) = client.search_runs([exp.experiment_id], "tags.`dlopt.role` = 'sweep'")
    assert after.info.run_id == parent.info.run_id and after.info.status == "FINISHED"
    runs = children(client, parent)
    assert len(runs) == 6 and len({r.data.tags["dlopt.trial_id"] for r in runs}) == 6
    for r in runs:
        assert r.info.status == "FINISHED"
        epochs_once(client, r)
    best = max(runs, key=lambda r: r.data.metrics["val_accuracy"])
    assert client.get_model_version_by_alias("ext-sweep", "champion").run_id == best.info.run_id
    assert stored_dirs(fs, "extend") == dirs
    assert not (tmp_path / "ray_results").exists()

    again = subprocess.run([*ext, "--resume"], cwd=tmp_path, env=env, capture_output=True,
                           text=True, timeout=120)
    assert again.returncode == 0 and "already finished" in again.stderr, again.stderr[-2000:]
    shutil.rmtree(ray_tmp, ignore_errors=True)


def test_endpoint_in_the_uri_and_a_missing_bucket(tmp_path, s3, monkeypatch):
    """The endpoint given as pyarrow's URI options instead of AWS_ENDPOINT_URL reaches the
    same server; a bucket that does not exist is refused with one line (exit 2) before Ray."""
    from dlopt.runtime import storage

    aws, fs = s3
    endpoint = aws["AWS_ENDPOINT_URL"].removeprefix("http://")
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(key, aws[key])
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    uri = storage.resolve(f"s3://{BUCKET}/probe?endpoint_override={endpoint}&scheme=http")
    storage.check_reachable(uri)
    fs.create_dir(f"{BUCKET}/probe/t-20260101-000000")
    with fs.open_output_stream(f"{BUCKET}/probe/t-20260101-000000/tuner.pkl") as f:
        f.write(b"")
    assert storage.restorable(uri, lambda d: d.startswith("t-")) == ["t-20260101-000000"]

    spec = tmp_path / "s.yaml"
    spec.write_text("name: s\nepochs: 1\ndata: {dataset: digits}\n")
    out = subprocess.run(dlopt_cmd("run", str(spec), "--tracking-uri",
                                   f"sqlite:///{tmp_path / 'mlflow.db'}", "--storage",
                                   "s3://nobucket/x"),
                         cwd=tmp_path, env={**os.environ, **aws}, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 2, out.stderr[-2000:]
    assert out.stderr.strip().splitlines() == [
        f"--storage: storage s3://nobucket/x?endpoint_override={endpoint}&scheme=http: bucket "
        f"'nobucket' does not exist at {endpoint}; create it first"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.yaml"]  # no mlflow.db, no ray_results
