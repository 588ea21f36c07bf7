"""One Tune trial: resolve the sampled config into a concrete spec and fit a TorchTrainer.

This is the Ray Train V2 pattern: a Tune function trial builds the trainer itself and
forwards worker reports to Tune through `TuneReportCallback`.
"""
from __future__ import annotations

from typing import Any, Optional


def assignment_from_config(config: dict, tables: dict[str, list]) -> dict[str, Any]:
    """Tune config -> {spec path: value}; non-scalar choices travel as indices into `tables`."""
    return {path: (tables[path][value] if path in tables else value) for path, value in config.items()}


# Tune refuses a zero-resource trial; a trial that only waits on its TorchTrainer takes this.
TRIAL_DRIVER_CPU = 0.001


def runs_in_trial(spec) -> bool:
    """One worker: run the loop in the trial itself (dlopt.train.worker.fit_in_trial)."""
    return spec.resources.num_workers == 1 and spec.resources.in_trial


def trial_resources(spec) -> dict[str, float]:
    """What the Tune trial itself reserves: the worker's share in-trial, else next to nothing."""
    res = spec.resources
    if runs_in_trial(spec):
        return {"CPU": res.cpus_per_worker, **({"GPU": 1} if res.use_gpu else {})}
    return {"CPU": TRIAL_DRIVER_CPU}


def make_trial_fn(base_json: dict, tables: dict[str, list], storage_path: str,
                  teachers: Optional[dict] = None):
    """`teachers`: distillation teachers' files fetched by the driver (dlopt.teachers)."""

    def dlopt_trial(config: dict) -> None:
        from ray import tune
        from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
        from ray.train.torch import TorchTrainer
        from ray.tune.integration.ray_train import TuneReportCallback

        from dlopt.spec import resolve
        from dlopt.train.worker import fit_in_trial, train_loop_per_worker

        spec = resolve(base_json, assignment_from_config(config, tables))
        from dlopt import teachers as teachers_mod

        teachers_mod.install(teachers or {})
        if runs_in_trial(spec):
            fit_in_trial(spec)
            return
        res = spec.resources
        trial_id = tune.get_context().get_trial_id()
        trainer = TorchTrainer(
            train_loop_per_worker,
            train_loop_config={"spec": spec.model_dump(mode="json"), "teachers": teachers or {}},
            scaling_config=ScalingConfig(
                num_workers=res.num_workers, use_gpu=res.use_gpu,
                resources_per_worker={"CPU": res.cpus_per_worker, **({"GPU": 1} if res.use_gpu else {})},
                placement_strategy="SPREAD" if res.placement == "spread" else "PACK",
            ),
            run_config=RunConfig(
                name=f"train-{trial_id}",
                storage_path=storage_path,
                callbacks=[TuneReportCallback()],
                failure_config=FailureConfig(max_failures=res.max_failures),
                checkpoint_config=CheckpointConfig(num_to_keep=2),
            ),
        )
        trainer.fit()
        wait_until_tune_took_last_report()

    return dlopt_trial


def wait_until_tune_took_last_report(poll_s: float = 0.05, settle_s: float = 1.0) -> None:
    """Work around a Ray 2.60 deadlock between TuneReportCallback and a returning trial.

    The Train controller hands each report to the trial through a 1-slot actor queue that
    the trial's main thread drains. If the trial function returns while the final report is
    still in that queue, Tune's end-of-trial marker takes the 1-slot local result queue
    first, and the main thread then blocks forever putting the final report into it (seen
    under load: the job hung after the final report, stack in `_TrainSession.report`). So
    the trial returns only after the main thread has taken the last report. Uses Ray's
    private session attribute; without it (another Ray version) this does nothing.
    """
    import time

    from ray.train._internal.session import get_session

    queue = getattr(get_session(), "_inter_actor_queue", None)
    if queue is None:
        return
    while not queue.empty():
        time.sleep(poll_s)
    time.sleep(settle_s)  # the taken item still has to reach the local queue
