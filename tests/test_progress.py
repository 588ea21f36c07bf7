"""Terminal output helpers: Ray's noise filter, the live table, and what a sweep sets in the
driver process (no Ray cluster started)."""
import io
import sys
from types import SimpleNamespace

import pytest

from dlopt.driver import environment
from dlopt.driver.environment import drop_ray_noise
from dlopt.driver.progress import TOP, ProgressCallback

NOISE = ("WARNING: 12 PYTHON worker processes have been started on node: abc with address: "
         "192.0.2.2, which is 6x the maximum expected startup concurrency (2).")


def test_ray_noise_is_dropped_and_other_messages_kept():
    assert drop_ray_noise({"lines": [NOISE], "pid": "raylet"}) is None
    kept = drop_ray_noise({"lines": [NOISE, "Task was killed due to the node running low on memory."],
                           "pid": "raylet", "is_err": False})
    assert kept == {"lines": ["Task was killed due to the node running low on memory."],
                    "pid": "raylet", "is_err": False}


def _plan(trials=2, epochs=3, mode="max", metric="val_accuracy"):
    from dataclasses import replace

    from dlopt import Experiment, Search
    from dlopt.spec.plan import make_plan

    spec = Experiment(name="s", epochs=epochs,
                      search=Search(num_samples=trials, metric=metric, mode=mode))
    return replace(make_plan(spec, cluster_cpus=2), sweep_name="s-20260101-000000")


def test_view_shows_counts_best_running_and_top():
    out = io.StringIO()
    cb = ProgressCallback(_plan(), every_s=0.0, stream=out, live=False)
    t1 = SimpleNamespace(trial_id="a", config={"optimizer.lr": 0.03}, status="RUNNING")
    t2 = SimpleNamespace(trial_id="b", config={"optimizer.lr": 0.003}, status="RUNNING")
    cb.on_trial_start(0, [], t1)
    cb.on_trial_start(0, [], t2)
    cb.on_trial_result(0, [], t1, {"epoch": 3, "val_accuracy": 0.91234})
    cb.on_trial_complete(0, [], t1)
    cb.on_trial_result(0, [], t2, {"epoch": 1, "val_accuracy": 0.5})
    view = cb.lines()
    assert view[0] == "-- s-20260101-000000: 1/2 trials finished (1 running, 0 pending, 1 done)"
    assert view[1] == "   best val_accuracy 0.9123: trial-001 lr=0.03"
    assert view[2].split() == ["trial-002", "lr=0.003", "RUNNING", "epoch", "1/3", "val_accuracy", "0.5"]
    assert view[3] == "   top 1 by val_accuracy:"
    assert view[4].split() == ["trial-001", "lr=0.03", "DONE", "epoch", "3/3", "val_accuracy", "0.9123"]
    # line mode: the status and best lines only, per draw
    assert out.getvalue().splitlines()[-2:] == view[:2]


def test_paused_early_stopped_diverged_and_error_are_counted():
    cb = ProgressCallback(_plan(trials=6, mode="min", metric="val_loss"), every_s=1e9,
                          stream=io.StringIO(), live=False)
    t = [SimpleNamespace(trial_id=str(i), config={}, status="RUNNING") for i in range(5)]
    for trial in t:
        cb.on_trial_start(0, [], trial)
    cb.on_trial_result(0, [], t[0], {"epoch": 3, "val_loss": 0.2})
    cb.on_trial_complete(0, [], t[0])               # done
    cb.on_trial_result(0, [], t[1], {"epoch": 1, "val_loss": 0.1})
    cb.on_trial_complete(0, [], t[1])               # stopped at epoch 1 of 3: ASHA
    cb.on_trial_result(0, [], t[2], {"epoch": 1, "val_loss": float("nan"), "diverged": True})
    cb.on_trial_complete(0, [], t[2])
    cb.on_trial_error(0, [], t[3])
    t[4].status = "PAUSED"                          # PBT paused it
    assert cb.status_line() == ("-- s-20260101-000000: 4/6 trials finished (0 running, 1 paused, "
                                "1 pending, 1 done, 1 early-stopped, 1 diverged, 1 error)")
    assert cb.best_line() == "   best val_loss 0.1: trial-002"
    top = [line.split()[0] for line in cb.lines()[cb.lines().index("   top 2 by val_loss:") + 1:]]
    assert top == ["trial-002", "trial-001"]


def test_a_thousand_trials_print_a_bounded_number_of_lines():
    """Line mode (stdout not a TTY): no table per event; every event is O(1) bookkeeping."""
    out = io.StringIO()
    cb = ProgressCallback(_plan(trials=1000, epochs=2, mode="min", metric="val_loss"),
                          every_s=30.0, stream=out, live=False)
    for i in range(1000):
        trial = SimpleNamespace(trial_id=f"t{i}", config={"optimizer.lr": i / 1000}, status="RUNNING")
        cb.on_trial_start(0, [], trial)
        for epoch in (1, 2):
            cb.on_trial_result(0, [], trial, {"epoch": epoch, "val_loss": 1.0 / (i + epoch)})
        cb.on_trial_complete(0, [], trial)
    cb.on_experiment_end([])
    lines = out.getvalue().splitlines()
    assert len(lines) <= 2 + 2 + TOP + 1
    assert lines[-TOP - 3].startswith("-- s-20260101-000000: 1000/1000 trials finished")
    assert len(cb.top) == TOP and cb.top[0][2].name.startswith("trial-1000 ")


def test_view_works_when_epochs_are_searched():
    """`epochs=tune.choice([5, 10])`: each trial runs its own number of epochs; a trial that
    ran all of its 5 is done (not early-stopped), and its line shows 5/5 (a TypeError once)."""
    from dlopt import tune

    out = io.StringIO()
    cb = ProgressCallback(_plan(epochs=tune.choice([5, 10])), every_s=0.0, stream=out, live=False)
    short = SimpleNamespace(trial_id="a", config={"epochs": 5}, status="RUNNING")
    long = SimpleNamespace(trial_id="b", config={"epochs": 10}, status="RUNNING")
    cb.on_trial_start(0, [], short)
    cb.on_trial_start(0, [], long)
    cb.on_trial_result(0, [], short, {"epoch": 5, "val_accuracy": 0.8})
    cb.on_trial_complete(0, [], short)
    cb.on_trial_result(0, [], long, {"epoch": 5, "val_accuracy": 0.7})
    cb.on_trial_complete(0, [], long)  # stopped by a scheduler at 5 of its 10
    assert cb.counts["DONE"] == 1 and cb.counts["STOPPED"] == 1
    view = cb.lines(final=True)
    assert view[-2].split()[2:5] == ["DONE", "epoch", "5/5"]
    assert view[-1].split()[2:5] == ["STOPPED", "epoch", "5/10"]


def test_tty_view_redraws_in_place():
    class Tty(io.StringIO):
        def isatty(self):
            return True

    out = Tty()
    cb = ProgressCallback(_plan(), every_s=0.0, stream=out)
    assert cb.live
    trial = SimpleNamespace(trial_id="a", config={}, status="RUNNING")
    cb.on_trial_start(0, [], trial)
    cb.on_trial_result(0, [], trial, {"epoch": 1, "val_accuracy": 0.5})
    cb.on_experiment_end([trial])
    assert "\x1b[" in out.getvalue()  # cursor movement: the view is redrawn, not appended
    assert "best val_accuracy 0.5: trial-001" in out.getvalue()


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
        environment.set_state_period(os.environ, 1000)  # 10 s at 1,000 trials
        assert os.environ["TUNE_GLOBAL_CHECKPOINT_S"] == "10"
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


def test_the_driver_starts_without_torch():
    """Fixed costs: torch (~40% of the driver's imports) loads in the trials, and on the driver
    only for registration after the sweep (preloaded on a thread while trials run)."""
    import subprocess
    import sys

    code = "import sys, dlopt.cli.main, dlopt.driver.sweep; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_tunes_loop_gets_quick_thread_switches_only_while_the_sweep_fits():
    before = sys.getswitchinterval()
    with pytest.raises(RuntimeError):
        with environment.quick_thread_switches():
            assert sys.getswitchinterval() == pytest.approx(environment.GIL_SWITCH_INTERVAL_S)
            raise RuntimeError("a failed fit")
    assert sys.getswitchinterval() == before
