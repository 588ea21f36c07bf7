"""`dlopt run SPEC --extend N` with real Ray, MLflow (SQLite) and PyTorch, driver killed.

A 3-trial TPE sweep finishes; `--extend 3` starts in its own Tune run directory under the same
MLflow parent run and is SIGKILLed once an extension trial has reported; `--extend 3
--resume` continues the extension from its directory. Then: 3 + 3 child runs (none
duplicated, numbered on), every epoch of every trial once, one parent run FINISHED, the
review and the registered model over all 6 trials; resuming again does nothing.
"""
from __future__ import annotations

import csv
import io
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from dlopt.spec.report import PER_EPOCH_METRICS

pytestmark = pytest.mark.integration
EPOCHS = 3


def spec_file(path: Path) -> Path:
    path.write_text(yaml.safe_dump({
        "name": "ext-sweep", "seed": 0, "epochs": EPOCHS,
        "data": {"dataset": "digits", "batch_size": 64, "test_fraction": 0.0},
        "model": {"hidden": [16]},
        "optimizer": {"name": "adam", "lr": {"domain": "loguniform", "low": 1e-4, "high": 0.1}},
        "search": {"algorithm": "bayesian", "num_samples": 3, "seed": 0,
                   "max_concurrent_trials": 1},
        "resources": {"num_workers": 1},
        "tracking": {"experiment": "it-extend", "register_as": "ext-sweep"},
    }))
    return path


def children(client: MlflowClient, parent) -> list:
    return client.search_runs([parent.info.experiment_id],
                              f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")


def epochs_once(client: MlflowClient, run) -> None:
    for key in run.data.metrics:
        steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, key))
        if key in PER_EPOCH_METRICS and key != "report_seconds":
            assert steps == list(range(1, EPOCHS + 1)), (run.info.run_name, key, steps)
        elif key != "report_seconds":
            assert len(steps) == 1, (run.info.run_name, key, steps)


def wait_for(predicate, timeout: float, what: str, proc: subprocess.Popen):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = predicate()
        except Exception:  # noqa: BLE001 - the store may be busy
            value = None
        if value:
            return value
        if proc.poll() is not None:
            raise AssertionError(f"driver ended (rc {proc.returncode}) before {what}: "
                                 f"{proc.stderr.read()[-3000:]}")
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def extend_and_kill(args: list, cwd, env: dict, client: MlflowClient, parent, earlier: set,
                    timeout: float) -> None:
    """`args --extend 3`, slowed so the driver is SIGKILLed while an extension trial is
    mid-way (once one has reported an epoch)."""
    second = subprocess.Popen([*args, "--extend", "3"], cwd=cwd,
                              env={**env, "DLOPT_FAULT_EPOCH_DELAY_S": "0.7"},
                              start_new_session=True, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        def extension_reported():
            new = [r for r in children(client, parent)
                   if r.data.tags["dlopt.trial_id"] not in earlier]
            return any(client.get_metric_history(r.info.run_id, "train_loss") for r in new)

        wait_for(extension_reported, timeout, "an extension trial's first epoch", second)
        os.kill(second.pid, signal.SIGKILL)  # the driver only; Ray's processes share its fate
        second.wait(timeout=30)
    finally:
        try:
            os.killpg(second.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        second.wait(timeout=30)


def sweep_then_kill_extension(args: list, cwd, env: dict, uri: str, timeout: float):
    """`args` (the 3-trial sweep of `spec_file`) run to the end, then its `--extend 3` killed
    mid-way (extend_and_kill); returns the MLflow client, the experiment and the sweep's
    parent run, which the extension reopened."""
    first = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=400)
    assert first.returncode == 0, first.stderr[-3000:]
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("it-extend")
    (parent,) = client.search_runs([exp.experiment_id], "tags.`dlopt.role` = 'sweep'")
    earlier = {r.data.tags["dlopt.trial_id"] for r in children(client, parent)}
    assert len(earlier) == 3
    extend_and_kill(args, cwd, env, client, parent, earlier, timeout)
    assert client.get_run(parent.info.run_id).info.status == "RUNNING"  # reopened, then killed
    return client, exp, parent


def resume_extension(ext: list, cwd, env: dict, extension_dir: str) -> None:
    """`ext --resume` after the kill: it finds its extension's directory and adds 3 trials."""
    third = subprocess.run([*ext, "--resume"], cwd=cwd, env=env, capture_output=True,
                           text=True, timeout=400)
    assert third.returncode == 0, third.stderr[-3000:]
    assert f"its extension {extension_dir}" in third.stderr
    assert "extended: 3 trials added" in third.stdout and "(6 in all" in third.stdout


def test_extend_killed_then_resumed_covers_every_trial_once(tmp_path):
    ray_tmp = Path(tempfile.mkdtemp(prefix="dlx", dir="/tmp"))  # Ray's sockets: a short path
    env = {**os.environ, "RAY_TMPDIR": str(ray_tmp), "PYTHONUNBUFFERED": "1"}
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    storage = tmp_path / "rr"
    args = [sys.executable, "-m", "dlopt.cli", "run", str(spec_file(tmp_path / "s.yaml")),
            "--tracking-uri", uri, "--storage", str(storage)]
    client, exp, parent = sweep_then_kill_extension(args, tmp_path, env, uri, timeout=240)
    ext = [*args, "--extend", "3"]
    dirs = sorted(p.name for p in storage.iterdir() if p.is_dir())
    assert len(dirs) == 2 and dirs[1].startswith(f"{dirs[0]}-x3-"), dirs  # its own directory

    resume_extension(ext, tmp_path, env, dirs[1])

    parents = client.search_runs([exp.experiment_id], "tags.`dlopt.role` = 'sweep'")
    assert [p.info.run_id for p in parents] == [parent.info.run_id]
    assert parents[0].info.status == "FINISHED"
    runs = children(client, parent)
    assert len(runs) == 6, [r.info.run_name for r in runs]  # original + N, none duplicated
    assert len({r.data.tags["dlopt.trial_id"] for r in runs}) == 6
    assert sorted(r.info.run_name.split()[0] for r in runs) == [f"trial-{i:03d}" for i in
                                                               range(1, 7)]
    for r in runs:
        assert r.info.status == "FINISHED"
        epochs_once(client, r)
    # the review and the registration cover all 6 trials
    assert "**6/6 trials ok**" in parents[0].data.tags["mlflow.note.content"]
    table = client.download_artifacts(parent.info.run_id, "review/results.csv", str(tmp_path))
    assert len(list(csv.DictReader(io.StringIO(Path(table).read_text())))) == 6
    best = max(runs, key=lambda r: r.data.metrics["val_accuracy"])
    assert client.get_model_version_by_alias("ext-sweep", "champion").run_id == best.info.run_id
    assert parents[0].data.tags["dlopt.best_trial"] == best.data.tags["dlopt.trial_id"]

    again = subprocess.run([*ext, "--resume"], cwd=tmp_path, env=env, capture_output=True,
                           text=True, timeout=120)
    assert again.returncode == 0 and "already finished" in again.stderr, again.stderr[-2000:]
    assert len(children(client, parent)) == 6
    shutil.rmtree(ray_tmp, ignore_errors=True)
