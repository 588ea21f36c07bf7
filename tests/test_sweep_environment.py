"""The sweep environment (dlopt.driver.environment.sweep_environment) puts back every
process-wide change a sweep makes, when the sweep fails too. No Ray cluster is started;
tests/integration/test_run_leaves_process.py checks the same around a real `dlopt.run()`."""
import logging
import os
import random
import warnings

import numpy as np
import pytest

from dlopt.driver import environment
from dlopt.tracking import sqlite


def _process_state() -> dict:
    """Everything `sweep_environment` promises to restore, as comparable values."""
    import mlflow
    import ray._private.worker as ray_worker
    from mlflow.utils import logging_utils
    from ray.tune.execution import class_cache

    rng = np.random.get_state()
    return {
        "environ": dict(os.environ),
        "filters": list(warnings.filters),
        "showwarning": warnings.showwarning,
        "tracking_uri": mlflow.get_tracking_uri(),
        "random": random.getstate(),
        "numpy": (rng[0], rng[1].tolist(), *rng[2:]),
        "wal_listener": sqlite.listening(),
        "propagated": class_cache.ENV_VARS_TO_PROPAGATE,
        "print_to_stdstream": ray_worker.print_to_stdstream,
        "mlflow_stream": logging_utils.MLFLOW_LOGGING_STREAM,
        "levels": [logging.getLogger(n).level for n in environment.CHATTY_LOGGERS],
        "cwd": os.getcwd(),
    }


def _change_everything(tmp_path) -> None:
    """What a sweep does to the process (and a little more), from inside the scope."""
    from ray.tune.execution import class_cache

    from dlopt.runtime import ray_compat

    os.environ["DLOPT_TEST_LEFTOVER"] = "1"
    os.environ.pop("HOME", None)
    warnings.simplefilter("error")
    random.seed(7)
    np.random.seed(7)
    ray_compat.drop_propagated_env_vars("AWS_")
    assert "AWS_SECRET_ACCESS_KEY" not in class_cache.ENV_VARS_TO_PROPAGATE
    os.chdir(tmp_path)


@pytest.mark.parametrize("quiet", [False, True])
def test_everything_a_failed_sweep_changed_is_restored(tmp_path, quiet):
    before = _process_state()
    with pytest.raises(RuntimeError, match="the sweep failed"):
        with environment.sweep_environment(quiet) as scope:
            scope.use_store(f"sqlite:///{tmp_path / 'mlflow.db'}")
            assert sqlite.listening() and os.environ["MLFLOW_TRACKING_URI"].endswith("mlflow.db")
            _change_everything(tmp_path)
            raise RuntimeError("the sweep failed")
    assert _process_state() == before


def test_an_http_store_fails_fast_only_while_the_sweep_runs(monkeypatch):
    import mlflow

    from dlopt.tracking.scope import HTTP_ENV, store_settings

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "99")  # the caller's value is kept
    before = dict(os.environ), mlflow.get_tracking_uri()
    with store_settings("http://127.0.0.1:5999"):
        assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == HTTP_ENV["MLFLOW_HTTP_REQUEST_MAX_RETRIES"]
        assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "99"
        assert mlflow.get_tracking_uri() == "http://127.0.0.1:5999"
    assert (dict(os.environ), mlflow.get_tracking_uri()) == before


def test_the_wal_listener_goes_when_the_scope_that_added_it_ends(tmp_path):
    was = sqlite.listening()
    with sqlite.wal_restored():
        assert sqlite.use_wal(f"sqlite:///{tmp_path / 'a.db'}") and sqlite.listening()
    assert sqlite.listening() == was


def test_the_drain_timeout_is_read_when_needed(monkeypatch):
    from dlopt.tracking import retry

    monkeypatch.setenv(retry.RETRY_ENV, "7")
    assert retry.drain_timeout_s() == 7.0
    monkeypatch.delenv(retry.RETRY_ENV)
    assert retry.drain_timeout_s() == retry.DEFAULT_DRAIN_TIMEOUT_S
