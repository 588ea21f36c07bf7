"""Faults injected for real: killed processes, a diverging trial, an MLflow outage, concurrency,
secrets. Real local Ray, real MLflow (SQLite, or a real `mlflow server` on 127.0.0.1).

Worker kills use the test-only hook in dlopt/train/faults.py (`DLOPT_FAULT_KILL_AT_EPOCH`):
the training process SIGKILLs itself once, after reporting a checkpointed epoch. The driver
kill is a SIGKILL of the `dlopt run` process from this test.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from dlopt.spec.report import PER_EPOCH_METRICS

ROOT = Path(__file__).resolve().parents[2]


# ------------------------------------------------------------------ helpers
def spec_yaml(path: Path, name: str, *, epochs: int, lrs: list, workers: int = 1,
              in_trial: bool = True, max_failures: int = 1, concurrent: int = 1,
              optimizer: str = "adam", batch_size: int = 64, experiment: str = "faults",
              register_as: str | None = None) -> Path:
    spec = {
        "name": name, "seed": 0, "epochs": epochs,
        "data": {"dataset": "digits", "batch_size": batch_size, "test_fraction": 0.0},
        "model": {"hidden": [32], "init": "kaiming_uniform"},
        "optimizer": {"name": optimizer, "lr": {"domain": "grid", "values": lrs}},
        "search": {"algorithm": "grid", "max_concurrent_trials": concurrent},
        "resources": {"num_workers": workers, "max_failures": max_failures, "in_trial": in_trial},
        "tracking": {"experiment": experiment, "register_as": register_as or name},
    }
    path.write_text(yaml.safe_dump(spec))
    return path


def short_tmp() -> Path:
    """Ray's unix sockets need a short path: a private Ray temp dir per test under /tmp."""
    return Path(tempfile.mkdtemp(prefix="dlf", dir="/tmp"))


def cli_env(ray_tmp: Path, **extra) -> dict:
    return {**os.environ, "RAY_TMPDIR": str(ray_tmp), "PYTHONUNBUFFERED": "1", **extra}


def dlopt_cmd(*args) -> list[str]:
    return [sys.executable, "-m", "dlopt.cli", *args]


def children(client: MlflowClient, parent_id: str) -> list:
    return client.search_runs([client.get_run(parent_id).info.experiment_id],
                              f"tags.`mlflow.parentRunId` = '{parent_id}'")


def assert_each_epoch_once(client: MlflowClient, run, epochs: int) -> None:
    """Every per-epoch metric has exactly the steps 1..epochs; every final metric one value."""
    for key in run.data.metrics:
        steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, key))
        if key in PER_EPOCH_METRICS and key != "report_seconds":
            assert steps == list(range(1, epochs + 1)), (run.info.run_name, key, steps)
        elif key == "report_seconds":  # carried from the 2nd report on (the previous send)
            assert len(steps) == len(set(steps)), (key, steps)
        else:
            assert len(steps) == 1, (run.info.run_name, key, steps)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def kill_group(proc: subprocess.Popen) -> None:
    """Stop a process this test started, with everything in its session."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=30)


def wait_for(predicate, timeout: float, what: str, *procs: subprocess.Popen):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = predicate()
        except Exception:  # noqa: BLE001 - the store may be busy or not there yet
            value = None
        if value:
            return value
        for proc in procs:
            if proc.poll() is not None:
                raise AssertionError(f"process ended (rc {proc.returncode}) before {what}: "
                                     f"{proc.stderr.read()[-3000:] if proc.stderr else ''}")
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


# ------------------------------------------------------------------ (1) a Ray Train worker dies
def test_train_worker_killed_mid_trial_resumes_and_registers(tmp_path, monkeypatch):
    """SIGKILL one of 2 DDP workers after epoch 2: the worker group restarts from the epoch-2
    checkpoint, the trial finishes, each epoch is logged once, the model is registered and
    loads with unpickling disabled (safetensors + JSON only)."""
    import mlflow

    from dlopt.spec.load import load
    from dlopt.driver.sweep import run

    marker = tmp_path / "killed"
    monkeypatch.setenv("DLOPT_FAULT_KILL_AT_EPOCH", f"2:{marker}")
    spec = load(spec_yaml(tmp_path / "s.yaml", "fault-worker", epochs=5, lrs=[0.01], workers=2,
                          in_trial=False, max_failures=1))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = run(spec, tracking_uri=uri, storage=str(tmp_path / "ray_results"), progress=False)

    killed = json.loads(marker.read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(killed["pid"], 0)  # that worker process is really gone
    resumed = [int(x) for x in Path(f"{marker}.resumed").read_text().split()]
    assert resumed and min(resumed) >= 1, resumed  # restarted from a checkpoint, not epoch 0

    client = MlflowClient(uri)
    [child] = children(client, result.parent_run_id)
    assert child.info.status == "FINISHED"
    assert_each_epoch_once(client, child, 5)
    assert "model_bytes" in child.data.metrics
    assert [t.status for t in result.trials] == ["ok"]
    version = client.get_model_version_by_alias("fault-worker", "champion")
    assert version.tags["dlopt.source_run"] == child.info.run_id

    # (7) the registered artifact holds no pickle, and loading it unpickles nothing
    mlflow.set_tracking_uri(uri)
    local = Path(mlflow.artifacts.download_artifacts("models:/fault-worker@champion",
                                                     dst_path=str(tmp_path / "dl")))
    files = [p.name for p in local.rglob("*") if p.is_file()]
    assert "model.safetensors" in files
    assert not [f for f in files if re.search(r"\.(pkl|pickle|pt|pth|bin|joblib|ckpt)$", f)], files
    code = (
        "import pickle, torch, mlflow\n"
        "def refuse(*a, **k):\n    raise RuntimeError('unpickling attempted')\n"
        "class NoUnpickler:\n    def __init__(self, *a, **k):\n        refuse()\n"
        "pickle.load = pickle.loads = refuse\npickle.Unpickler = NoUnpickler\n"
        "torch.load = refuse\n"
        f"mlflow.set_tracking_uri({uri!r})\n"
        # the registered model takes the raw rows sklearn returns (its input transform inside)
        "import dlopt\nfrom sklearn.datasets import load_digits\n"
        "from dlopt.ml.splits import split_indices\n"
        "m = dlopt.load_model('models:/fault-worker@champion')\n"
        "b = load_digits()\n_, val, _ = split_indices(b.target, 0.2, 0.0, 0, True)\n"
        "x, y = torch.from_numpy(b.data[val]), torch.from_numpy(b.target[val])\n"
        "print((m(x).argmax(1) == y).float().mean().item())\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=tmp_path, timeout=120)
    assert out.returncode == 0, out.stderr
    assert float(out.stdout.split()[-1]) == pytest.approx(
        child.data.metrics["val_accuracy"], abs=1e-6)


# ------------------------------------------------------------------ (3) + (5) + trial process killed
def test_four_trials_at_once_on_sqlite_with_a_diverged_and_a_killed_trial(tmp_path, monkeypatch,
                                                                            capfd):
    """4 trials at once against the embedded SQLite store; one diverges (lr 1e9); one trial
    process is SIGKILLed after epoch 2 and retried by Tune from its checkpoint."""
    from dlopt.spec.load import load
    from dlopt.driver.sweep import run

    marker = tmp_path / "killed"
    monkeypatch.setenv("DLOPT_FAULT_KILL_AT_EPOCH", f"2:{marker}")
    lrs = [0.03, 0.1, 0.3, 1e9]
    spec = load(spec_yaml(tmp_path / "s.yaml", "fault-conc", epochs=4, lrs=lrs,
                          optimizer="sgd", concurrent=4, max_failures=1))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = run(spec, tracking_uri=uri, storage=str(tmp_path / "ray_results"), progress=False)
    logs = capfd.readouterr()
    assert "database is locked" not in logs.out + logs.err

    client = MlflowClient(uri)
    runs = children(client, result.parent_run_id)
    assert len(runs) == 4
    by_lr = {float(r.data.params["optimizer.lr"]): r for r in runs}
    assert sorted(by_lr) == sorted(lrs)
    starts = [r.info.start_time for r in runs]
    ends = [r.info.end_time for r in runs]
    assert max(starts) < min(ends)  # all four were running at the same time
    for r in runs:
        assert r.info.status == "FINISHED", r.info.run_name
    diverged = by_lr[1e9]
    assert diverged.data.tags.get("dlopt.status") == "diverged"
    assert sorted(m.step for m in client.get_metric_history(diverged.info.run_id, "train_loss")) == [1]
    healthy = [by_lr[lr] for lr in lrs[:3]]
    for r in healthy:
        assert_each_epoch_once(client, r, 4)
    status = {t.run_id: t.status for t in result.trials}
    assert status[diverged.info.run_id] == "diverged"
    best = max(healthy, key=lambda r: r.data.metrics["val_accuracy"])
    assert result.best.run_id == best.info.run_id
    assert client.get_model_version_by_alias("fault-conc", "champion").tags[
        "dlopt.source_run"] == best.info.run_id
    killed = json.loads(marker.read_text())
    # the first report at or past epoch 2 (short epochs are batched: maybe the last, epoch 4,
    # so the retry resumes after the last epoch and has only the final report left to send)
    assert 2 <= killed["epoch"] <= 4
    resumed = [int(x) for x in Path(f"{marker}.resumed").read_text().split()]
    assert resumed and min(resumed) >= 1, resumed


# ------------------------------------------------------------------ (2) the driver dies
def kill_driver_mid_second_trial(args: list, cwd, env: dict, client: MlflowClient,
                                 experiment: str, timeout: float) -> tuple[list, float]:
    """Start `args` (a `dlopt run`) and SIGKILL its driver once trial 1 has finished and
    trial 2 has logged 2 epochs; returns trial 1's runs and the kill time (ms)."""
    first = subprocess.Popen(args, cwd=cwd, env=env, start_new_session=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        def progress():
            exp = client.get_experiment_by_name(experiment)
            runs = client.search_runs([exp.experiment_id], "tags.`dlopt.role` = 'trial'")
            done = [r for r in runs if "model_bytes" in r.data.metrics]
            going = [r for r in runs if "model_bytes" not in r.data.metrics
                     and len(client.get_metric_history(r.info.run_id, "train_loss")) >= 2]
            return (done, going) if done and going else None

        done, _ = wait_for(progress, timeout, "trial 1 finished and trial 2 at epoch 2", first)
        os.kill(first.pid, signal.SIGKILL)  # the driver only; Ray's processes share its fate
        killed_at = time.time() * 1000
        first.wait(timeout=30)
    finally:
        kill_group(first)
    return done, killed_at


def test_driver_sigkilled_then_resume_reuses_runs(tmp_path):
    """SIGKILL `dlopt run` after trial 1 finished and trial 2 logged 2 epochs; `--resume`
    reruns nothing finished, continues trial 2 from its checkpoint, reuses the MLflow runs."""
    ray_tmp = short_tmp()
    marker = tmp_path / "never"  # epoch 999 never comes: only the `.resumed` record is used
    # each epoch takes >= 0.7 s so the driver is killed while trial 2 is mid-way
    env = cli_env(ray_tmp, DLOPT_FAULT_KILL_AT_EPOCH=f"999:{marker}", DLOPT_FAULT_EPOCH_DELAY_S="0.7")
    spec = spec_yaml(tmp_path / "s.yaml", "fault-driver", epochs=8, lrs=[0.003, 0.01],
                     batch_size=16, experiment="faults-driver")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = dlopt_cmd("run", str(spec), "--tracking-uri", uri, "--storage", str(tmp_path / "rr"))
    client = MlflowClient(uri)
    done, killed_at = kill_driver_mid_second_trial(args, tmp_path, env, client,
                                                   "faults-driver", timeout=240)
    exp = client.get_experiment_by_name("faults-driver")
    parent_before = client.search_runs([exp.experiment_id], "tags.`dlopt.role` = 'sweep'")
    assert len(parent_before) == 1

    second = subprocess.run([*args, "--resume"], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=300)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "resuming sweep" in second.stderr

    parents = client.search_runs([exp.experiment_id], "tags.`dlopt.role` = 'sweep'")
    assert [p.info.run_id for p in parents] == [parent_before[0].info.run_id]  # reused
    assert parents[0].info.status == "FINISHED"
    runs = client.search_runs([exp.experiment_id], "tags.`dlopt.role` = 'trial'")
    assert len(runs) == 2  # no duplicate child runs
    assert sorted(float(r.data.params["optimizer.lr"]) for r in runs) == [0.003, 0.01]  # the grid
    assert len({r.data.tags["dlopt.trial_id"] for r in runs}) == 2
    for r in runs:
        assert r.info.status == "FINISHED"
        assert_each_epoch_once(client, r, 8)
    finished = next(r for r in runs if r.info.run_id == done[0].info.run_id)
    history = [m for k in finished.data.metrics
               for m in client.get_metric_history(finished.info.run_id, k)]
    assert max(m.timestamp for m in history) < killed_at  # finished trial: nothing rerun
    resumed = [int(x) for x in Path(f"{marker}.resumed").read_text().split()]
    # trial 2 continued from a checkpoint, not from scratch. Tune snapshots its state every
    # second, so the driver may die after MLflow got epoch 2 but before the snapshot held the
    # epoch-2 checkpoint: resuming from epoch 1 is correct, and MLflow still has each epoch once.
    assert resumed and min(resumed) >= 1, resumed
    assert client.get_model_version_by_alias("fault-driver", "champion")
    # resuming a finished sweep does nothing (no Ray, no second model version)
    third = subprocess.run([*args, "--resume"], cwd=tmp_path, env=env, capture_output=True,
                           text=True, timeout=120)
    assert third.returncode == 0 and "already finished" in third.stderr, third.stderr[-2000:]
    assert len(client.search_model_versions("name = 'fault-driver'")) == 1
    assert len(client.search_runs([exp.experiment_id])) == 3
    shutil.rmtree(ray_tmp, ignore_errors=True)


# ------------------------------------------------------------------ (4) MLflow unreachable at start
def test_unreachable_tracking_server_fails_fast_before_ray(tmp_path):
    ray_tmp = short_tmp()
    port = free_port()  # bound and released: nothing listens there
    spec = spec_yaml(tmp_path / "s.yaml", "fault-unreachable", epochs=2, lrs=[0.01])
    t0 = time.monotonic()
    out = subprocess.run(dlopt_cmd("run", spec.name, "--tracking-uri",
                                   f"http://alice:hunter2secret@127.0.0.1:{port}"),
                         cwd=tmp_path, env=cli_env(ray_tmp), capture_output=True, text=True,
                         timeout=120)
    took = time.monotonic() - t0
    assert out.returncode != 0
    assert "not reachable" in out.stderr and f"127.0.0.1:{port}" in out.stderr
    assert "hunter2secret" not in out.stdout + out.stderr
    assert took < 30, took
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.yaml"]  # no mlflow.db, no ray_results
    assert not list(ray_tmp.rglob("session_*"))  # Ray never started
    shutil.rmtree(ray_tmp, ignore_errors=True)


# ------------------------------------------------------------------ (4) + (5) + (6) server outage
SECRET_ENV = {"MLFLOW_TRACKING_TOKEN": "tok-mlflow-4f9a7c", "AWS_SECRET_ACCESS_KEY":
              "aws-secret-8b1e22", "RAY_AUTH_TOKEN": "ray-token-51d0c3"}
URI_PASSWORD = "pw-uri-93e6aa"


def start_server(db: Path, artifacts: Path, port: int, log: Path) -> subprocess.Popen:
    from dlopt_testing import mlflow_server

    return mlflow_server(db, artifacts, port, log)


def test_server_outage_two_concurrent_sweeps_and_no_secret_leaks(tmp_path):
    """Two sweeps at once against one real `mlflow server`; the server is stopped mid-sweep
    and restarted on the same port and store: both sweeps finish with every epoch logged once.
    Credentials in the URI and secret env vars appear nowhere in MLflow or the logs."""
    port = free_port()
    db, art, server_log = tmp_path / "server.db", tmp_path / "art", tmp_path / "server.log"
    server = start_server(db, art, port, server_log)
    ray_tmps = [short_tmp(), short_tmp()]
    uri = f"http://dlopt:{URI_PASSWORD}@127.0.0.1:{port}"
    plain = MlflowClient(f"http://127.0.0.1:{port}")
    sweeps = []
    try:
        for i, ray_tmp in enumerate(ray_tmps):
            spec = spec_yaml(tmp_path / f"s{i}.yaml", f"fault-server-{i}", epochs=30,
                             lrs=[0.01], batch_size=8, experiment=f"faults-server-{i}")
            sweeps.append(subprocess.Popen(
                dlopt_cmd("run", str(spec), "--tracking-uri", uri, "--storage",
                          str(tmp_path / f"rr{i}")),
                cwd=tmp_path, env=cli_env(ray_tmp, **SECRET_ENV), start_new_session=True,
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))

        def both_logging():
            ok = 0
            for i in range(2):
                exp = plain.get_experiment_by_name(f"faults-server-{i}")
                runs = plain.search_runs([exp.experiment_id], "tags.`dlopt.role` = 'trial'")
                ok += bool(runs and plain.get_metric_history(runs[0].info.run_id, "train_loss"))
            return ok == 2

        wait_for(both_logging, 300, "both sweeps logging epochs", *sweeps)
        kill_group(server)  # the server goes away mid-sweep
        time.sleep(8)
        server = start_server(db, art, port, server_log)  # same port, same store
        outs = [p.communicate(timeout=400) for p in sweeps]
    finally:
        for p in sweeps:
            kill_group(p)
    for p, (_, err) in zip(sweeps, outs):
        assert p.returncode == 0, err[-3000:]
    assert any("buffering tracking writes" in err for _, err in outs)  # the outage was seen
    try:
        for i in range(2):
            exp = plain.get_experiment_by_name(f"faults-server-{i}")
            runs = plain.search_runs([exp.experiment_id])
            assert len(runs) == 2  # one parent, one child: nothing duplicated
            child = next(r for r in runs if r.data.tags.get("dlopt.role") == "trial")
            assert child.info.status == "FINISHED"
            assert_each_epoch_once(plain, child, 30)

        # (6) search everything written for the secrets
        secrets = [URI_PASSWORD, *SECRET_ENV.values()]
        texts = [out + err for out, err in outs]
        for i in range(2):
            exp = plain.get_experiment_by_name(f"faults-server-{i}")
            for r in plain.search_runs([exp.experiment_id]):
                texts += [json.dumps(r.data.params), json.dumps(r.data.tags),
                          json.dumps(list(r.data.metrics))]
        for mv in plain.search_model_versions():
            texts += [json.dumps(mv.tags), str(mv.source)]
        blobs = [p for root in [art, tmp_path / "rr0", tmp_path / "rr1", server_log, *ray_tmps]
                 for p in ([root] if root.is_file() else root.rglob("*")) if p.is_file()]
        assert len(blobs) > 20 and any("session_" in str(p) for p in blobs)
        found = [(s, t[max(0, t.index(s) - 300):t.index(s) + 100])
                 for s in secrets for t in texts if s in t]
        found += [(s, str(p)) for p in blobs for s in secrets
                  if s.encode() in p.read_bytes()]
        assert found == []
    finally:
        kill_group(server)
        for d in ray_tmps:
            shutil.rmtree(d, ignore_errors=True)


# ------------------------------------------------------------------ (7) faults combined (issue 19)
def test_outage_driver_kill_worker_kill_and_outage_during_replay_lose_no_epoch(tmp_path):
    """A worker is killed (epoch 3); the real `mlflow server` is stopped by pid; 8 s later the
    driver is SIGKILLed with writes queued (they are in its journal); the server is started
    again and `--resume` replays the journal while the store goes away a second time (a
    proxy refuses requests for 6 s after the first replayed batch). Every epoch of every trial
    is in MLflow exactly once, step by step."""
    from dlopt.tracking.journal import NAME, Journal
    from dlopt_testing import LossyProxy

    port, ray_tmp = free_port(), short_tmp()
    db, art, server_log = tmp_path / "server.db", tmp_path / "art", tmp_path / "server.log"
    server = start_server(db, art, port, server_log)
    proxy = LossyProxy(port)
    direct = MlflowClient(f"http://127.0.0.1:{port}")
    epochs, marker = 30, tmp_path / "worker-killed"
    env = cli_env(ray_tmp, DLOPT_FAULT_KILL_AT_EPOCH=f"3:{marker}", DLOPT_FAULT_EPOCH_DELAY_S="0.5")
    spec = spec_yaml(tmp_path / "s.yaml", "fault-combined", epochs=epochs, lrs=[0.003, 0.01],
                     concurrent=2, batch_size=32, experiment="faults-combined")
    args = dlopt_cmd("run", str(spec), "--tracking-uri", f"http://127.0.0.1:{proxy.port}",
                     "--storage", str(tmp_path / "rr"))
    first = subprocess.Popen(args, cwd=tmp_path, env=env, start_new_session=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        def both_past_epoch_4():
            exp = direct.get_experiment_by_name("faults-combined")
            runs = direct.search_runs([exp.experiment_id], "tags.`dlopt.role` = 'trial'")
            return len(runs) == 2 and marker.exists() and all(
                len(direct.get_metric_history(r.info.run_id, "train_loss")) >= 4 for r in runs)

        wait_for(both_past_epoch_4, 400, "both trials past epoch 4, a worker killed", first)
        kill_group(server)  # outage 1: the server process is stopped
        time.sleep(8)
        os.kill(first.pid, signal.SIGKILL)  # the driver dies with writes queued
        first.wait(timeout=30)
    finally:
        kill_group(first)
    journal = next((tmp_path / "rr").glob(f"*/{NAME}"))
    queued = {(r["trial"], m[3]) for r in Journal(journal).pending() if r.get("epoch")
              for m in r["metrics"]}  # (trial, epoch) trained during the outage: only on disk
    assert len(queued) >= 2, queued

    server = start_server(db, art, port, server_log)  # same port, same store
    proxy.outage_after("/runs/log-batch", 1, 6.0)  # outage 2: after the first replayed batch
    try:
        second = subprocess.run([*args, "--resume"], cwd=tmp_path, env=env,
                                capture_output=True, text=True, timeout=600)
        assert second.returncode == 0, second.stderr[-3000:]
        exp = direct.get_experiment_by_name("faults-combined")
        runs = direct.search_runs([exp.experiment_id], "tags.`dlopt.role` = 'trial'")
        assert len(runs) == 2
        lost, dup = set(), set()  # (trial, epoch) missing from / repeated in any history
        for r in runs:
            for key in ("train_loss", "val_loss", "val_accuracy"):
                steps = [m.step for m in direct.get_metric_history(r.info.run_id, key)]
                lost |= {(r.info.run_id, e) for e in range(1, epochs + 1) if e not in steps}
                dup |= {(r.info.run_id, e) for e in steps if steps.count(e) > 1}
        lost, dup = len(lost), len(dup)
        print(f"faults: worker kill, outage, driver SIGKILL ({len(queued)} journaled epochs), "
              f"outage during replay ({proxy.refused} refused); lost epochs {lost}, "
              f"duplicated epochs {dup}")
        assert (lost, dup) == (0, 0)
        assert "replaying" in second.stderr and proxy.refused > 0, second.stderr[-3000:]
        for r in runs:
            assert_each_epoch_once(direct, r, epochs)
            assert r.info.status == "FINISHED"
        assert not journal.exists()  # removed once the store took everything
        assert len(direct.search_model_versions("name = 'fault-combined'")) == 1
    finally:
        proxy.close()
        kill_group(server)
        shutil.rmtree(ray_tmp, ignore_errors=True)
