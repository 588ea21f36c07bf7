"""The training loop: plain PyTorch, read top to bottom (nanoGPT style).

It knows nothing of Ray or MLflow. The caller passes:
- `report(metrics, write_checkpoint)`: at the epochs dlopt.train.cadence picks (every epoch,
  or coalesced when epochs are much shorter than a report) and once at the end;
  `write_checkpoint` is a function that writes files into a directory (rank 0 only, None
  elsewhere); a report carries the unreported epochs before it under `epoch_history`;
- `resume`: the checkpoint dict to continue from, or None;
- `wrap`: turns the model into its distributed form (DDP under Ray Train, identity alone).
Stages hook in at named events (see dlopt.stages).
"""
from __future__ import annotations

import contextlib
import math
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from dlopt.artifact import files as artifact

from dlopt.ml import data as data_mod

from dlopt.ml import init as init_mod

from dlopt.ml import models

from dlopt.ml import optim

from dlopt.ml import schedules
from dlopt.ml import metrics as metrics_mod
from dlopt.spec import Experiment
from dlopt.stages import State, catalog, run_event
from dlopt.train import cadence as cadence_mod, faults, sharding

CHECKPOINT_FILE = "checkpoint.pt"
Report = Callable[[dict, Optional[Callable[[Path], None]]], None]


def batch_size_for(spec: Experiment, shard_size: int) -> int:
    """`gd` is full-batch gradient descent: the whole shard is one batch."""
    return shard_size if spec.optimizer.name == "gd" else spec.data.batch_size


def autocast(precision: str, device: str):
    if precision == "bf16-mixed":
        return torch.autocast(device_type=device, dtype=torch.bfloat16)
    if precision == "16-mixed":
        return torch.autocast(device_type=device, dtype=torch.float16)
    return contextlib.nullcontext()


def loss_function(task: str, label_smoothing: float):
    if task == "regression":
        return lambda out, y: F.mse_loss(out.float(), y)
    return lambda out, y: F.cross_entropy(out.float(), y, label_smoothing=label_smoothing)


@torch.no_grad()
def predict(model: torch.nn.Module, x: torch.Tensor, precision: str = "32", device: str = "cpu",
            batch_size: int = 1024) -> torch.Tensor:
    """The model's outputs on `x` in eval mode, batched, as float32 on the CPU."""
    was_training = model.training
    model.eval()
    outs = []
    with autocast(precision, device):
        for i in range(0, len(x), batch_size):
            outs.append(model(x[i:i + batch_size].to(device)).float().cpu())
    model.train(was_training)
    return torch.cat(outs)


def evaluate(model: torch.nn.Module, split, task: str, precision: str = "32", device: str = "cpu",
             batch_size: int = 1024, prefix: str = "val_") -> dict:
    """Validation metrics on the whole split (every rank sees the same numbers).

    Names (see dlopt.metrics): classification val_loss, val_accuracy, val_precision,
    val_recall, val_f1 (macro) and val_top5_accuracy (more than 5 classes); regression
    val_loss (= val_mse), val_mse, val_mae, val_r2. Each may be Search.metric or an objective.
    """
    out = predict(model, split.x, precision, device, batch_size)
    return metrics_mod.compute(out, split.y, task, prefix=prefix)


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
    if spec.resources.strategy == "pipeline" and world > 1:  # its step is a schedule call
        from dlopt.train import pipeline
        return pipeline.fit(spec, report, rank=rank, world=world, resume=resume, device=device)
    # --- setup: data, model, optimizer, schedule, stages (identical on every rank)
    torch.manual_seed(spec.seed)
    datasets = data_mod.load(spec.data, spec.seed)
    model = models.build(spec.model, datasets.input_shape, datasets.out_features)
    init_mod.apply(model, spec.model.init)
    model.to(device)
    sharded = spec.resources.strategy == "fsdp" and world > 1
    if sharded:  # FSDP2: parameters become DTensor shards, so shard before the optimizer
        sharding.shard(model, spec.precision, spec.compression)
    optimizer = optim.build(spec.optimizer, model.parameters())
    shard = math.ceil(len(datasets.train) / world)
    batch_size = batch_size_for(spec, shard)
    steps_per_epoch = math.ceil(shard / batch_size)
    scheduler, sched_every = schedules.build(spec.schedule, optimizer, spec.epochs, steps_per_epoch)
    loss_fn = loss_function(datasets.task, spec.regularization.label_smoothing)
    scaler = torch.amp.GradScaler(device) if spec.precision == "16-mixed" else None
    stages = catalog.build(spec)
    state = State(spec=spec, model=model, optimizer=optimizer, datasets=datasets, rank=rank,
                  world=world, device=device, steps_per_epoch=steps_per_epoch,
                  evaluate=lambda m: evaluate(m, datasets.val, datasets.task, spec.precision, device))
    run_event(stages, "setup", state)
    start_epoch = 0
    if resume is not None:
        if sharded:  # each rank reads its own shards of model and optimizer state
            sharding.load(model, optimizer, resume["sharded"])
        else:
            model.load_state_dict(resume["model"])
            optimizer.load_state_dict(resume["optimizer"])
        scheduler.load_state_dict(resume["scheduler"])
        # The saved optimizer state carries the old lr/momentum/weight decay; this run's spec
        # wins (PBT resumes a cloned checkpoint with perturbed values). No-op on a plain restart.
        optim.apply_spec(optimizer, spec.optimizer, scheduler)
        for stage, saved in zip(stages, resume.get("stages", [])):
            stage.load_state_dict(saved)
        start_epoch, state.step = resume["epoch"], resume["step"]
        # a run resumed after its last epoch still needs that epoch's metrics in the final report
        state.metrics = dict(resume.get("metrics", {}))
    ddp_model = model if sharded else wrap(model)
    cadence = cadence_mod.Cadence(spec.tracking.report_every, spec.epochs,
                                  cadence_mod.scheduler_epochs(spec.search, spec.epochs))
    unreported: list[dict] = []  # epochs since the last report, oldest first

    # --- train
    for epoch in range(start_epoch, spec.epochs):
        state.epoch = epoch
        t0 = time.perf_counter()
        ddp_model.train()
        total, count = 0.0, 0
        for idx in data_mod.shard_batches(len(datasets.train), batch_size, rank, world,
                                          spec.seed, epoch):
            x, y = datasets.train.x[idx].to(device), datasets.train.y[idx].to(device)
            state.batch = (x, y)
            with autocast(spec.precision, device):
                state.outputs = ddp_model(x)
                state.loss = loss_fn(state.outputs, y)
            run_event(stages, "loss", state)
            optimizer.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(state.loss).backward()
                scaler.unscale_(optimizer)
                run_event(stages, "after_backward", state)
                scaler.step(optimizer)
                scaler.update()
            else:
                state.loss.backward()
                run_event(stages, "after_backward", state)
                optimizer.step()
            state.step += 1
            run_event(stages, "after_step", state)
            lr = optimizer.param_groups[0]["lr"]  # the lr this step used (reported per epoch)
            if sched_every == "step":
                scheduler.step()
            total += state.loss.item() * len(y)
            count += len(y)
        if sched_every == "epoch":
            scheduler.step()

        train_loss = _mean_across_ranks(total / max(count, 1), world)
        metrics = {"epoch": epoch + 1, "train_loss": train_loss, "lr": lr,
                   **state.evaluate(model), "epoch_seconds": time.perf_counter() - t0,
                   cadence_mod.END_TIME_KEY: time.time()}
        state.metrics = metrics
        if not all(math.isfinite(v) for k, v in metrics.items() if k in ("train_loss", "val_loss")):
            report({**metrics, "diverged": 1, cadence_mod.HISTORY_KEY: unreported}, None)
            state.stop = True
            state.report["diverged"] = 1
            return state
        run_event(stages, "epoch_end", state)
        faults.slow_epoch()  # test-only, off unless its env variable is set
        if not _any_rank(cadence.due(epoch + 1, time.perf_counter() - t0, state.stop), world):
            unreported.append(metrics)
            continue
        saved = {"scheduler": scheduler.state_dict(), "epoch": epoch + 1, "step": state.step,
                 "stages": [s.state_dict() for s in stages], "metrics": metrics}
        if sharded:  # every rank writes its shard; rank 0 also the replicated rest
            def write(d, s=saved):
                sharding.save(model, optimizer, d)
                if rank == 0:
                    torch.save(s, Path(d) / CHECKPOINT_FILE)
        else:
            saved.update(model=model.state_dict(), optimizer=optimizer.state_dict())
            write = (lambda d, s=saved: torch.save(s, Path(d) / CHECKPOINT_FILE)) if rank == 0 \
                else None
        t_report = time.perf_counter()
        report({**metrics, cadence_mod.HISTORY_KEY: unreported} if unreported else metrics, write)
        cadence.reported(time.perf_counter() - t_report)
        unreported = []
        if state.stop:
            break

    # --- compress and save the final model
    if sharded:  # gather the full weights into a plain model on rank 0; compress that
        state.report["shard_fraction_max"] = sharding.max_shard_fraction(model)
        model = state.model = sharding.full_model(model, lambda: models.build(
            spec.model, datasets.input_shape, datasets.out_features), rank)
        if model is None:  # other ranks: nothing left to compress or save
            report({**state.metrics, **state.report, "final": 1}, None)
            return state
    state.artifact = None
    run_event(stages, "fit_end", state)
    final = final_metrics(state, model)
    report(final, save_final_model(final, state, model) if rank == 0 else None)
    return state


def final_metrics(state: State, model: torch.nn.Module) -> dict:
    """The final report's metrics: the last epoch's, the stages' entries, `final: 1`."""
    final = {**state.metrics, **state.report, "final": 1}
    final.setdefault("compressed_val_accuracy", final.get("val_accuracy", float("nan")))
    if "dense_bytes" not in final:
        final["dense_bytes"] = artifact.dense_bytes(model)
    return final


def save_final_model(final: dict, state: State, model: torch.nn.Module) -> Callable[[Path], None]:
    """Save the final model once (the compressed artifact, else dense), add its real size on
    disk to `final` (model_bytes, compression_ratio), and return the writer that copies it
    into the final checkpoint. Shared by this loop and dlopt.train.pipeline."""
    spec, datasets = state.spec, state.datasets
    saved_dir = Path(tempfile.mkdtemp(prefix="dlopt-model-"))
    meta = {"input_shape": list(datasets.input_shape), "out_features": datasets.out_features,
            "task": datasets.task}
    if state.artifact is not None:
        state.artifact.save(saved_dir, spec.model_dump(mode="json"), meta)
    else:
        artifact.save_dense(model, spec.model_dump(mode="json"), meta, saved_dir)
    final["model_bytes"] = artifact.model_bytes(saved_dir)
    final["compression_ratio"] = final["dense_bytes"] / max(final["model_bytes"], 1)
    return lambda d: shutil.copytree(saved_dir, d, dirs_exist_ok=True)


def load_checkpoint(directory: Path) -> dict:
    return torch.load(Path(directory) / CHECKPOINT_FILE, weights_only=True)
