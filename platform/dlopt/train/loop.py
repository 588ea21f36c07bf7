"""The training loop: plain PyTorch, read top to bottom (nanoGPT style), one for every strategy.

It knows nothing of Ray or MLflow. The caller passes:
- `report(metrics, write_checkpoint)`: at the epochs dlopt.train.cadence picks (every epoch,
  or coalesced when epochs are much shorter than a report) and once at the end;
  `write_checkpoint` writes this rank's part of a checkpoint into a directory (None where the
  rank has nothing to write); a report carries the unreported epochs before it under
  `spec.report.HISTORY` (docs/architecture.md, "Report protocol");
- `resume`: the checkpoint dict to continue from, or None;
- `wrap`: turns the model into its DDP form (Ray's prepare_model under Ray Train, identity alone).
What differs between DDP, FSDP and pipeline (how the model is split, how a batch runs, how
the full model is gathered, what a checkpoint holds) is the strategy's (dlopt.train.strategies).
Stages hook in at named events (dlopt.stages.Event; docs/architecture.md, "The training loop
and its events").
"""
from __future__ import annotations

import math
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable, Optional

import torch

from dlopt.artifact import files as artifact
from dlopt.ml import data as data_mod
from dlopt.ml import init as init_mod
from dlopt.ml import models, optim, schedules
from dlopt.spec import Experiment
from dlopt.spec.report import DIVERGED, END_TIME, EPOCH, EPOCH_SECONDS, FINAL, HISTORY
from dlopt.stages import Event, State, catalog, run_event
from dlopt.train import cadence as cadence_mod
from dlopt.train import faults, strategies
from dlopt.train.checkpoint import CHECKPOINT_FILE, load_checkpoint
from dlopt.train.steps import batch_size_for, evaluate, loss_function, predict

__all__ = ["CHECKPOINT_FILE", "Report", "batch_size_for", "evaluate", "final_metrics", "fit",
           "load_checkpoint", "loss_function", "predict", "save_final_model"]

Report = Callable[[dict, Optional[Callable[[Path], None]]], None]


def _mean_across_ranks(value: float, world: int) -> float:
    if world == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64)
    torch.distributed.all_reduce(t)
    return t.item() / world


def _any_rank(flag: bool, world: int) -> bool:
    """True on every rank if it is true on one: a report is a collective under Ray Train."""
    if world == 1:
        return flag
    t = torch.tensor([float(flag)])
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return bool(t.item())


def fit(spec: Experiment, report: Report, *, rank: int = 0, world: int = 1,
        resume: Optional[dict] = None, wrap: Callable = lambda m: m, device: str = "cpu") -> State:
    strategy = strategies.pick(spec, rank, world, device, wrap)
    # --- setup: data, model, optimizer, schedule, stages (identical on every rank, except
    # the part of the model a pipeline rank trains)
    torch.manual_seed(spec.seed)
    datasets = data_mod.load(spec.data, spec.seed)

    def build() -> torch.nn.Module:
        return models.build(spec.model, datasets.input_shape, datasets.out_features)

    model = build()
    init_mod.apply(model, spec.model.init)
    model.to(device)
    trained = strategy.prepare(model, build)  # the module this rank trains (and optimizes)
    optimizer = optim.build(spec.optimizer, trained.parameters())
    shard = math.ceil(len(datasets.train) / strategy.data_world)
    batch_size = batch_size_for(spec, shard)
    steps_per_epoch = math.ceil(shard / batch_size)
    scheduler, sched_every = schedules.build(spec.schedule, optimizer, spec.epochs, steps_per_epoch)
    loss_fn = loss_function(datasets.task, spec.regularization.label_smoothing)
    stages = catalog.build(spec)
    state = State(spec=spec, model=model, optimizer=optimizer, datasets=datasets, rank=rank,
                  world=world, device=device, steps_per_epoch=steps_per_epoch,
                  evaluate=lambda m: evaluate(m, datasets.val, datasets.task, spec.precision, device))

    def events(event: Event) -> None:
        run_event(stages, event, state)

    events(Event.SETUP)  # on the whole model: the dense baseline is measured there
    state.model = trained
    start_epoch = 0
    if resume is not None:
        strategy.load(resume, optimizer)
        scheduler.load_state_dict(resume["scheduler"])
        # The saved optimizer state carries the old lr/momentum/weight decay; this run's spec
        # wins (PBT resumes a cloned checkpoint with perturbed values). No-op on a plain restart.
        optim.apply_spec(optimizer, spec.optimizer, scheduler)
        for stage, saved in zip(stages, resume.get("stages", [])):
            stage.load_state_dict(saved)
        start_epoch, state.step = resume["epoch"], resume["step"]
        # a run resumed after its last epoch still needs that epoch's metrics in the final report
        state.metrics = dict(resume.get("metrics", {}))
    strategy.start(optimizer, loss_fn)
    cadence = cadence_mod.Cadence(spec.tracking.report_every, spec.epochs,
                                  cadence_mod.scheduler_epochs(spec.search, spec.epochs))
    unreported: list[dict] = []  # epochs since the last report, oldest first

    # --- train
    for epoch in range(start_epoch, spec.epochs):
        state.epoch = epoch
        t0 = time.perf_counter()
        trained.train()
        total, count = 0.0, 0
        # DDP/FSDP: this rank's share of the epoch's batches; pipeline: every batch
        for idx in data_mod.shard_batches(len(datasets.train), batch_size, strategy.data_rank,
                                          strategy.data_world, spec.seed, epoch):
            x, y = datasets.train.x[idx].to(device), datasets.train.y[idx].to(device)
            state.batch = (x, y)
            loss = strategy.train_step(state, x, y, events)  # forward, backward, optimizer step
            state.step += 1
            events(Event.AFTER_STEP)
            lr = optimizer.param_groups[0]["lr"]  # the lr this step used (reported per epoch)
            if sched_every == "step":
                scheduler.step()
            total += loss * len(y)
            count += len(y)
        if sched_every == "epoch":
            scheduler.step()

        train_loss = _mean_across_ranks(total / max(count, 1), strategy.data_world)
        metrics = {EPOCH: epoch + 1, "train_loss": train_loss, "lr": lr,
                   **state.evaluate(strategy.eval_model()), EPOCH_SECONDS: time.perf_counter() - t0,
                   END_TIME: time.time()}
        state.metrics = metrics
        if not all(math.isfinite(v) for k, v in metrics.items() if k in ("train_loss", "val_loss")):
            report({**metrics, DIVERGED: 1, HISTORY: unreported}, None)
            state.stop = True
            state.report[DIVERGED] = 1
            return state
        events(Event.EPOCH_END)
        faults.slow_epoch()  # test-only, off unless its env variable is set
        if not _any_rank(cadence.due(epoch + 1, time.perf_counter() - t0, state.stop), world):
            unreported.append(metrics)
            continue
        saved = {"scheduler": scheduler.state_dict(), "epoch": epoch + 1, "step": state.step,
                 "stages": [s.state_dict() for s in stages], "metrics": metrics}
        write = strategy.checkpoint(saved)
        t_report = time.perf_counter()
        report({**metrics, HISTORY: unreported} if unreported else metrics, write)
        cadence.reported(time.perf_counter() - t_report)
        unreported = []
        if state.stop:
            break

    # --- compress and save the final model (gathered onto rank 0 by FSDP and pipeline)
    model = strategy.final_model(state)
    if model is None:  # a rank with nothing left to compress or save
        report({**state.metrics, **state.report, FINAL: 1}, None)
        return state
    state.model, state.artifact = model, None
    events(Event.FIT_END)
    final = final_metrics(state, model)
    report(final, save_final_model(final, state, model) if rank == 0 else None)
    return state


def final_metrics(state: State, model: torch.nn.Module) -> dict:
    """The final report's metrics: the last epoch's, the stages' entries, `FINAL: 1`."""
    final = {**state.metrics, **state.report, FINAL: 1}
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
    if state.artifact is not None:
        state.artifact.save(saved_dir, spec.model_dump(mode="json"), meta)
    else:
        artifact.save_dense(model, spec.model_dump(mode="json"), meta, saved_dir)
    if datasets.raw_example is not None:
        artifact.save_example(datasets.raw_example, saved_dir)
    final["model_bytes"] = artifact.model_bytes(saved_dir)
    if "dense_bytes" in final:  # with compression stages (final_metrics)
        final["compression_ratio"] = final["dense_bytes"] / max(final["model_bytes"], 1)
    return lambda d: shutil.copytree(saved_dir, d, dirs_exist_ok=True)

