"""The training loop: plain PyTorch, read top to bottom (nanoGPT style), one for every strategy.

It knows nothing of Ray or MLflow. The caller passes:
- `report(metrics, write_checkpoint)`: at the epochs dlopt.train.cadence picks (every epoch,
  or coalesced when epochs are much shorter than a report) and once at the end;
  `write_checkpoint` writes this rank's part of a checkpoint into a directory (None where the
  rank has nothing to write); a report carries the unreported epochs before it under
  `spec.report.HISTORY` (docs/architecture.md, "Report protocol");
- `resume`: the `TrialCheckpoint` to continue from, or None;
- `wrap`: turns the model into its DDP form (Ray's prepare_model under Ray Train, identity alone);
- `teachers`: the distillation teachers' files the driver resolved (dlopt.registry.teachers),
  handed to the Distill stage;
- `faults`: a test-only fault-injection hook (dlopt.train.faults), None in production: the
  loop itself reads no environment variable.
What differs between DDP, FSDP and pipeline (how the model is split, how a batch runs, how
the full model is gathered, what a checkpoint holds) is the strategy's (dlopt.train.strategies).
Stages hook in at named events (dlopt.stages.Event; docs/architecture.md, "The training loop
and its events"). `fit` reads top to bottom: `set_up`, `restore`, then per epoch
`train_epoch` and `report_epoch`, then `finish` (compress and save).
"""
from __future__ import annotations

import math
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch

from dlopt.artifact import files as artifact
from dlopt.artifact.teachers import TeacherPayloads
from dlopt.ml import data as data_mod
from dlopt.ml import init as init_mod
from dlopt.ml import collectives, models, optim, schedules
from dlopt.ml.splits import Datasets
from dlopt.ml.streams import is_streamed
from dlopt.ml.devices import check_precision, configure_kernels, model_device, to_device
from dlopt.spec import Experiment
from dlopt.spec.report import DIVERGED, END_TIME, EPOCH, EPOCH_SECONDS, FINAL, HISTORY
from dlopt.stages import Event, Stage, State, catalog, run_event
from dlopt.stages.augment import BatchAugment, build as build_augment
from dlopt.train import cadence as cadence_mod
from dlopt.train import strategies
from dlopt.train.checkpoint import CHECKPOINT_FILE, TrialCheckpoint, load_checkpoint
from dlopt.train.faults import Faults
from dlopt.train.steps import batch_size_for, evaluate, loss_function, predict

__all__ = ["CHECKPOINT_FILE", "Report", "TrialCheckpoint", "batch_size_for", "evaluate",
           "final_metrics", "fit", "load_checkpoint", "loss_function", "predict",
           "save_final_model"]

Report = Callable[[dict, Optional[Callable[[Path], None]]], None]


def _any_rank(flag: bool, world: int, device: str) -> bool:
    """True on every rank if it is true on one: a report is a collective under Ray Train."""
    if world == 1:
        return flag
    return bool(collectives.reduce([float(flag)], device, "max")[0])


@dataclass
class Run:
    """What `set_up` builds once and every later step of `fit` uses."""

    spec: Experiment
    strategy: strategies.Strategy
    state: State
    stages: list[Stage]
    trained: torch.nn.Module  # the module this rank trains (and optimizes)
    optimizer: torch.optim.Optimizer
    scheduler: object  # torch LR scheduler
    sched_every: str  # "step" | "epoch"
    batch_size: int
    loss_fn: Callable
    # training batches only (dlopt.stages.augment); None when the spec augments nothing
    augment: Optional[BatchAugment] = None

    def events(self, event: Event) -> None:
        run_event(self.stages, event, self.state)


def fit(spec: Experiment, report: Report, *, rank: int = 0, world: int = 1,
        resume: Optional[TrialCheckpoint] = None, wrap: Callable = lambda m: m,
        device: str = "cpu", teachers: Optional[TeacherPayloads] = None,
        faults: Optional[Faults] = None, data: Optional[Datasets] = None) -> State:
    """`data`: the splits when the caller built them (a streamed source under Ray,
    dlopt.runtime.streaming); else `dlopt.ml.data.load` here."""
    check_precision(spec.precision, device)  # on the worker, where the GPU is
    configure_kernels(device, spec.resources.deterministic)
    strategy = strategies.pick(spec, rank, world, device, wrap)
    run = set_up(spec, strategy, rank, world, device, teachers, data)
    state = run.state
    start_epoch = restore(run, resume) if resume is not None else 0
    strategy.start(run.optimizer, run.loss_fn)
    cadence = cadence_mod.Cadence(spec.tracking.report_every, spec.epochs,
                                  cadence_mod.scheduler_epochs(spec.search, spec.epochs))
    unreported: list[dict] = []  # epochs since the last report, oldest first

    # --- train
    for epoch in range(start_epoch, spec.epochs):
        t0 = time.perf_counter()
        metrics = train_epoch(run, epoch, t0)
        if not all(math.isfinite(v) for k, v in metrics.items() if k in ("train_loss", "val_loss")):
            report({**metrics, DIVERGED: 1, HISTORY: unreported}, None)
            state.stop = True
            state.run_entries[DIVERGED] = 1
            return state
        run.events(Event.EPOCH_END)
        if faults is not None:
            faults.slow_epoch()  # test-only
        if not _any_rank(cadence.due(epoch + 1, time.perf_counter() - t0, state.stop), world,
                         device):
            unreported.append(metrics)
            continue
        cadence.reported(report_epoch(run, report, epoch, metrics, unreported))
        unreported = []
        if state.stop:
            break
    return finish(run, report, rank)


def set_up(spec: Experiment, strategy: strategies.Strategy, rank: int, world: int,
           device: str, teachers: Optional[TeacherPayloads],
           data: Optional[Datasets] = None) -> Run:
    """Data, model, optimizer, schedule, stages (identical on every rank, except the part of
    the model a pipeline rank trains); ends with the SETUP event on the whole model."""
    torch.manual_seed(spec.seed)
    datasets = data if data is not None else data_mod.load(spec.data, spec.seed)

    def build() -> torch.nn.Module:
        return models.build(spec.model, datasets.input_shape, datasets.out_features)

    model = build()
    init_mod.apply(model, spec.model.init)
    # on the CPU until the strategy places it (FSDP moves only this rank's shards to the device)
    trained = strategy.prepare(model, build)
    optimizer = optim.build(spec.optimizer, trained.parameters())
    shard = (len(datasets.train) // strategy.data_world if is_streamed(datasets.train)
             else math.ceil(len(datasets.train) / strategy.data_world))  # Ray: equal shards
    batch_size = batch_size_for(spec, shard)
    steps_per_epoch = math.ceil(shard / batch_size)
    scheduler, sched_every = schedules.build(spec.schedule, optimizer, spec.epochs, steps_per_epoch)
    state = State(spec=spec, model=model, optimizer=optimizer, datasets=datasets, rank=rank,
                  world=world, device=device, steps_per_epoch=steps_per_epoch,
                  evaluate=lambda m: evaluate(m, datasets.val, datasets.task, spec.precision,
                                              model_device(m)))  # where the model is
    run = Run(spec, strategy, state, catalog.build(spec, teachers), trained, optimizer,
              scheduler, sched_every, batch_size,
              loss_function(datasets.task, spec.regularization.label_smoothing),
              build_augment(spec.regularization.augment, spec.seed, strategy.data_rank,
                            datasets.input_shape, datasets.task, datasets.out_features))
    run.events(Event.SETUP)  # on the whole model: the dense baseline is measured there
    state.model = trained
    return run


def restore(run: Run, resume: TrialCheckpoint) -> int:
    """Model, optimizer, schedule and stage state from the checkpoint; the epoch to go on at."""
    run.strategy.load(resume, run.optimizer)
    run.scheduler.load_state_dict(resume.scheduler)
    # The saved optimizer state carries the old lr/momentum/weight decay; this run's spec
    # wins (PBT resumes a cloned checkpoint with perturbed values). No-op on a plain restart.
    optim.apply_spec(run.optimizer, run.spec.optimizer, run.scheduler)
    for stage, saved in zip(run.stages, resume.stages):
        stage.load_state_dict(saved)
    run.state.step = resume.step
    # a run resumed after its last epoch still needs that epoch's metrics in the final report
    run.state.metrics = dict(resume.metrics)
    return resume.epoch


def train_epoch(run: Run, epoch: int, t0: float) -> dict:
    """One epoch: this rank's batches (DDP/FSDP: its share; pipeline: every batch), each
    forward, backward, optimizer step with the stage events between; then validation."""
    strategy, state, device = run.strategy, run.state, run.state.device
    state.epoch = epoch
    run.trained.train()
    # the loss sum stays on the device (float64, as the host sum was): one sync per epoch
    total, count = torch.zeros((), dtype=torch.float64, device=device), 0
    for i, (x, y) in enumerate(epoch_batches(run, epoch)):
        if run.augment is not None:  # on the device, this batch only (dlopt.stages.augment)
            x, y = run.augment(x, y, epoch, i)
        state.batch = (x, y)
        loss = strategy.train_step(state, x, y, run.events)  # forward, backward, step
        state.step += 1
        run.events(Event.AFTER_STEP)
        lr = run.optimizer.param_groups[0]["lr"]  # the lr this step used (reported per epoch)
        if run.sched_every == "step":
            run.scheduler.step()
        total += loss.double() * len(y)
        count += len(y)
    if run.sched_every == "epoch":
        run.scheduler.step()
    train_loss = strategy.epoch_loss(total / max(count, 1))
    state.metrics = {EPOCH: epoch + 1, "train_loss": train_loss, "lr": lr,
                     **strategy.validate(state.evaluate),
                     EPOCH_SECONDS: time.perf_counter() - t0, END_TIME: time.time()}
    return state.metrics


def epoch_batches(run: Run, epoch: int):
    """This rank's training batches of one epoch, on the device: index batches of the
    in-memory tensors, or its shard of a streamed source, raw rows transformed on the device
    (dlopt.ml.streams; docs/architecture.md, "Streamed data sources")."""
    train, device, strategy = run.state.datasets.train, run.state.device, run.strategy
    if is_streamed(train):
        for x, y in train.batches(run.batch_size, epoch):
            yield train.prepare(to_device(x, device)), to_device(y, device)
        return
    for idx in data_mod.shard_batches(len(train), run.batch_size, strategy.data_rank,
                                      strategy.data_world, run.spec.seed, epoch):
        yield to_device(train.x[idx], device), to_device(train.y[idx], device)


def report_epoch(run: Run, report: Report, epoch: int, metrics: dict,
                 unreported: list[dict]) -> float:
    """Report the epoch (carrying the unreported ones before it) with its checkpoint;
    returns how long the report took (what dlopt.train.cadence weighs)."""
    saved = TrialCheckpoint(epoch=epoch + 1, step=run.state.step,
                            scheduler=run.scheduler.state_dict(),
                            stages=[s.state_dict() for s in run.stages], metrics=metrics)
    write = run.strategy.checkpoint(saved)
    t0 = time.perf_counter()
    report({**metrics, HISTORY: unreported} if unreported else metrics, write)
    return time.perf_counter() - t0


def finish(run: Run, report: Report, rank: int) -> State:
    """Compress and save the final model (gathered onto rank 0 by FSDP and pipeline), and
    send the final report."""
    state = run.state
    model = run.strategy.final_model(state)
    if model is None:  # a rank with nothing left to compress or save
        report({**state.metrics, **state.run_entries, **state.compression.metrics, FINAL: 1},
               None)
        return state
    state.model = model
    state.compression = state.compression.with_artifact(None)
    run.events(Event.FIT_END)
    final = final_metrics(state, model)
    report(final, save_final_model(final, state, model) if rank == 0 else None)
    return state


def final_metrics(state: State, model: torch.nn.Module) -> dict:
    """The final report's metrics: the last epoch's, the run's and the compression's entries
    (state.compression, a CompressionResult), `FINAL: 1`."""
    final = {**state.metrics, **state.run_entries, **state.compression.metrics, FINAL: 1}
    spec = state.spec
    named = {spec.search.metric, *(spec.search.objectives or {})}
    # Only metrics that apply: compressed_val_accuracy where there is a compression stage (or
    # the search ranks by it) and an accuracy at all (not for regression); dense_bytes and
    # compression_ratio only with compression (model_bytes, the size on disk, always).
    if "val_accuracy" in final and (spec.compression or "compressed_val_accuracy" in named):
        final.setdefault("compressed_val_accuracy", final["val_accuracy"])
    if spec.compression and "dense_bytes" not in final:
        final["dense_bytes"] = artifact.dense_bytes(model)
    return final


def save_final_model(final: dict, state: State, model: torch.nn.Module) -> Callable[[Path], None]:
    """Save the final model once (the compressed artifact, else dense), add its real size on
    disk to `final` (model_bytes, compression_ratio), and return the writer that copies it
    into the final checkpoint."""
    spec, datasets = state.spec, state.datasets
    saved_dir = Path(tempfile.mkdtemp(prefix="dlopt-model-"))
    meta = {"input_shape": list(datasets.input_shape), "out_features": datasets.out_features,
            "task": datasets.task}
    if datasets.transform is not None:  # raw inputs -> what it trained on (dlopt.ml.transform)
        meta["input_transform"] = datasets.transform.to_json()
    if state.compression.artifact is not None:
        state.compression.artifact.save(saved_dir, spec.model_dump(mode="json"), meta)
    else:
        artifact.save_dense(model, spec.model_dump(mode="json"), meta, saved_dir)
    if datasets.raw_example is not None:
        artifact.save_example(datasets.raw_example, saved_dir)
    final["model_bytes"] = artifact.model_bytes(saved_dir)
    if "dense_bytes" in final:  # with compression stages (final_metrics)
        final["compression_ratio"] = final["dense_bytes"] / max(final["model_bytes"], 1)
    return lambda d: shutil.copytree(saved_dir, d, dirs_exist_ok=True)
