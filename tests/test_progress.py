"""Terminal output helpers: Ray's noise filter and the live table (no Ray cluster started)."""
import io
from types import SimpleNamespace

from dlopt.driver.progress import ProgressCallback, drop_ray_noise

NOISE = ("WARNING: 12 PYTHON worker processes have been started on node: abc with address: "
         "192.0.2.2, which is 6x the maximum expected startup concurrency (2).")


def test_ray_noise_is_dropped_and_other_messages_kept():
    assert drop_ray_noise({"lines": [NOISE], "pid": "raylet"}) is None
    kept = drop_ray_noise({"lines": [NOISE, "Task was killed due to the node running low on memory."],
                           "pid": "raylet", "is_err": False})
    assert kept == {"lines": ["Task was killed due to the node running low on memory."],
                    "pid": "raylet", "is_err": False}


def test_live_table_shows_name_status_epoch_and_metric():
    plan = SimpleNamespace(objectives=None, metric="val_accuracy", sweep_name="s-20260101-000000",
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
