"""Terminal output helpers: Ray's noise filter, the live table, and what a sweep sets in the
driver process (no Ray cluster started)."""
import io
from types import SimpleNamespace

from dlopt.driver import environment
from dlopt.driver.environment import drop_ray_noise
from dlopt.driver.progress import ProgressCallback

NOISE = ("WARNING: 12 PYTHON worker processes have been started on node: abc with address: "
         "192.0.2.2, which is 6x the maximum expected startup concurrency (2).")


def test_ray_noise_is_dropped_and_other_messages_kept():
    assert drop_ray_noise({"lines": [NOISE], "pid": "raylet"}) is None
    kept = drop_ray_noise({"lines": [NOISE, "Task was killed due to the node running low on memory."],
                           "pid": "raylet", "is_err": False})
    assert kept == {"lines": ["Task was killed due to the node running low on memory."],
                    "pid": "raylet", "is_err": False}


def test_live_table_shows_name_status_epoch_and_metric():
    plan = SimpleNamespace(objectives=None, metric="val_accuracy", headline=("val_accuracy", "max"), sweep_name="s-20260101-000000",
                           trials=2, epochs=3)
    out = io.StringIO()
    cb = ProgressCallback(plan, {}, every_s=0.0, stream=out)
    t1 = SimpleNamespace(trial_id="a", config={"optimizer.lr": 0.03})
    t2 = SimpleNamespace(trial_id="b", config={"optimizer.lr": 0.003})
    cb.on_trial_start(0, [], t1)
    cb.on_trial_start(0, [], t2)
    cb.on_trial_result(0, [], t1, {"epoch": 2, "val_accuracy": 0.91234})
    cb.on_trial_complete(0, [], t1)
    last = out.getvalue().strip().split("-- ")[-1].splitlines()
    assert last[0] == "s-20260101-000000: 1/2 trials done"
    assert last[1].split() == ["trial-001", "lr=0.03", "DONE", "epoch", "2/3", "val_accuracy", "0.9123"]
    assert last[2].split() == ["trial-002", "lr=0.003", "RUNNING", "epoch", "0/3", "val_accuracy", "-"]


def test_a_library_sweep_leaves_environment_and_warnings_as_they_were(monkeypatch):
    """dlopt.run() sets Ray's and MLflow's variables only while the sweep runs; a value the
    caller set is kept; warnings filters are untouched unless the CLI asks for quiet."""
    import os
    import warnings

    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "1")  # the caller's own choice
    monkeypatch.delenv("TUNE_GLOBAL_CHECKPOINT_S", raising=False)
    monkeypatch.delenv("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", raising=False)
    before_env, before_filters = dict(os.environ), list(warnings.filters)
    with environment.scoped(quiet=False):
        assert os.environ["TUNE_GLOBAL_CHECKPOINT_S"] == "1"
        assert os.environ["RAY_USAGE_STATS_ENABLED"] == "1"
        assert environment.runtime_env_vars()["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] == "0.1"
        assert "MLFLOW_TRACKING_URI" not in environment.runtime_env_vars()
    assert dict(os.environ) == before_env and warnings.filters == before_filters


def test_quiet_environment_forces_tunes_old_output():
    env = {"RAY_AIR_NEW_OUTPUT": "1"}
    environment.apply(env, quiet=True)
    assert env["RAY_AIR_NEW_OUTPUT"] == "0" and env["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] == "true"
    loud = {}
    environment.apply(loud, quiet=False)
    assert loud["RAY_AIR_NEW_OUTPUT"] == "1" and "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT" not in loud
