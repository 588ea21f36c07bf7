"""Plan -> Ray Tune sweep on the driver: Ray start-up, Tuner, MLflow parent run, registration.

The only module that turns plain plan data into Ray objects (search algorithm,
scheduler, param space) and the only place that starts Ray.
"""
from __future__ import annotations

import logging
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from dlopt.spec.plan import Plan, make_plan
from dlopt.driver.finalize import TrialSummary, finalize
from dlopt.runtime.search import search_algorithm, to_ray_space, trial_scheduler, tune_config_metric
from dlopt.spec import Experiment
from dlopt.runtime.trial import TRIAL_DRIVER_CPU

# Train V2's controller polls workers every 2 s by default and each `ray.train.report`
# waits for that poll: at 0.1 s a report costs ~0.1 s instead of up to 2 s (DESIGN facts).
FAST_POLL_ENV = {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.1"}
QUIET_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "MLFLOW_ENABLE_TELEMETRY": "false",
             "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "1",
             "RAY_TRAIN_ENABLE_PRINT_PATCH": "0", "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1",
             "RAY_AIR_NEW_OUTPUT": "1", "PYTHONWARNINGS": "ignore",
             "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false", "MLFLOW_LOGGING_LEVEL": "WARNING"}


def quiet_driver(verbose: bool) -> None:
    """Hide MLflow's and Ray's INFO chatter and library warnings unless --verbose."""
    if verbose:
        return
    import warnings

    for k, v in QUIET_ENV.items():
        os.environ.setdefault(k, v)
    # Tune's banner ("Configuration for experiment", "View detailed results here") comes from
    # its new output engine even at verbose=0; the old one is silent there. dlopt prints its
    # own table (progress.py). MLflow prints "View run ... at" links for every run it ends.
    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    warnings.filterwarnings("ignore")
    # MLflow's log_model re-enables UserWarnings inside `catch_warnings` ("once"); dropping
    # them at display time hides those too.
    warnings.showwarning = lambda *args, **kwargs: None
    import mlflow  # noqa: F401  (configures its loggers on import; lower them after)

    from dlopt.driver.progress import hide_ray_noise, silence_mlflow_events

    silence_mlflow_events()  # "Successfully registered model ...", "Created version ..."
    hide_ray_noise()  # "(raylet) WARNING: N PYTHON worker processes have been started ..."
    for name in ("mlflow", "alembic", "ray", "ray.tune", "ray.train"):
        logging.getLogger(name).setLevel(logging.ERROR)


@dataclass
class SweepResult:
    plan: Plan
    parent_run_id: str
    experiment_id: str
    tracking_uri: str
    storage_path: str
    trials: list[TrialSummary]
    best: Optional[TrialSummary]
    registered: list[dict] = field(default_factory=list)
    wall_seconds: float = 0.0




# ------------------------------------------------------------------ Ray start-up
def local_cpus_needed(plan: Plan) -> int:
    per_trial = plan.resources_per_trial["CPU"] + TRIAL_DRIVER_CPU
    return max(os.cpu_count() or 1, math.ceil(per_trial * plan.max_concurrent_trials))


def keep_credentials_out_of_runtime_env(storage_path) -> None:
    """Ray Tune copies AWS_* credentials into every trial's runtime_env, and Ray's
    runtime_env_agent logs runtime envs in plain text (session logs). They are needed there
    only for s3:// storage; otherwise trials inherit the environment like any process."""
    if str(storage_path).startswith("s3://"):
        return
    from ray.tune.execution import class_cache

    class_cache.ENV_VARS_TO_PROPAGATE = frozenset(
        k for k in class_cache.ENV_VARS_TO_PROPAGATE if not k.startswith("AWS_"))


def init_ray(plan: Plan, address: Optional[str], verbose: bool) -> None:
    import ray

    os.environ.update({k: v for k, v in FAST_POLL_ENV.items() if k not in os.environ})
    for k, v in QUIET_ENV.items():
        os.environ.setdefault(k, v)
    env_vars = {k: os.environ[k] for k in list(FAST_POLL_ENV) + list(QUIET_ENV)}
    env_vars.update({k: v for k, v in os.environ.items() if k.startswith("DLOPT_FAULT_")})  # tests
    for key in ("MLFLOW_TRACKING_URI",):
        if key in os.environ:
            env_vars.pop(key, None)  # workers need no MLflow settings (DESIGN rule 5)
    kwargs = dict(runtime_env={"env_vars": env_vars}, log_to_driver=verbose,
                  logging_level=logging.INFO if verbose else logging.ERROR,
                  ignore_reinit_error=True)
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, **kwargs)
    else:
        ray.init(num_cpus=local_cpus_needed(plan), include_dashboard=False, **kwargs)


def cluster_cpus(address: Optional[str]) -> Optional[float]:
    import ray

    if ray.is_initialized():
        return ray.cluster_resources().get("CPU")
    return None


# ------------------------------------------------------------------ the sweep
def latest_sweep_dir(storage: Path, name: str) -> Optional[Path]:
    """The newest `NAME-YYYYmmdd-HHMMSS` sweep directory Tune can restore (not `NAME-x-...`)."""
    import re

    stamp = re.compile(re.escape(name) + r"-\d{8}-\d{6}$")
    candidates = sorted(p for p in storage.glob(f"{name}-*")
                        if p.is_dir() and stamp.match(p.name) and (p / "tuner.pkl").exists())
    return candidates[-1] if candidates else None


def run(spec: Experiment, *, address: Optional[str] = None, tracking_uri: Optional[str] = None,
        storage: Optional[str] = None, resume: bool = False, verbose: bool = False,
        progress: bool = True) -> SweepResult:
    from dlopt.tracking import store as tracking
    from dlopt.driver.progress import ProgressCallback

    t0 = time.perf_counter()
    quiet_driver(verbose)
    tracking_uri = tracking_uri or tracking.default_tracking_uri()
    tracking.check_reachable(tracking_uri)  # before Ray starts
    from dlopt.driver import preflight

    preflight.check(spec, tracking_uri, address or os.environ.get("RAY_ADDRESS"))
    from dlopt.registry import teachers

    # distillation teachers: versions pinned and files read here; workers get the files
    teacher_files = teachers.fetch(spec.model_dump(mode="json"), tracking_uri)
    storage_path = Path(storage or "ray_results").resolve() if not (storage and "://" in storage) \
        else storage
    plan = make_plan(spec)
    restore_dir = None
    if resume and "://" in str(storage_path):
        raise SystemExit("error: --resume needs a local --storage path (remote storage: "
                         "restore with ray.tune.Tuner.restore)")
    if resume:
        # --resume: the same sweep name, so the MLflow parent run (tag dlopt.sweep) and its
        # child runs (tag dlopt.trial_id) are found and reused instead of duplicated.
        restore_dir = latest_sweep_dir(Path(storage_path), spec.name)
        if restore_dir is None:
            print(f"note: no sweep of {spec.name!r} under {storage_path} to resume; starting a "
                  "new one", file=sys.stderr)
        else:
            plan.sweep_name = restore_dir.name
            done = tracking.finished_sweep(tracking_uri, plan.tracking_experiment, plan.sweep_name)
            if done:
                raise tracking.SweepFinished(f"sweep {plan.sweep_name} already finished (MLflow "
                                             f"parent run {done}); nothing to resume")
            print(f"resuming sweep {plan.sweep_name}", file=sys.stderr)
    # Tune saves its experiment state at most every 10 s by default; a driver killed in that
    # window would rerun trials that had finished. The state of a dlopt sweep is small.
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "1")

    keep_credentials_out_of_runtime_env(storage_path)
    # Opening the MLflow store (a new SQLite file runs its schema migrations, ~2-3 s of CPU)
    # overlaps Ray's start-up, which mostly waits on its own processes.
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1, thread_name_prefix="dlopt-mlflow-open") as pool:
        opening = pool.submit(tracking.Tracker, tracking_uri, plan.tracking_experiment)
        try:
            init_ray(plan, address, verbose)
        finally:
            tracker = opening.result()
    if address or os.environ.get("RAY_ADDRESS"):
        for line in preflight.cluster_warnings(spec):
            print(line, file=sys.stderr)
    import ray
    from ray import tune

    space, tables = to_ray_space(plan)
    from dlopt.driver.review import source_tags

    # user, source (the experiment file), git commit, and the command that reproduces the sweep
    tags = {"dlopt.sweep": plan.sweep_name, **source_tags(sys.argv)}
    parent_id = tracker.start_parent(plan.sweep_name, plan.to_dict(), tags)
    callbacks = [tracking.MlflowCallback(tracker, plan.spec_json, tables, tags)]
    if progress:
        callbacks.append(ProgressCallback(plan, tables))

    from dlopt.spec.plan import trial_spec
    from dlopt.runtime.trial import make_trial_fn, runs_in_trial, trial_resources

    # A 1-worker trial reserves its worker's CPU/GPU itself (it runs the loop in-trial);
    # a multi-worker trial reserves next to nothing and its TorchTrainer asks for workers.
    trainable = tune.with_resources(
        make_trial_fn(plan.spec_json, tables, str(storage_path), teachers=teacher_files),
        lambda config: tune.PlacementGroupFactory([trial_resources(
            trial_spec(plan.spec_json, tables, config))]))
    metric, mode = plan.metric, plan.mode
    if plan.objectives:
        metric, mode = next(iter(plan.objectives.items()))
    # In-trial runs: Tune keeps the last 2 checkpoints (the final one holds the model) and
    # retries a failed trial from its latest checkpoint, as Train's FailureConfig would.
    in_trial = runs_in_trial(spec)
    run_config = tune.RunConfig(
        name=plan.sweep_name, storage_path=str(storage_path), callbacks=callbacks,
        verbose=1 if verbose else 0,
        # PBT clones another trial's checkpoint some time after it was reported: keep them all
        # (small models) so a clone never finds its source checkpoint deleted.
        checkpoint_config=tune.CheckpointConfig(num_to_keep=None if plan.scheduler == "pbt" else 2),
        failure_config=tune.FailureConfig(max_failures=spec.resources.max_failures if in_trial else 0))
    if restore_dir is not None and tune.Tuner.can_restore(str(restore_dir)):
        tuner = tune.Tuner.restore(str(restore_dir), trainable=trainable, resume_unfinished=True,
                                   resume_errored=True, param_space=space)
        # Tuner.restore takes no RunConfig: this run's callbacks (with this process's MLflow
        # tracker) replace the ones pickled in tuner.pkl. Ray 2.60 has no public setter.
        tuner._local_tuner._run_config.callbacks = callbacks
    else:
        searcher = search_algorithm(plan, spec)
        tuner = tune.Tuner(
            trainable,
            param_space=space,
            tune_config=tune.TuneConfig(
                # None when the searcher holds the metric(s) itself (dlopt.search)
                metric=tune_config_metric(plan)[0], mode=tune_config_metric(plan)[1],
                search_alg=searcher, scheduler=trial_scheduler(plan, spec),
                num_samples=plan.num_samples, max_concurrent_trials=plan.max_concurrent_trials,
                # a finished trial's process runs the next one: no new Python, torch, sklearn
                # imports per trial (dlopt.train.loop.fit re-seeds and rebuilds everything)
                reuse_actors=True),
            run_config=run_config,
        )
    status = "FAILED"
    try:
        grid = tuner.fit()
        tracker.drain()  # writes buffered during an MLflow outage: written, or a clear error
        # From here the driver writes directly (registry, test report, review): each call
        # retries through an outage, bounded like the drain, instead of failing the sweep.
        tracker.client = tracking.RetryingClient(tracker.client, tracking.DRAIN_TIMEOUT_S)
        trials, best, registered = finalize(grid, plan, spec, tracker, tables, space)
        status = "FINISHED"
        return SweepResult(plan=plan, parent_run_id=parent_id, experiment_id=tracker.experiment_id,
                           tracking_uri=tracker.uri, storage_path=str(storage_path), trials=trials,
                           best=best, registered=registered, wall_seconds=time.perf_counter() - t0)
    finally:
        tracker.finish_parent(status)
        if not tracker.flush(wait_s=30.0):
            print(f"error: {len(tracker.pending)} MLflow writes could not be made (store "
                  "unreachable); rerun with --resume once it is back", file=sys.stderr)
        if not address and not os.environ.get("RAY_ADDRESS"):
            ray.shutdown()
