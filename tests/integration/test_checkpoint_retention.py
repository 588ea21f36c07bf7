"""Tune without its forced state saves still never names a deleted checkpoint
(dlopt.runtime.checkpoints, ray_compat.checkpoint_deletes_to).

Real Ray, real Tune function trials that each write 20 checkpoints with num_to_keep=2. A
spy callback, asked for its state in every experiment-state save right after
DroppedCheckpoints, checks that every checkpoint named by this save or the LAG - 1 before
it is still on disk; at the end each trial holds exactly the checkpoints Tune names.
"""
import time
from pathlib import Path

import pytest
import ray
from ray import tune

from dlopt.runtime import ray_compat
from dlopt.runtime.checkpoints import LAG, DroppedCheckpoints

TRIALS, CHECKPOINTS = 3, 20


@pytest.fixture
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, ignore_reinit_error=True)
    try:
        yield
    finally:
        ray.shutdown()


class NamedCheckpointsExist(tune.Callback):
    """At each state save: every checkpoint the last LAG saves named is still on disk."""

    def __init__(self):
        self.trials, self.saves, self.missing, self.checkpoints = [], [], [], 0
        self.times = []

    def quick_saves(self) -> int:
        """Saves less than half Tune's 1 s period after the one before: forced ones."""
        return sum(b - a < 0.5 for a, b in zip(self.times, self.times[1:]))

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self.trials = trials

    def on_checkpoint(self, iteration, trials, trial, checkpoint, **info):
        self.checkpoints += 1

    def get_state(self):
        self.times.append(time.monotonic())
        self.saves.append({r.checkpoint.path for t in self.trials
                           for r in t.run_metadata.checkpoint_manager.best_checkpoint_results})
        self.missing += [p for named in self.saves[-LAG:] for p in named if not Path(p).exists()]
        return None


def run_sweep(tmp_path, name, callbacks):
    def checkpoints_every_step(config):  # nested: pickled by value into the trial actor
        import tempfile
        import time
        from pathlib import Path

        from ray import tune

        for step in range(CHECKPOINTS):
            with tempfile.TemporaryDirectory() as d:
                (Path(d) / "state.txt").write_text(str(step))
                tune.report({"step": step}, checkpoint=tune.Checkpoint.from_directory(d))
            time.sleep(0.1)

    tuner = tune.Tuner(
        tune.with_resources(checkpoints_every_step, {"cpu": 1}),
        param_space={"x": tune.grid_search(list(range(TRIALS)))},
        run_config=tune.RunConfig(name=name, storage_path=str(tmp_path), verbose=0,
                                  callbacks=callbacks,
                                  checkpoint_config=tune.CheckpointConfig(num_to_keep=2)))
    return tuner.fit()


def test_dropped_checkpoints_outlive_every_state_that_names_them(local_ray, tmp_path, monkeypatch):
    monkeypatch.setenv("TUNE_GLOBAL_CHECKPOINT_S", "1")
    # Tune as it comes: a forced state save every 2 checkpoints of any trial
    plain = NamedCheckpointsExist()
    run_sweep(tmp_path, "plain", [plain])
    # dlopt's way: saves on the period only, deletions after the saves
    dropped, spy = DroppedCheckpoints(), NamedCheckpointsExist()
    with ray_compat.checkpoint_deletes_to(dropped.drop):
        grid = run_sweep(tmp_path, "deferred", [dropped, spy])
    deleted_while_running = dropped.deleted
    dropped.delete_all()

    assert plain.checkpoints == spy.checkpoints == TRIALS * CHECKPOINTS
    assert plain.quick_saves() >= TRIALS * CHECKPOINTS // 4  # the forced saves
    assert spy.quick_saves() <= 1, spy.times  # the last save (forced by fit) may be quick
    assert spy.missing == []  # (plain Tune deletes what its save before the last named)
    assert deleted_while_running > 0  # not only once fit returned
    assert dropped.deleted == TRIALS * (CHECKPOINTS - 2) and dropped.pending == 0
    for result in grid:
        kept = sorted(p.name for p in Path(result.path).glob("checkpoint_*"))
        assert kept == sorted(Path(c.path).name for c, _ in result.best_checkpoints)
        assert len(kept) == 2 and Path(result.checkpoint.path).name == kept[-1]
