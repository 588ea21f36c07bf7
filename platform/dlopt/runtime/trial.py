"""One Tune trial: the sampled config becomes a concrete spec (dlopt.spec.plan.Plan.trial_spec),
then the training loop runs.

A 1-worker trial runs the loop in the trial's own process (dlopt.runtime.worker.fit_in_trial):
no TorchTrainer, metrics and checkpoints straight to `ray.tune.report`. A multi-worker trial
follows the Ray Train V2 pattern: the Tune function trial builds a TorchTrainer itself and
forwards rank 0's reports to Tune through `TuneReportCallback` (under PBT, through a
`CheckpointForwarder`, which carries the checkpoint too). The trial and its workers get the
spec as JSON and the teachers' files (docs/architecture.md, "Only JSON crosses processes").
The trial is the Ray entry point: the one place that reads the test-only fault variables
(`Faults.from_env`, dlopt.train.faults) and hands the hook down, to its loop or, as JSON,
to its workers.
"""
from __future__ import annotations

import time
from typing import Optional

from dlopt.artifact.teachers import TeacherPayloads
from dlopt.runtime import ray_compat
from dlopt.spec.plan import Plan
from dlopt.spec.report import CHECKPOINT_PATH

# Tune refuses a zero-resource trial; a trial that only waits on its TorchTrainer takes this.
TRIAL_DRIVER_CPU = 0.001
# how long a stopping PBT trial waits for its Train controller's own abort before killing it
ABORT_TIMEOUT_S = 30.0


def runs_in_trial(spec) -> bool:
    """One worker: run the loop in the trial itself (dlopt.runtime.worker.fit_in_trial)."""
    return spec.resources.num_workers == 1 and spec.resources.in_trial


def worker_resources(spec) -> dict[str, float]:
    """One worker's bundle: its CPUs, `resources.gpus_per_worker` GPUs (1 when unset) with
    use_gpu, and `resources.memory_per_worker_gb` as Ray's `memory` resource (bytes) when set.
    A GPU fraction lets Ray pack several 1-worker trials on one GPU (Ray sets each trial's
    CUDA_VISIBLE_DEVICES to the shared GPU); docs/architecture.md, "GPU resources"."""
    res = spec.resources
    bundle = {"CPU": res.cpus_per_worker, **({"GPU": res.worker_gpus} if res.use_gpu else {})}
    if res.memory_per_worker_gb is not None:
        bundle["memory"] = float(int(res.memory_per_worker_gb * 2**30))
    return bundle


def trial_resources(spec) -> dict[str, float]:
    """What the Tune trial itself reserves: the worker's share in-trial, else next to nothing."""
    if runs_in_trial(spec):
        return worker_resources(spec)
    return {"CPU": TRIAL_DRIVER_CPU}


def scaling_config(spec):
    """The TorchTrainer's workers of a multi-worker (or in_trial=False) trial."""
    from ray.train import ScalingConfig

    res = spec.resources
    return ScalingConfig(num_workers=res.num_workers, use_gpu=res.use_gpu,
                         resources_per_worker=worker_resources(spec),
                         placement_strategy="SPREAD" if res.placement == "spread" else "PACK")


def make_trial_fn(plan: Plan, storage_path: str, teachers: Optional[TeacherPayloads] = None):
    """The Tune function trial. `teachers`: distillation teachers' files fetched by the driver
    (dlopt.registry.teachers), handed to this trial's loop (in-trial) or its workers."""

    def dlopt_trial(config: dict) -> None:
        from ray import tune
        from ray.train import CheckpointConfig, FailureConfig, RunConfig
        from ray.train.torch import TorchTrainer
        from ray.tune.integration.ray_train import TuneReportCallback

        # here, in the trial: the driver that builds this function never loads torch for it
        from dlopt.runtime import streaming
        from dlopt.runtime.worker import fit_in_trial, train_loop_per_worker
        from dlopt.train.faults import Faults

        spec = plan.trial_spec(config)
        faults = Faults.from_env()  # test-only; None unless a DLOPT_FAULT_* variable is set
        if runs_in_trial(spec):
            fit_in_trial(spec, teachers or {}, faults)
            return
        res = spec.resources
        trial_id = tune.get_context().get_trial_id()
        loop_config = {"spec": spec.model_dump(mode="json"), "teachers": teachers or {},
                       "faults": faults.to_json() if faults else None}
        run_name, forward = f"train-{trial_id}", None
        if spec.search.scheduler == "pbt":  # PBT clones Tune checkpoints: see pbt_setup
            loop_config, run_name, forward = pbt_setup(loop_config, run_name)
        datasets = {}
        if spec.data.source is not None:  # streamed to the workers (dlopt.runtime.streaming)
            loop_config["stream"], datasets = stream_config(spec)
        trainer = TorchTrainer(
            train_loop_per_worker,
            train_loop_config=loop_config,
            scaling_config=scaling_config(spec),
            datasets=datasets or None,
            **({"dataset_config": streaming.data_config(spec)} if datasets else {}),
            run_config=RunConfig(
                name=run_name,
                storage_path=storage_path,
                callbacks=[forward.callback if forward else TuneReportCallback()],
                failure_config=FailureConfig(max_failures=res.max_failures),
                checkpoint_config=CheckpointConfig(num_to_keep=2),
            ),
        )
        if forward is not None:
            forward.fit_and_report(trainer)
            return
        trainer.fit()
        wait_until_tune_took_last_report()

    return dlopt_trial


def stream_config(spec) -> tuple[dict, dict]:
    """What a streamed source's workers need (rows, classes, input shape, the training
    statistics), as JSON, and the train and val Ray datasets for the TorchTrainer (none
    where each rank reads its own files: dlopt.runtime.streaming.uses_rank_loader)."""
    # in the trial process only: loads torch (docs/architecture.md, "Streamed data sources")
    from dlopt.runtime import streaming

    shape, transform, datasets = streaming.source_splits(spec)
    return {"shape": shape.to_json(), "transform": transform.to_json()}, datasets


def wait_until_tune_took_last_report(poll_s: float = 0.05, settle_s: float = 1.0) -> None:
    """Work around a Ray 2.60 deadlock between TuneReportCallback and a returning trial.

    The Train controller hands each report to the trial through a 1-slot actor queue that
    the trial's main thread drains. If the trial function returns while the final report is
    still in that queue, Tune's end-of-trial marker takes the 1-slot local result queue
    first, and the main thread then blocks forever putting the final report into it (seen
    under load: the job hung after the final report, stack in `_TrainSession.report`). So
    the trial returns only after the main thread has taken the last report. The queue is
    Ray's private session attribute (dlopt.runtime.ray_compat.train_report_queue); without
    it (another Ray version) this does nothing.
    """
    import time

    queue = ray_compat.train_report_queue()
    if queue is None:
        return
    while not queue.empty():
        time.sleep(poll_s)
    time.sleep(settle_s)  # the taken item still has to reach the local queue


# ------------------------------------------------------------------ PBT with a TorchTrainer
# PBT clones a Tune checkpoint from a top trial into a bottom one, but TuneReportCallback
# forwards only metrics to Tune (the Train checkpoint stays a path in the metrics). Under PBT
# the trial therefore runs the trainer in a thread, receives (metrics, checkpoint) from a Train
# callback through a queue, and reports both with `tune.report`, which copies the checkpoint
# into the trial's Tune storage. On restart (after a PBT pause or exploit) `tune.get_checkpoint()`
# is the checkpoint to continue from (its own, or the cloned trial's). Train V2 refuses the
# deprecated `resume_from_checkpoint`, so its location goes to the workers in the loop config
# (`resume_from`), and the Train run gets a fresh name: Train V2 would otherwise restore the
# trial's previous run of the same name from storage and ignore the clone.
# (1-worker trials run in-trial, dlopt.runtime.worker.fit_in_trial, and need none of this.)
def checkpoint_uri(checkpoint) -> str:
    """A checkpoint's location as one string a worker can open (`ray.train.Checkpoint(uri)`)."""
    import pyarrow.fs

    fs = checkpoint.filesystem
    if fs is None or isinstance(fs, pyarrow.fs.LocalFileSystem):
        return checkpoint.path
    return f"{fs.type_name}://{checkpoint.path}"


class CheckpointForwarder:
    """Train controller -> trial: rank 0's metrics with the checkpoint, reported to Tune."""

    def __init__(self):
        from ray.train import UserCallback
        from ray.util.queue import Queue

        self.queue = queue = Queue(maxsize=1, actor_options={"num_cpus": 0})
        self.controller = None

        class Forward(UserCallback):
            def after_report(self, run_context, metrics, checkpoint):
                import ray

                item = dict(metrics[0])
                if checkpoint is not None:
                    item[CHECKPOINT_PATH] = checkpoint.path  # as TuneReportCallback does
                # this runs in the Train controller: its own handle lets the trial abort it
                queue.put((item, checkpoint, ray.get_runtime_context().current_actor))

        self.callback = Forward()

    def abort(self) -> None:
        """Stop the Train run (workers and their placement group) before the trial exits.

        PBT pauses every trial at a perturbation step and Tune ends the paused trial (its
        process, or with actor reuse only its thread). The controller may outlive it, and its
        placement group is only removed by
        Ray's PlacementGroupCleaner, which needs the state API (dashboard, one Ray instance
        per machine); where that fails, the restarted trial waits forever for its workers.
        The controller's own abort removes them at once.

        The controller runs `after_report` (`Forward`'s queue.put) inside its event loop, so
        a put waiting on the full queue blocks the loop and with it the abort (seen with
        py-spy: a 2-worker PBT sweep hung, its controller in `Queue.put` and the abort never
        run): the queue is drained while the abort waits, and the controller is killed if it
        still has not ended after ABORT_TIMEOUT_S."""
        import ray

        controller, self.controller = self.controller, None
        if controller is None:
            return
        done = controller.abort.remote()
        deadline = time.monotonic() + ABORT_TIMEOUT_S
        while not ray.wait([done], timeout=0.2)[0]:
            self.drain()
            if time.monotonic() > deadline:
                ray.kill(controller)
                break

    def drain(self) -> None:
        """Drop whatever the controller has queued: the trial is stopping and will not report it."""
        try:
            while True:
                self.queue.get_nowait()
        except Exception:  # noqa: BLE001 (ray.util.queue.Empty when drained; the queue gone)
            pass

    def fit_and_report(self, trainer) -> None:
        import atexit
        import queue as queue_mod
        import threading

        from ray import tune

        failure: list[BaseException] = []

        def fit():
            try:
                trainer.fit()
            except BaseException as err:  # noqa: BLE001 (re-raised in the trial below)
                failure.append(err)

        thread = threading.Thread(target=fit, name="dlopt-pbt-fit", daemon=True)
        thread.start()
        # Tune may end this process without unwinding the trial thread: abort at exit too.
        atexit.register(self.abort)
        while thread.is_alive() or not self.queue.empty():
            try:
                metrics, checkpoint, self.controller = self.queue.get(timeout=0.2)
            except queue_mod.Empty:
                continue
            try:
                tune.report(metrics, checkpoint=None if checkpoint is None else tune.Checkpoint(
                    path=checkpoint.path, filesystem=checkpoint.filesystem))
            except BaseException:  # Tune stops the trial (PBT pause, ASHA stop): SystemExit
                self.abort()
                raise
        thread.join()
        self.controller = None  # finished: nothing to abort
        atexit.unregister(self.abort)
        if failure:
            raise failure[0]


def pbt_setup(loop_config: dict, run_name: str):
    """Loop config, Train run name and forwarder of a PBT trial (see the note above)."""
    import uuid

    from ray import tune

    start = tune.get_checkpoint()
    if start is not None:
        loop_config = {**loop_config, "resume_from": checkpoint_uri(start)}
        run_name = f"{run_name}-{uuid.uuid4().hex[:6]}"
    return loop_config, run_name, CheckpointForwarder()
