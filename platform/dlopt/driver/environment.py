"""What a sweep sets up in the driver process: Ray's and MLflow's settings, and quiet.

`dlopt.run()` leaves the caller's environment and warnings filters as they were
(docs/architecture.md, "Logging and the terminal"). So the variables below are set only
while a sweep runs (`scoped`) and restored after; Ray's processes get them through
`ray.init`'s runtime_env (`runtime_env_vars`) and by inheriting the environment of a
local Ray started inside the scope. `sweep_environment` is the one scope a sweep runs in:
it owns every process-wide change (variables, warnings, MLflow's URI, the random
generators, SQLAlchemy's listener, Ray patches) and puts each back on exit. `silenced`
(every warning, Ray's and MLflow's loggers and prints) is the CLI's choice (`quiet=True`);
the CLI, which owns its process, also keeps the variables for the whole command (`apply`).
"""
from __future__ import annotations

import contextlib
import logging
import os
import sys
from typing import Iterator, MutableMapping, Optional

from dlopt.runtime import ray_compat
from dlopt.tracking.scope import store_settings, tracking_uri_restored
from dlopt.tracking.sqlite import wal_restored

# Train V2's controller polls workers every 2 s by default and each `ray.train.report`
# waits for that poll: at 0.1 s a report costs ~0.1 s instead of up to 2 s
# (benchmarks/overhead.py --poll measures it).
FAST_POLL_ENV = {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.1"}
# No usage stats or telemetry, no patched print in Train workers, no Tune loggers writing
# result files beside dlopt's own tracking, MLflow's INFO lines and progress bars off.
QUIET_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "MLFLOW_ENABLE_TELEMETRY": "false",
             "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "1",
             "RAY_TRAIN_ENABLE_PRINT_PATCH": "0", "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1",
             "RAY_AIR_NEW_OUTPUT": "1", "PYTHONWARNINGS": "ignore",
             "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false", "MLFLOW_LOGGING_LEVEL": "WARNING"}
# Tune saves its experiment state at most every 10 s by default; a driver killed in that
# window would rerun trials that had finished. A save pickles every trial (O(trials)), so
# the period grows with the sweep: 1 s up to 100 trials, +1 s per 100 more (10 s at 1,000).
# Tune's cost of saving stays ~constant per second instead of growing with the sweep
# (benchmarks/sweep_scale.py); set by `state_period` once the plan is known.
TUNE_STATE_KEY = "TUNE_GLOBAL_CHECKPOINT_S"
# TUNE_FUNCTION_THREAD_TIMEOUT_S: a reused trial actor (TuneConfig.reuse_actors) waits this
# long for the paused trial's thread to end; a multi-worker trial's thread first aborts its
# TorchTrainer (dlopt.runtime.trial.CheckpointForwarder.abort, which frees the workers'
# placement group) and Tune's 2 s default cut that short: PBT's restart then failed with
# "Trainable runner reuse requires reset_config()" (tests/integration/test_search_sweeps.py).
TUNE_STATE_ENV = {TUNE_STATE_KEY: "1", "TUNE_FUNCTION_THREAD_TIMEOUT_S": "60"}
# Quiet only. Tune's banner ("Configuration for experiment", "View detailed results here")
# comes from its new output engine even at verbose=0; the old one is silent there, and dlopt
# has its own table (dlopt.driver.progress). MLflow prints "View run ... at" for every run
# it ends.
SILENT_ENV = {"RAY_AIR_NEW_OUTPUT": "0"}  # set even when the caller set it
SILENT_DEFAULT_ENV = {"MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true"}

_KEYS = tuple(dict.fromkeys([*FAST_POLL_ENV, *QUIET_ENV, *TUNE_STATE_ENV, *SILENT_ENV,
                             *SILENT_DEFAULT_ENV]))
# Ray messages that tell a dlopt user nothing they can act on. The raylet pushes them to every
# driver through its error channel, which Ray prints whatever `log_to_driver` says.
RAY_NOISE = ("PYTHON worker processes have been started on node",)


def state_period(trials: int) -> str:
    """Seconds between Tune's experiment-state saves for a sweep of `trials` trials."""
    return str(max(1, -(-trials // 100)))


def set_state_period(environ: MutableMapping[str, str], trials: int) -> None:
    """Tune's state-save period for this sweep in place of dlopt's default of 1 s (called
    inside `scoped`, which restores the variable); any other value the caller set is kept."""
    if environ.get(TUNE_STATE_KEY) in (None, TUNE_STATE_ENV[TUNE_STATE_KEY]):
        environ[TUNE_STATE_KEY] = state_period(trials)


def apply(environ: MutableMapping[str, str], quiet: bool) -> None:
    """Set the sweep's variables in `environ`; a value the caller set is kept, except
    `SILENT_ENV` when quiet."""
    for env in (QUIET_ENV, FAST_POLL_ENV, TUNE_STATE_ENV) + ((SILENT_DEFAULT_ENV,) if quiet else ()):
        for key, value in env.items():
            environ.setdefault(key, value)
    if quiet:
        environ.update(SILENT_ENV)


@contextlib.contextmanager
def scoped(quiet: bool) -> Iterator[None]:
    """`apply` to os.environ for the duration of the block, then restore what was there."""
    saved: dict[str, Optional[str]] = {k: os.environ.get(k) for k in _KEYS}
    apply(os.environ, quiet)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def runtime_env_vars() -> dict[str, str]:
    """The env_vars of `ray.init`'s runtime_env: the sweep's settings as set now (inside
    `scoped`), and the fault-injection switches tests set. Workers get no MLflow settings
    (docs/architecture.md, "One MLflow writer: the driver")."""
    env_vars = {k: os.environ[k] for k in (*FAST_POLL_ENV, *QUIET_ENV,
                                           "TUNE_FUNCTION_THREAD_TIMEOUT_S") if k in os.environ}
    env_vars.update({k: v for k, v in os.environ.items() if k.startswith("DLOPT_FAULT_")})
    return env_vars


def runtime_env() -> dict:
    """`ray.init`'s runtime_env: the sweep's env_vars, less those a Ray job's own runtime_env
    already sets. Inside a job Ray merges this into the job's runtime_env (its working_dir
    stays) and refuses a variable both set; the job's value is already in this process's
    environment, so the job's choice wins."""
    env_vars = runtime_env_vars()
    job = os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR")
    if job:
        import json

        taken = (json.loads(job).get("runtime_env") or {}).get("env_vars") or {}
        env_vars = {k: v for k, v in env_vars.items() if k not in taken}
    return {"env_vars": env_vars}


# The interpreter's thread switch interval while Tune runs (Python's default: 5 ms). Why:
# the MLflow writer thread (dlopt.tracking.callback) runs pure-Python SQLAlchemy code for
# tens of ms per trial, and Tune's event loop, waking from `ray.wait`, waited up to a whole
# 5 ms slice for the GIL at each wake-up. 1,000 tiny trials (benchmarks/sweep_scale.py's
# sweep, alternating runs): 87.2 / 83.2 s at 5 ms, 82.5 / 74.8 / 75.6 / 78.0 s at 0.5 ms,
# 82.7 / 80.0 s at 0.1 ms (switching itself costs); bare Ray Tune 61.8 / 60.6 s.
GIL_SWITCH_INTERVAL_S = 0.0005


@contextlib.contextmanager
def quick_thread_switches() -> Iterator[None]:
    """`GIL_SWITCH_INTERVAL_S` while the block runs; the caller's interval after it."""
    saved = sys.getswitchinterval()
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
    try:
        yield
    finally:
        sys.setswitchinterval(saved)


@contextlib.contextmanager
def out_of_job_dir() -> Iterator[None]:
    """Inside a Ray job, the block may `leave_job_dir`; the working directory is restored
    after (when it still exists)."""
    try:
        old: Optional[str] = os.getcwd()
    except OSError:  # already gone
        old = None
    try:
        yield
    finally:
        if old is not None:
            with contextlib.suppress(OSError):
                os.chdir(old)


def leave_job_dir() -> None:
    """Inside a Ray job, work from a directory Ray does not own (every relative location
    was resolved before). Nodes sharing Ray's temp dir re-unpack the job's working_dir in
    place whenever one of them first installs the job's runtime_env (when the driver joins,
    when a trial first lands on a node): the driver's working directory is then gone, and
    MLflow, Tune and os.path.abspath read it (os.getcwd) at many points."""
    if "RAY_JOB_CONFIG_JSON_ENV_VAR" not in os.environ:
        return
    from pathlib import Path

    for place in (Path.home() / "dlopt", Path.home(), Path("/")):
        if place.is_dir():
            os.chdir(place)
            return


def drop_ray_noise(data: dict) -> dict | None:
    """A Ray driver message (`{"lines": [...], ...}`) without the noisy lines; None if empty."""
    lines = [line for line in data.get("lines", []) if not any(n in line for n in RAY_NOISE)]
    return {**data, "lines": lines} if lines else None


# The loggers `silenced` lowers (their levels restored after).
CHATTY_LOGGERS = ("mlflow", "alembic", "ray", "ray.tune", "ray.train")


@contextlib.contextmanager
def silenced() -> Iterator[None]:
    """Hide every warning and Ray's and MLflow's INFO chatter in this process while the block
    runs (the CLI without --verbose). Other messages, e.g. out-of-memory kills, still print.
    The warnings filters are the caller's to restore (`sweep_environment` does); the loggers'
    levels and the two print patches are put back here."""
    import warnings

    warnings.filterwarnings("ignore")
    # MLflow's log_model re-enables UserWarnings inside `catch_warnings` ("once"); dropping
    # them at display time hides those too.
    warnings.showwarning = lambda *args, **kwargs: None
    import mlflow  # noqa: F401  (configures its loggers on import; lower them after)

    with contextlib.ExitStack() as undo:
        # "Successfully registered model ...", "Created version ..."
        undo.callback(ray_compat.silence_mlflow_events())
        # "(raylet) WARNING: N PYTHON worker ..."
        undo.callback(ray_compat.filter_driver_messages(drop_ray_noise))
        undo.enter_context(logger_levels_restored())
        for name in CHATTY_LOGGERS:
            logging.getLogger(name).setLevel(logging.ERROR)
        yield


@contextlib.contextmanager
def logger_levels_restored() -> Iterator[None]:
    """The levels of `CHATTY_LOGGERS` after the block as before: `silenced` lowers them, and
    `ray.init(logging_level=...)` (dlopt.driver.sweep.init_ray) sets Ray's."""
    saved = [(logger, logger.level) for logger in map(logging.getLogger, CHATTY_LOGGERS)]
    try:
        yield
    finally:
        for logger, level in saved:
            logger.setLevel(level)


@contextlib.contextmanager
def environ_restored() -> Iterator[None]:
    """os.environ after the block exactly as before it: every variable the sweep, Ray,
    MLflow or a library set or removed meanwhile is put back."""
    saved = dict(os.environ)
    try:
        yield
    finally:
        for key in [k for k in os.environ if k not in saved]:
            del os.environ[key]
        for key, value in saved.items():
            if os.environ.get(key) != value:
                os.environ[key] = value


@contextlib.contextmanager
def random_state_restored() -> Iterator[None]:
    """Python's and NumPy's global random generators after the block as before: a PBT sweep
    seeds both (dlopt.runtime.search.seed_pbt; Ray's PBT draws from them and takes no seed),
    and the caller's draws after `dlopt.run()` must not depend on that."""
    import random

    import numpy as np

    saved = random.getstate(), np.random.get_state()
    try:
        yield
    finally:
        random.setstate(saved[0])
        np.random.set_state(saved[1])


class SweepScope(contextlib.ExitStack):
    """What one sweep changed in the driver's process, undone when it ends (an ExitStack:
    `enter_context` adds a change of the sweep's own, e.g. Tune's checkpoint patch)."""

    def use_store(self, tracking_uri: str) -> None:
        """MLflow's settings for the sweep's store (HTTP fail-fast, the global tracking URI,
        SQLite WAL), from now until the sweep ends (dlopt.tracking.scope.store_settings)."""
        self.enter_context(store_settings(tracking_uri))


@contextlib.contextmanager
def sweep_environment(quiet: bool) -> Iterator[SweepScope]:
    """The one scope of every process-wide change a sweep makes (docs/architecture.md,
    "Logging and the terminal"): entered once by `dlopt.driver.sweep.run`; on exit, normal or
    not, the caller finds os.environ, the warnings filters, MLflow's tracking URI, the global
    random generators, the working directory, SQLAlchemy's listeners, the levels of Ray's and
    MLflow's loggers and every Ray/MLflow name dlopt patches (dlopt.runtime.ray_compat) as
    they were. `quiet`: the CLI's silence (`silenced`) on top, undone too."""
    import warnings

    with SweepScope() as scope:
        scope.enter_context(environ_restored())  # first in, last out: after the pieces below
        scope.enter_context(warnings.catch_warnings())  # filters and showwarning
        scope.enter_context(tracking_uri_restored())
        scope.enter_context(random_state_restored())
        scope.enter_context(wal_restored())
        scope.enter_context(logger_levels_restored())
        scope.enter_context(scoped(quiet))
        scope.enter_context(out_of_job_dir())
        scope.enter_context(ray_compat.propagated_env_vars_restored())
        if quiet:
            scope.enter_context(silenced())
        yield scope
