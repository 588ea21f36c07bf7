"""Ray entry points: adapt the plain loop to a Ray Train worker, or to the Tune trial itself.

Only JSON crosses the process boundary (docs/architecture.md, "Only JSON crosses
processes"): the worker re-validates the spec. Both entry points run the same `fit`; they
differ only in where `report` sends metrics and checkpoints (Ray Train's controller, or Tune
directly) and where a restart resumes from. This module runs in trial and worker processes
only (dlopt.runtime.trial imports it there), so importing torch through the loop is fine.
What the trial hands down besides the spec: the distillation teachers' files (for the Distill
stage) and the test-only fault hook (dlopt.train.faults), never read from the environment here.
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Callable, Optional

from dlopt.artifact.teachers import TeacherPayloads
from dlopt.ml import collectives
from dlopt.runtime import streaming
from dlopt.spec import Experiment
from dlopt.spec.report import FINAL, REPORT_SECONDS, WORKER_NODES
from dlopt.train.faults import Faults
from dlopt.train.loop import CHECKPOINT_FILE, TrialCheckpoint, fit, load_checkpoint


def resume_from(checkpoint, faults: Optional[Faults] = None) -> Optional[TrialCheckpoint]:
    """The loop's checkpoint inside a Ray checkpoint, or None (fresh start). FSDP and pipeline:
    every rank's part, merged by Ray into its dir, is copied out with it (`sharded`)."""
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as d:
        if (Path(d) / CHECKPOINT_FILE).exists():
            resume = load_checkpoint(Path(d))
            if faults is not None:
                faults.resumed(resume.epoch)
            return resume
    return None


def reporter(send: Callable, checkpoint_cls, faults: Optional[Faults] = None) -> Callable:
    """The loop's `report(metrics, write)` on top of a Ray `send(metrics, checkpoint)`.

    Platform overhead made visible: each report carries `REPORT_SECONDS`, how long the
    previous send blocked (checkpoint write + persist + waiting on Ray).
    """
    blocked: list[float] = []

    def report(metrics: dict, write=None) -> None:
        if blocked:
            metrics = {**metrics, REPORT_SECONDS: blocked[-1]}
        t0 = time.perf_counter()
        if write is None:
            send(metrics, None)
        else:
            with tempfile.TemporaryDirectory() as d:
                write(Path(d))
                send(metrics, checkpoint_cls.from_directory(d))
        blocked.append(time.perf_counter() - t0)
        if write is not None and faults is not None:
            faults.after_report(metrics, "train")  # test-only SIGKILL hook

    return report


def placement_report(world: int) -> dict:
    """Where the DDP ranks ran, for the final report: Ray node id of each rank, and how many
    distinct nodes (shows `Resources.placement` "spread" at work). All ranks must call it."""
    import ray

    nodes = [ray.get_runtime_context().get_node_id()] * world
    if world > 1:
        nodes = collectives.gather_objects(nodes[0])
    return {WORKER_NODES: ",".join(nodes), "num_nodes": len(set(nodes))}


def freeze_start_up_objects() -> None:
    """Collect once, then move every object alive now (the imported modules of torch, Ray,
    dlopt, ...) out of the garbage collector's reach (`gc.freeze`), before the loop starts.

    Why: a full collection walks every tracked object, and one came due inside the training
    loop, where it stalled one epoch of a 1-worker in-trial trial by ~170-210 ms (390-410k
    objects; benchmarks/inmemory_regression.py measured the fitted epoch 1.30x of main
    before issue 27, whose trial process crossed the threshold outside the timed epochs).
    Objects the run makes later are collected as before. Called only in Ray's trial and
    worker processes, which dlopt owns."""
    import gc

    gc.collect()
    gc.freeze()


def train_loop_per_worker(config: dict) -> None:
    """One Ray Train worker of a TorchTrainer (DDP rank `rank` of `world`)."""
    import ray.train
    import ray.train.torch

    spec = Experiment.model_validate(config["spec"])
    faults = Faults.from_json(config.get("faults"))
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    placed = placement_report(world)
    report = reporter(lambda m, c: ray.train.report({**m, **placed} if m.get(FINAL) else m,
                                                    checkpoint=c), ray.train.Checkpoint, faults)
    device = "cuda" if spec.resources.use_gpu else "cpu"
    wrap = ray.train.torch.prepare_model if world > 1 else (lambda m: m)
    if device == "cuda":
        device = str(ray.train.torch.get_device())
    # This run's own latest checkpoint (a worker-group restart) wins; else, under PBT, the
    # checkpoint the trial continues from, maybe a cloned trial's (dlopt.runtime.trial.pbt_setup).
    resume = resume_from(ray.train.get_checkpoint(), faults)
    if resume is None and config.get("resume_from"):
        resume = resume_from(ray.train.Checkpoint(config["resume_from"]), faults)
    data = shard_datasets(spec, config)
    freeze_start_up_objects()
    fit(spec, report, rank=rank, world=world, resume=resume, wrap=wrap, device=device,
        teachers=config.get("teachers") or {}, faults=faults, data=data)


def shard_datasets(spec, config: dict):
    """A streamed source's splits on this worker: its shard of train and the full val, from
    the datasets the trial gave the TorchTrainer or, for an image folder, read by this rank
    itself (dlopt.runtime.streaming); None without a source."""
    if not config.get("stream"):
        return None
    import ray.train

    from dlopt.ml.streams import Shape
    from dlopt.ml.transform import InputTransform

    stream = config["stream"]
    if streaming.uses_rank_loader(spec):  # this rank reads its own files, no Ray dataset
        ctx = ray.train.get_context()
        return streaming.rank_datasets(spec, Shape.from_json(stream["shape"]),
                                       InputTransform.from_json(stream["transform"]),
                                       ctx.get_world_rank(), ctx.get_world_size())
    return streaming.worker_datasets(spec, Shape.from_json(stream["shape"]),
                                     InputTransform.from_json(stream["transform"]),
                                     ray.train.get_dataset_shard("train"),
                                     ray.train.get_dataset_shard("val"))


def fit_in_trial(spec, teachers: Optional[TeacherPayloads] = None,
                 faults: Optional[Faults] = None) -> None:
    """A 1-worker trial: the same loop in the Tune trial's own process, no TorchTrainer.

    Why: a TorchTrainer costs a controller actor, a worker actor and a placement group per
    trial (~15 s of start-up on 2 cores) and each `ray.train.report` waits for the
    controller's poll. Here metrics and checkpoints go straight to `ray.tune.report`; Tune
    persists each checkpoint into the trial directory. A failed trial is retried by Tune
    (`tune.RunConfig(failure_config=FailureConfig(max_failures))`, set by dlopt.driver.sweep)
    and resumes from its latest checkpoint via `tune.get_checkpoint()` - the same semantics as
    Ray Train's worker-group restart. PBT's exploit also restores through it.
    """
    from ray import tune

    report = reporter(lambda m, c: tune.report(m, checkpoint=c), tune.Checkpoint, faults)
    device = "cuda" if spec.resources.use_gpu else "cpu"  # Tune sets CUDA_VISIBLE_DEVICES
    resume = resume_from(tune.get_checkpoint(), faults)
    data = streaming.in_trial_datasets(spec)  # a streamed source read by Ray Data here
    freeze_start_up_objects()
    fit(spec, report, rank=0, world=1, resume=resume, device=device, teachers=teachers,
        faults=faults, data=data)
