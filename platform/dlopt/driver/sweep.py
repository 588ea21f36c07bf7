"""`dlopt run` on the driver: an Experiment becomes a Ray Tune sweep tracked in MLflow.

`run` reads top to bottom as the steps of a sweep: check what can be checked before Ray
starts, find the sweep to resume, start Ray while the MLflow store opens, open the parent
run, build the Tuner (new, or restored by --resume), fit, then finalize on the driver:
select, register, review (docs/architecture.md, "Registration after the sweep"). Ray's
search objects and the trial function come from dlopt.runtime; this is the only module
that starts Ray.
"""
from __future__ import annotations

import logging
import math
import os
import re
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, Any, Optional, Sequence, Union

import ray
from ray import tune

from dlopt.driver import environment, preflight
from dlopt.driver.context import Sweep
from dlopt.driver.extend import extension_plan, latest_extension_dir
from dlopt.driver.finalize import TrialSummary, finalize, preload, stop_reason
from dlopt.driver.progress import ProgressCallback
from dlopt.driver.provenance import source_tags
from dlopt.driver.warmstart import earlier_trials
from dlopt.registry import teachers
from dlopt.registry.versions import RegisteredModel
from dlopt.runtime import ray_compat
from dlopt.runtime import storage as ray_storage
from dlopt.runtime.checkpoints import DroppedCheckpoints
from dlopt.runtime.search import (
    WarmTrial,
    search_algorithm,
    sweep_stopper,
    to_ray_space,
    trial_scheduler,
    tune_config_metric,
)
from dlopt.runtime.trial import (
    TRIAL_DRIVER_CPU,
    make_trial_fn,
    runs_in_trial,
    trial_resources,
)
from dlopt.spec import Experiment
from dlopt.spec.extend import extending, extension_size, onto
from dlopt.spec.load import SpecError
from dlopt.spec.plan import Plan, make_plan
from dlopt.tracking.callback import MlflowCallback
from dlopt.tracking.store import SweepFinished, Tracker, finished_sweep
from dlopt.tracking.uris import (
    absolute_tracking_uri,
    artifact_root,
    check_reachable,
    check_writable,
    default_storage,
    default_tracking_uri,
    in_ray_job,
)

log = logging.getLogger(__name__)


@dataclass
class SweepResult:
    """What a sweep did, in dlopt's terms, and Ray's own view of it.

    `trials` and `best` are dlopt's summaries (status ok | diverged | error, metrics, MLflow
    run id, checkpoint); `registered` the model versions registered after the sweep (the
    chosen one first), each with its test-split metrics.
    `result_grid` is the `ray.tune.ResultGrid` that `Tuner.fit` returned: every trial's
    `ray.tune.Result` (metrics, metrics_dataframe, checkpoint, error, path), for anything
    dlopt's summary leaves out.
    """

    plan: Plan
    parent_run_id: str
    experiment_id: str
    tracking_uri: str
    storage_path: str
    trials: list[TrialSummary]
    best: Optional[TrialSummary]
    registered: list[RegisteredModel] = field(default_factory=list)
    wall_seconds: float = 0.0
    result_grid: Any = None
    stop_reason: str = ""  # why the sweep ended (dlopt.driver.finalize.stop_reason)


def run(spec: Experiment, *, address: Optional[str] = None, tracking_uri: Optional[str] = None,
        storage: Optional[str] = None, resume: bool = False, verbose: bool = False,
        quiet: bool = False, progress: Union[bool, IO[str]] = True,
        source_file: Optional[str] = None, extend: Optional[int] = None) -> SweepResult:
    """Run the sweep `spec` describes and return its `SweepResult` (with Ray's ResultGrid).

    address: a Ray cluster (default: RAY_ADDRESS; else a local Ray, started and stopped here).
    tracking_uri: MLflow (default: MLFLOW_TRACKING_URI, else sqlite:///mlflow.db here; inside
        a Ray job ~/dlopt/mlflow.db, since Ray deletes the job's working directory).
    storage: Ray's storage path or URI (default ./ray_results; inside a Ray job ~/ray_results).
    resume: continue the latest sweep of this experiment under `storage`, a folder or a URI
        such as s3://bucket/prefix (its latest extension, where one was interrupted).
    extend: N more trials for the latest sweep of this experiment, under its MLflow parent
        run, in a Tune run directory of their own (dlopt.driver.extend).
    verbose: Ray's own logs on this driver and Tune's progress output.
    quiet: hide every warning and Ray's and MLflow's chatter in this whole process; the CLI's
        choice (without it, the caller's warnings filters and loggers are left alone).
    progress: a stream for the live table of trials (True, the default like Tune's own
        reporter: stdout; False: none).
    source_file: the experiment file, recorded as the run's source (default: the script).

    Raises SpecError when the run could never succeed (found before Ray starts),
    SweepFinished when `resume` finds the sweep already finished; any other failure of the
    sweep propagates.
    """
    t0 = time.perf_counter()
    address = address or os.environ.get("RAY_ADDRESS")
    # every process-wide change below is undone when the sweep ends (environment.py)
    with environment.sweep_environment(quiet) as scoped:
        # Every relative location is resolved here, once, before any thread or Ray starts
        # (a Ray job's working directory can be re-unpacked under the driver while it runs).
        tracking_uri = absolute_tracking_uri(tracking_uri or default_tracking_uri())
        scoped.use_store(tracking_uri)  # before any connection: MLflow's URI, HTTP, SQLite WAL
        storage_path = storage_location(storage)
        if in_ray_job():
            check_writable(tracking_uri, storage_path)
        teacher_files = check_before_ray(spec, tracking_uri, address)
        plan = make_plan(spec, cluster_gpus=None if address else preflight.local_gpus(spec))
        if extend is not None:  # a grid cannot be extended: exit 2 before anything starts
            plan = extending(plan, extend)
        environment.set_state_period(os.environ, plan.trials)
        plan, restore_dir = sweep_to_resume(plan, storage_path, tracking_uri) if resume \
            else (plan, None)
        # an earlier sweep's trials for the sampler, read before Ray starts (a restored
        # sweep's searcher already holds them); an extension's sampler learns its own too
        warm = earlier_trials(plan, tracking_uri) if restore_dir is None else []
        if plan.extend and restore_dir is None:
            plan, own = extension_plan(plan, tracking_uri)
            warm = [*warm, *own]
        # user, source (the experiment file), git commit, and the command that reproduces it
        source = source_tags(sys.argv, spec_file=source_file)
        environment.leave_job_dir()  # from here nothing reads the job's working directory
        tracker, plan = start_ray_and_store(spec, plan, storage_path, tracking_uri, address, verbose)
        tags = {"dlopt.sweep": plan.sweep_name, **source}
        # every queued MLflow write is journaled on local disk (beside Tune's experiment
        # state in local storage), so a killed driver loses none: --resume replays them
        # (dlopt.tracking.journal, dlopt.runtime.storage.journal_dir)
        tracker.open_journal(ray_storage.journal_dir(storage_path, plan.tune_name))
        tracker.start_parent(plan, tags)
        if plan.extend:
            tracker.set_tag(tracker.parent_id, "dlopt.extension", plan.tune_name)
        tracking, callbacks, dropped = make_callbacks(plan, tracker, tags, storage_path, progress)
        if dropped is not None:
            scoped.enter_context(ray_compat.checkpoint_deletes_to(dropped.drop))
        trainable = make_trainable(plan, str(storage_path), teacher_files)
        tuner = make_tuner(plan, trainable, run_config(plan, spec, storage_path, callbacks, verbose),
                           restore_dir, warm)
        sweep = Sweep(plan=plan, tracker=tracker, storage_path=str(storage_path), started=t0)
        return fit_and_finalize(tuner, sweep, stop_ray=not address, tracking=tracking,
                                dropped=dropped)


def make_callbacks(plan: Plan, tracker: Tracker, tags: dict, storage_path,
                   progress: Union[bool, IO[str]]):
    """Tune's callbacks for this sweep: the MLflow writer, the live view (unless `progress` is
    False) and, with local storage, the collector of checkpoints Tune drops; returns
    (the MLflow callback, every callback, the collector or None)."""
    remote = str(storage_path) if ray_storage.is_remote(storage_path) else None
    tracking = MlflowCallback(tracker, plan, tags, storage=remote)  # checkpoints tagged as URIs
    callbacks = [tracking]
    if progress:
        callbacks.append(ProgressCallback(plan, stream=sys.stdout if progress is True else progress))
    dropped = None
    if "://" not in str(storage_path):
        # Tune saves its state on its period only; the checkpoints it drops are deleted
        # once no saved state names them (dlopt.runtime.checkpoints)
        dropped = DroppedCheckpoints()
        callbacks.append(dropped)
    return tracking, callbacks, dropped


# ------------------------------------------------------------------ before Ray starts
def check_before_ray(spec: Experiment, tracking_uri: str, address: Optional[str]) -> dict:
    """Fail fast where the run could never succeed; returns the distillation teachers' files
    (versions pinned and files read here, on the driver; workers get the files)."""
    check_reachable(tracking_uri)
    preflight.check(spec, tracking_uri, address)
    return teachers.fetch(spec.model_dump(mode="json"), tracking_uri)


def storage_location(storage: Optional[str]) -> Union[Path, str]:
    """Ray's storage: an absolute local path (default ./ray_results, or ~/ray_results inside a
    Ray job: dlopt.tracking.uris.default_storage), or a URI checked, its endpoint written in
    and an s3:// bucket asked once (dlopt.runtime.storage; SpecError, exit 2, before Ray)."""
    if not (storage and "://" in storage):
        return Path(storage).expanduser().resolve() if storage else default_storage()
    try:
        uri = ray_storage.resolve(storage)
        ray_storage.check_reachable(uri)
        return uri
    except ray_storage.StorageProblem as err:
        raise SpecError([f"--storage: {err}"]) from None


def latest_sweep_dir(storage: Union[Path, str], name: str) -> Union[Path, str, None]:
    """The newest `NAME-YYYYmmdd-HHMMSS` sweep directory Tune can restore (not `NAME-x-...`),
    in local storage or at a URI (read through pyarrow: dlopt.runtime.storage)."""
    stamp = re.compile(re.escape(name) + r"-\d{8}-\d{6}$")
    found = ray_storage.restorable(storage, stamp.match)
    return ray_storage.child(storage, max(found)) if found else None


def sweep_to_resume(plan: Plan, storage_path,
                    tracking_uri: str) -> tuple[Plan, Union[Path, str, None]]:
    """--resume: the plan under the resumed sweep's name and the sweep directory to restore,
    or `plan` as it is and None to start anew.

    The same sweep name, so the MLflow parent run (tag dlopt.sweep) and its child runs (tag
    dlopt.trial_id) are found and reused instead of duplicated. An interrupted extension
    (`--extend`) is resumed from its own directory; with `--extend` and none to resume, a
    new extension starts (its plan: dlopt.driver.extend.extension_plan)."""
    restore_dir = latest_sweep_dir(storage_path, plan.experiment)
    if restore_dir is None:
        log.warning("note: no sweep of %r under %s to resume; starting a new one",
                    plan.experiment, storage_path)
        return plan, None
    sweep_name = ray_storage.base_name(restore_dir)
    extension = latest_extension_dir(storage_path, sweep_name)
    done = finished_sweep(tracking_uri, plan.tracking_experiment, sweep_name)
    if plan.extend and extension is None:
        return plan, None  # no extension to resume: it starts now
    if done:
        raise SweepFinished(f"sweep {sweep_name} already finished (MLflow parent run "
                            f"{done}); nothing to resume")
    if extension is not None:
        ext_name = ray_storage.base_name(extension)
        plan = onto(extending(plan, extension_size(ext_name, sweep_name)),
                    sweep_name, 0, tune_dir=ext_name)
        log.info("resuming sweep %s: its extension %s", plan.sweep_name, ext_name)
        return plan, extension
    plan = replace(plan, sweep_name=sweep_name)
    log.info("resuming sweep %s", plan.sweep_name)
    return plan, restore_dir


# ------------------------------------------------------------------ Ray start-up
def local_cpus_needed(plan: Plan) -> int:
    per_trial = plan.resources_per_trial["CPU"] + TRIAL_DRIVER_CPU
    return max(os.cpu_count() or 1, math.ceil(per_trial * plan.max_concurrent_trials))


def cluster_plan(plan: Plan) -> Plan:
    """With --address: the plan's concurrency from the cluster's CPUs and GPUs as Ray counts
    them now, not this driver's (the plan is frozen: a new one, before the Tuner is built).
    A local run's plan counts this machine's GPUs (preflight.local_gpus) from the start."""
    now = ray.cluster_resources()
    return plan.on_cluster(now.get("CPU", 0.0), now.get("GPU", 0.0))


def init_ray(plan: Plan, address: Optional[str], verbose: bool) -> None:
    kwargs = dict(runtime_env=environment.runtime_env(), log_to_driver=verbose,
                  logging_level=logging.INFO if verbose else logging.ERROR,
                  ignore_reinit_error=True)
    if address:
        ray.init(address=address, **kwargs)
    else:
        ray.init(num_cpus=local_cpus_needed(plan), include_dashboard=False, **kwargs)


def start_ray_and_store(spec: Experiment, plan: Plan, storage_path, tracking_uri: str,
                        address: Optional[str], verbose: bool) -> tuple[Tracker, Plan]:
    """Start (or join) Ray while the MLflow store opens; returns the Tracker and the plan (with
    --address, its concurrency from the cluster's resources: cluster_plan). Opening it (a new SQLite file runs
    its schema migrations, ~2-3 s of CPU) overlaps Ray's start-up, which mostly waits on
    its own processes.

    Inside a Ray job the store opens first: MLflow reads the working directory while opening
    a store, and joining the cluster makes every node install the job's runtime_env, which
    re-unpacks the job's working directory in place wherever nodes share Ray's temp dir
    (several `ray start` on one host): the driver's working directory is then gone."""
    if not str(storage_path).startswith("s3://"):
        # AWS credentials travel in trial runtime_envs (logged in plain text by Ray) only
        # where storage needs them; otherwise trials inherit the environment like any process.
        ray_compat.drop_propagated_env_vars("AWS_")
    root = artifact_root(tracking_uri)
    if in_ray_job():
        tracker = Tracker(tracking_uri, plan.tracking_experiment, root)
        init_ray(plan, address, verbose)
    else:
        with ThreadPoolExecutor(1, thread_name_prefix="dlopt-mlflow-open") as pool:
            opening = pool.submit(Tracker, tracking_uri, plan.tracking_experiment, root)
            try:
                init_ray(plan, address, verbose)
            finally:
                tracker = opening.result()
    if address:
        for line in preflight.cluster_warnings(spec):
            log.warning(line)
        plan = cluster_plan(plan)
    return tracker, plan


# ------------------------------------------------------------------ the Tuner
def make_trainable(plan: Plan, storage_path: str, teacher_files: dict):
    """The trial function with the resources each trial reserves.

    A 1-worker trial reserves its worker's CPU/GPU itself (it runs the loop in-trial); a
    multi-worker trial reserves next to nothing and its TorchTrainer asks for workers."""
    return tune.with_resources(
        make_trial_fn(plan, storage_path, teachers=teacher_files),
        lambda config: tune.PlacementGroupFactory([trial_resources(plan.trial_spec(config))]))


def run_config(plan: Plan, spec: Experiment, storage_path, callbacks: list,
               verbose: bool) -> tune.RunConfig:
    # In-trial runs: Tune keeps the last 2 checkpoints (the final one holds the model) and
    # retries a failed trial from its latest checkpoint, as Train's FailureConfig would.
    in_trial = runs_in_trial(spec)
    return tune.RunConfig(
        name=plan.tune_name, storage_path=str(storage_path), callbacks=callbacks,
        verbose=1 if verbose else 0, stop=sweep_stopper(plan),  # stop_when, stop_on_plateau
        # PBT clones another trial's checkpoint some time after it was reported: keep them all
        # (small models) so a clone never finds its source checkpoint deleted.
        checkpoint_config=tune.CheckpointConfig(num_to_keep=None if plan.scheduler == "pbt" else 2),
        failure_config=tune.FailureConfig(max_failures=spec.resources.max_failures if in_trial else 0))


def make_tuner(plan: Plan, trainable, config: tune.RunConfig,
               restore_dir: Union[Path, str, None], warm: Sequence[WarmTrial] = ()) -> tune.Tuner:
    space = to_ray_space(plan)
    if restore_dir is not None and tune.Tuner.can_restore(str(restore_dir)):
        tuner = tune.Tuner.restore(str(restore_dir), trainable=trainable, resume_unfinished=True,
                                   resume_errored=True, param_space=space)
        # this run's callbacks (with this process's MLflow tracker) replace the pickled ones
        ray_compat.set_restored_callbacks(tuner, config.callbacks)
        return tuner
    metric, mode = tune_config_metric(plan)  # None where the searcher holds the metric(s)
    return tune.Tuner(
        trainable,
        param_space=space,
        tune_config=tune.TuneConfig(
            metric=metric, mode=mode,
            search_alg=search_algorithm(plan, warm), scheduler=trial_scheduler(plan),
            time_budget_s=plan.stops.get("time_budget_s"),
            num_samples=plan.num_samples, max_concurrent_trials=plan.max_concurrent_trials,
            # a finished trial's process runs the next one: no new Python, torch, sklearn
            # imports per trial (dlopt.train.loop.fit re-seeds and rebuilds everything)
            reuse_actors=True),
        run_config=config,
    )


# ------------------------------------------------------------------ fit, then finalize
def fit_and_finalize(tuner: tune.Tuner, sweep: Sweep, stop_ray: bool,
                     tracking: Optional[MlflowCallback] = None,
                     dropped: Optional[DroppedCheckpoints] = None) -> SweepResult:
    """Fit, then select, register and review; the parent run ends FINISHED or FAILED and a
    local Ray stops whatever happens."""
    plan, tracker = sweep.plan, sweep.tracker
    status = "FAILED"
    try:
        preload()  # torch for registration, on another thread while the trials run
        try:
            fit_started = time.perf_counter()
            with environment.quick_thread_switches():  # Tune's loop vs the MLflow writer
                grid = tuner.fit()
            stopped = stop_reason(plan, [r.metrics or {} for r in grid],
                                  time.perf_counter() - fit_started)
            if dropped is not None:  # fit's last state save was forced and waited for
                dropped.delete_all()
        finally:
            if tracking is not None:  # its writer thread done: the Tracker is ours alone
                tracking.close()
        tracker.drain()  # writes buffered during an MLflow outage: written, or a clear error
        # From here the driver writes directly (registry, test report, review): each call
        # retries through an outage, bounded like the drain, instead of failing the sweep.
        tracker.direct_writes()
        trials, best, registered = finalize(grid, sweep, stopped)
        status = "FINISHED"
        return SweepResult(plan=plan, parent_run_id=tracker.parent_id,
                           experiment_id=tracker.experiment_id, tracking_uri=tracker.uri,
                           storage_path=sweep.storage_path, trials=trials, best=best,
                           registered=registered, wall_seconds=time.perf_counter() - sweep.started,
                           result_grid=grid, stop_reason=stopped)
    finally:
        tracker.finish_parent(status)
        if not tracker.flush(wait_s=30.0):
            log.error("error: %d MLflow writes could not be made (store unreachable); rerun "
                      "with --resume once it is back", tracker.pending_count)
        tracker.close()  # the journal goes once the store took everything in it
        if stop_ray:
            ray.shutdown()
