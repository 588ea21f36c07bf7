"""Every private Ray (and MLflow) attribute dlopt touches, in one place.

dlopt uses public APIs wherever Ray 2.60 and MLflow 3.17 have one (docs/architecture.md,
"Private Ray APIs"). Each function here stands in for a missing one and says why;
tests/test_ray_compat.py checks that every attribute used here still exists with the
shape relied on, so a Ray or MLflow upgrade that moves one fails that test, not a sweep.
Ray and MLflow are imported inside each function: importing this module loads neither.
"""
from __future__ import annotations

import contextlib
import sys
from typing import Callable, Iterator, Optional


# ------------------------------------------------------------------ Ray Tune
def set_restored_callbacks(tuner, callbacks: list) -> None:
    """Give a `Tuner.restore`d tuner this process's callbacks.

    `Tuner.restore` takes no RunConfig: the callbacks pickled in tuner.pkl (with the MLflow
    tracker of the process that was killed) would run again. Ray 2.60 has no public setter,
    so the restored tuner's run config gets this run's callbacks directly.
    """
    tuner._local_tuner._run_config.callbacks = callbacks


def drop_propagated_env_vars(prefix: str) -> None:
    """Stop Tune copying the driver's variables named `prefix...` into trial runtime_envs.

    Tune copies AWS_* credentials into every trial actor's runtime_env
    (`ray.tune.execution.class_cache.ENV_VARS_TO_PROPAGATE`), and Ray's runtime_env agent
    logs runtime envs in plain text. Ray has no option to turn the copy off; the module-level
    set is read each time a trial actor class is made, so narrowing it here holds.
    """
    from ray.tune.execution import class_cache

    class_cache.ENV_VARS_TO_PROPAGATE = frozenset(
        k for k in class_cache.ENV_VARS_TO_PROPAGATE if not k.startswith(prefix))


@contextlib.contextmanager
def propagated_env_vars_restored() -> Iterator[None]:
    """Put back Tune's set of propagated variables when the block ends, so that narrowing it
    for one sweep (`drop_propagated_env_vars`) does not outlive that sweep in a process that
    goes on to run other Tune experiments (a notebook, a test session)."""
    from ray.tune.execution import class_cache

    saved = class_cache.ENV_VARS_TO_PROPAGATE
    try:
        yield
    finally:
        class_cache.ENV_VARS_TO_PROPAGATE = saved


@contextlib.contextmanager
def checkpoint_deletes_to(drop: Callable[..., None]) -> Iterator[None]:
    """While the block runs, Tune saves its experiment state on its period only, and each
    checkpoint it drops (`CheckpointConfig(num_to_keep)`) goes to `drop(fs=, fs_path=)`
    instead of being deleted at once.

    Why: with num_to_keep=2 (what keeps a sweep's disk bounded) Tune forces a save of the
    whole experiment state, every trial in it, each time any trial has written two
    checkpoints, so that the saved state never names a deleted checkpoint. The state grows
    with the trials: about one save per trial, each as large as the sweep (22.9 MB at 1,000
    tiny trials), 2-3x the sweep's time at 1,000 trials (benchmarks/sweep_scale.py). Ray
    calls the forced save a workaround and has no setting for it. Without it, a checkpoint
    must outlive every saved state that names it: `drop` is
    `dlopt.runtime.checkpoints.DroppedCheckpoints.drop`, which deletes it after later saves
    (docs/architecture.md, "Tune's state and checkpoints"). `delete_checkpoint` does the
    deleting Tune would have done.
    """
    from ray.train._internal import checkpoint_manager
    from ray.tune.execution.experiment_state import _ExperimentCheckpointManager as manager

    saved = manager.on_trial_checkpoint, checkpoint_manager._delete_fs_path
    manager.on_trial_checkpoint = lambda self, trial: None
    checkpoint_manager._delete_fs_path = drop
    try:
        yield
    finally:
        manager.on_trial_checkpoint, checkpoint_manager._delete_fs_path = saved


def delete_checkpoint(fs, fs_path: str) -> None:
    """Delete a checkpoint directory as Tune's checkpoint manager does (any Ray storage)."""
    from ray.train._internal.storage import _delete_fs_path

    _delete_fs_path(fs=fs, fs_path=fs_path)


# ------------------------------------------------------------------ Ray Train (in a trial)
def train_report_queue():
    """The 1-slot queue through which a Train controller hands reports to this Tune trial,
    or None (not in a trial, or a Ray version without it).

    dlopt.runtime.trial waits for it to empty before the trial returns (a Ray 2.60 deadlock,
    see `wait_until_tune_took_last_report` there). Ray exposes neither the session nor its
    queue publicly.
    """
    from ray.train._internal.session import get_session

    return getattr(get_session(), "_inter_actor_queue", None)


# ------------------------------------------------------------------ driver terminal noise
def _nothing() -> None:
    """The undo of a patch that changed nothing."""


def filter_driver_messages(keep: Callable[[dict], Optional[dict]]) -> Callable[[], None]:
    """Pass every message the raylet pushes to this driver through `keep` (None drops it);
    returns the undo that puts Ray's own function back.

    Ray prints these ("(raylet) WARNING: N PYTHON worker processes have been started ...")
    whatever `log_to_driver` says and has no switch for them. Its listener thread
    (`ray._private.worker.listen_error_messages`) looks `print_to_stdstream` up at each
    message, so a wrapper put there holds. Installing twice wraps once (the second undo
    does nothing).
    """
    import ray._private.worker as ray_worker

    original = ray_worker.print_to_stdstream
    if getattr(original, "dlopt_filtered", False):
        return _nothing

    def filtered(data, ignore_prefix):
        kept = keep(data)
        if kept is not None:
            original(kept, ignore_prefix)

    filtered.dlopt_filtered = True
    ray_worker.print_to_stdstream = filtered

    def undo() -> None:
        if ray_worker.print_to_stdstream is filtered:
            ray_worker.print_to_stdstream = original

    return undo


class _Stderr:
    """sys.stderr looked up at each write (pytest and others swap it)."""

    def write(self, text):
        return sys.stderr.write(text)

    def flush(self):
        sys.stderr.flush()


class _Discard:
    """Where MLflow's event prints go when silenced; `enabled` as MLflow's stream has."""

    enabled = False

    def write(self, text):
        return len(text)

    def flush(self):
        pass


def silence_mlflow_events() -> Callable[[], None]:
    """Drop MLflow's event prints ("Successfully registered model ...", "Created version ...")
    while its logger's warnings and errors still reach stderr.

    MLflow prints them with `eprint` to `mlflow.utils.logging_utils.MLFLOW_LOGGING_STREAM`,
    the same stream its logger writes to; it has no public switch for the prints alone.
    `disable_logging()` silences both, and MLflow's own context managers call
    `enable_logging()` again on exit. `eprint` looks the stream up at each call, so pointing
    that name at a sink (and the logger's handler at stderr) holds. Returns the undo that
    puts MLflow's stream back, in that name and in its handlers.
    """
    import logging

    from mlflow.utils import logging_utils

    old = logging_utils.MLFLOW_LOGGING_STREAM
    moved = [h for h in logging.getLogger("mlflow").handlers if getattr(h, "stream", None) is old]
    for handler in moved:
        handler.setStream(_Stderr())
    sink = logging_utils.MLFLOW_LOGGING_STREAM = _Discard()

    def undo() -> None:
        for handler in moved:
            if isinstance(handler.stream, _Stderr):
                handler.setStream(old)
        if logging_utils.MLFLOW_LOGGING_STREAM is sink:
            logging_utils.MLFLOW_LOGGING_STREAM = old

    return undo


# ------------------------------------------------------------------ MLflow's global URI
def explicit_tracking_uri() -> Optional[str]:
    """The tracking URI `mlflow.set_tracking_uri` last set in this process, or None when none
    was (MLflow then derives one from $MLFLOW_TRACKING_URI or its default at each call).

    `mlflow.get_tracking_uri()` cannot tell the two apart, and setting what it returns would
    pin a derived default; MLflow has no public reader of the explicit one. Putting back
    None (`mlflow.set_tracking_uri(None)`) is MLflow's own way to clear it
    (`mlflow.tracking._tracking_service.utils._use_tracking_uri` does the same)."""
    from mlflow.tracking._tracking_service import utils

    return utils._tracking_uri
