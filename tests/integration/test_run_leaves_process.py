"""`dlopt.run()` leaves the caller's process as it found it (docs/architecture.md, "Logging and
the terminal"; dlopt.driver.environment.sweep_environment): a real PBT sweep (which seeds
Python's and NumPy's global generators, dlopt.runtime.search.seed_pbt) in this process, then
os.environ, the warnings filters, MLflow's tracking URI, both random generators and every Ray
and MLflow name dlopt patches (dlopt.runtime.ray_compat) are exactly as before.
Digits, 1 worker, 2 trials, 2 epochs; real Ray and MLflow (SQLite).
"""
import logging
import os
import random
import warnings

import numpy as np
import pytest

import dlopt
from dlopt import Data, Experiment, Model, Optimizer, Resources, Search, Tracking, tune
from dlopt.driver import environment


def _process_state() -> dict:
    import mlflow
    import ray._private.worker as ray_worker
    from mlflow.utils import logging_utils
    from ray.train._internal import checkpoint_manager
    from ray.tune.execution import class_cache
    from ray.tune.execution.experiment_state import _ExperimentCheckpointManager

    from dlopt.tracking import sqlite

    rng = np.random.get_state()
    return {
        "environ": dict(os.environ),
        "filters": list(warnings.filters),
        "showwarning": warnings.showwarning,
        "tracking_uri": mlflow.get_tracking_uri(),
        "random": random.getstate(),
        "numpy": (rng[0], rng[1].tolist(), *rng[2:]),
        "wal_listener": sqlite.listening(),
        # every name dlopt.runtime.ray_compat patches, the original objects
        "propagated": class_cache.ENV_VARS_TO_PROPAGATE,
        "on_trial_checkpoint": _ExperimentCheckpointManager.on_trial_checkpoint,
        "delete_fs_path": checkpoint_manager._delete_fs_path,
        "print_to_stdstream": ray_worker.print_to_stdstream,
        "mlflow_stream": logging_utils.MLFLOW_LOGGING_STREAM,
        "levels": [logging.getLogger(n).level for n in environment.CHATTY_LOGGERS],
        "cwd": os.getcwd(),
    }


@pytest.mark.integration
@pytest.mark.parametrize("quiet", [False, True])
def test_a_pbt_sweep_leaves_the_process_as_it_found_it(tmp_path, monkeypatch, quiet):
    from dlopt.runtime import search

    seeded, seed_pbt = [], search.seed_pbt
    monkeypatch.setattr(search, "seed_pbt", lambda seed: (seeded.append(seed), seed_pbt(seed)))
    spec = Experiment(
        name="it-scope", seed=0, epochs=2,
        data=Data(dataset="digits", batch_size=64),
        model=Model(hidden=[16]),
        optimizer=Optimizer(name="sgd", lr=tune.loguniform(1e-3, 1e-1), momentum=0.5),
        search=Search(algorithm="random", num_samples=2, seed=3, scheduler="pbt",
                      perturbation_interval=1, max_concurrent_trials=2,
                      pbt_mutations={"optimizer.lr": tune.loguniform(1e-3, 1e-1)}),
        resources=Resources(num_workers=1),
        tracking=Tracking(experiment="it-scope"),
    )
    random.seed(12345)  # the caller's own generators, in a state of its own
    np.random.seed(12345)
    before = _process_state()
    result = dlopt.run(spec, tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
                       storage=str(tmp_path / "ray_results"), progress=False, quiet=quiet)
    assert result.trials and result.parent_run_id and seeded  # the sweep did seed both
    after = _process_state()
    assert {k: v for k, v in after.items() if v != before[k]} == {}
