"""Where a sweep writes, inside and outside a Ray job, and the saved input transform.

No Ray, no MLflow server: the location rules are pure functions of the environment, and
`dlopt run` with an unwritable durable home stops before Ray starts."""
import json

import numpy as np
import pytest
import torch
from dlopt.driver import environment
from dlopt.tracking import uris
from dlopt_testing import run_cli

JOB = json.dumps({"runtime_env": {"working_dir": "gcs://_ray_pkg_x.zip",
                                  "env_vars": {"PYTHONWARNINGS": "default"}}, "metadata": {}})


@pytest.fixture
def in_job(monkeypatch, tmp_path):
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", JOB)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path / "home"


def test_outside_a_job_the_defaults_are_in_the_working_directory(monkeypatch, tmp_path):
    monkeypatch.delenv("RAY_JOB_CONFIG_JSON_ENV_VAR", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    assert uris.default_tracking_uri() == f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert uris.default_storage() == tmp_path / "ray_results"
    assert uris.artifact_root(uris.default_tracking_uri()) == tmp_path / "mlruns"


def test_inside_a_job_the_defaults_are_in_the_home(in_job):
    assert uris.in_ray_job()
    assert uris.default_tracking_uri() == f"sqlite:///{in_job / 'dlopt' / 'mlflow.db'}"
    assert uris.default_storage() == in_job / "ray_results"
    assert uris.artifact_root(uris.default_tracking_uri()) == in_job / "dlopt" / "mlruns"
    uris.check_writable(uris.default_tracking_uri(), uris.default_storage())  # creates them
    assert (in_job / "dlopt").is_dir() and (in_job / "ray_results").is_dir()


def test_relative_sqlite_uris_are_resolved_once(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    assert uris.absolute_tracking_uri("sqlite:///runs/m.db") == f"sqlite:///{tmp_path / 'runs/m.db'}"
    assert uris.absolute_tracking_uri("sqlite:////abs/m.db") == "sqlite:////abs/m.db"
    assert uris.absolute_tracking_uri("http://h:5000") == "http://h:5000"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///x.db")
    assert uris.default_tracking_uri() == f"sqlite:///{tmp_path / 'x.db'}"


def test_an_unwritable_location_names_the_flags(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(uris.LocationError) as err:
        uris.check_writable(f"sqlite:///{blocker / 'dlopt' / 'mlflow.db'}", tmp_path / "rr")
    assert "--tracking-uri" in str(err.value) and "--storage" in str(err.value)


def test_ray_init_env_vars_leave_the_jobs_own_alone(in_job, monkeypatch):
    with environment.scoped(quiet=True):
        env_vars = environment.runtime_env()["env_vars"]
    assert "PYTHONWARNINGS" not in env_vars  # the job sets it: Ray would refuse the merge
    assert env_vars["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] == "0.1"


def test_dlopt_run_in_a_job_with_an_unwritable_home_exits_2_in_one_line(tmp_path):
    blocker = tmp_path / "home"
    blocker.write_text("")  # HOME is a file: ~/dlopt cannot be made
    out = run_cli("run", "experiments/digits_mlp.py", env={
        "RAY_JOB_CONFIG_JSON_ENV_VAR": JOB, "HOME": str(blocker), "MLFLOW_TRACKING_URI": "",
        "RAY_ADDRESS": ""}, timeout=120)
    assert out.returncode == 2, out.stderr
    (line,) = out.stderr.strip().splitlines()
    assert line.startswith("error: cannot write") and "--tracking-uri" in line and "--storage" in line


def test_the_saved_transform_is_the_training_one_bit_for_bit():
    """digits: training's standardized test rows == the transform applied to sklearn's raw
    rows, in numpy (training) and in torch (the saved model)."""
    from dlopt.ml import data
    from dlopt.ml.transform import InputTransform, WithInputTransform
    from dlopt.spec import Data

    ds = data.load(Data(dataset="digits", test_fraction=0.2), 0, with_test=True)
    raw = ds.raw_test.x.numpy()
    assert raw.dtype == np.float64 and raw.max() == 16.0
    assert np.array_equal(ds.transform.apply(raw), ds.test.x.numpy())
    saved = InputTransform.from_json(json.loads(json.dumps(ds.transform.to_json())))
    module = WithInputTransform(saved, torch.nn.Identity())
    assert torch.equal(module(torch.from_numpy(raw)), ds.test.x)
    assert ds.raw_example.shape == (2, 64)
