"""Pipeline model parallelism for sequential models (`Resources.strategy == "pipeline"`).

Why: data parallelism (DDP, FSDP) splits the batches; a pipeline splits the model into
consecutive stages, one per worker, and streams microbatches through them, so each worker
holds and computes only its own layers. torch.distributed.pipelining runs on CPU with gloo
(torch 2.13, measured: GPipe over 2 ranks gives the single-process losses to the last digit).

Why a loop of its own (not a branch inside dlopt.train.loop): one pipeline step is one
schedule call that runs forward *and* backward of every microbatch across the ranks (rank 0
feeds inputs, the last rank computes the loss); the per-rank forward / loss / backward of the
data-parallel loop does not exist here. The rest mirrors dlopt.train.loop: same seed, data
order and batches (every rank walks all batches: the model is split, not the data), optimizer,
LR schedule, per-epoch metrics, checkpoints and the same final report and artifact.

- `split`: cut points of an nn.Sequential into `world` contiguous stages, balanced by
  parameter count, each with at least one layer that has weights.
- A batch of n samples goes through as the largest divisor of n up to `MICROBATCHES`
  equal microbatches: a PipelineStage fixes its buffer shapes at its first step, so unequal
  microbatches fail (measured: "Expected input batch_size (6) to match target batch_size
  (5)"); one schedule per batch size is kept. Equal microbatches also make the mean of
  their losses the batch mean, so losses and gradients equal single-process training.
- Validation metrics and the final model come from the full weights gathered onto every
  rank (`all_gather_object` of each stage's state dict; the models here are small).
- Checkpoints: each rank writes its stage's model and optimizer state dicts as
  `sharded/stage{rank}.pt`; Ray Train merges every worker's files into one checkpoint dir
  (as for FSDP's shards) and a restart reads its own file back. Not torch.distributed.checkpoint
  as for FSDP: with different keys on each rank, the resumed optimizer lost its param-group
  settings (measured: KeyError 'lr' right after `set_state_dict`).
Stages that act during training on all weights at once (L1/L2 penalty, grad-norm clipping,
pruning, QAT, distillation) are refused by the spec for this strategy; post-training
quantization runs on the gathered model.
"""
from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import torch
from dlopt.ml import models
from dlopt.ml import optim
from dlopt.ml import schedules
from dlopt.ml import data as data_mod
from dlopt.ml import init as init_mod
from dlopt.stages import State, catalog, run_event
from dlopt.train import sharding
from torch import nn

MICROBATCHES = 4


def split(model: nn.Sequential, world: int) -> list[int]:
    """Start index of each stage after the first (len == world - 1)."""
    sizes = [sum(p.numel() for p in m.parameters()) for m in model]
    weighted = [i for i, n in enumerate(sizes) if n]
    if len(weighted) < world:
        raise ValueError(f"{len(weighted)} layers with weights cannot fill {world} stages")
    total, acc, cuts = sum(sizes), 0, []
    for j, i in enumerate(weighted):
        stages_left = world - 1 - len(cuts)
        if j and stages_left and (acc >= total * (len(cuts) + 1) / world
                                  or len(weighted) - j <= stages_left):
            cuts.append(i)
        acc += sizes[i]
    return cuts


def part(model: nn.Sequential, cuts: list[int], rank: int) -> nn.Sequential:
    """This rank's stage: a slice of the Sequential that keeps the full model's layer names,
    so stage state dicts merge back into the full model's."""
    bounds = [0, *cuts, len(model)]
    items = list(model._modules.items())[bounds[rank]:bounds[rank + 1]]
    return nn.Sequential(OrderedDict(items))


def microbatches(n: int) -> int:
    return max(d for d in range(1, MICROBATCHES + 1) if n % d == 0)


def gather_full(stage: nn.Module, build: Callable[[], nn.Module]) -> nn.Module:
    """A plain full model with every stage's current weights, on every rank (collective)."""
    world = torch.distributed.get_world_size()
    parts: list = [None] * world
    torch.distributed.all_gather_object(
        parts, {k: v.detach().cpu() for k, v in stage.state_dict().items()})
    full = build()
    full.load_state_dict({k: v for p in parts for k, v in p.items()})
    return full


class Pipe:
    """GPipe over this rank's stage; `step(x, y)` trains one batch, returns its mean loss."""

    def __init__(self, stage: nn.Module, rank: int, world: int, device: str, loss_fn):
        self.stage, self.rank, self.world, self.device = stage, rank, world, device
        self.loss_fn = loss_fn
        self.schedules: dict[int, object] = {}

    def _schedule(self, n: int):
        from torch.distributed.pipelining import PipelineStage, ScheduleGPipe

        if n not in self.schedules:
            st = PipelineStage(self.stage, self.rank, self.world, torch.device(self.device))
            self.schedules[n] = ScheduleGPipe(st, n_microbatches=microbatches(n),
                                              loss_fn=self.loss_fn)
        return self.schedules[n]

    def step(self, x: torch.Tensor, y: torch.Tensor) -> float:
        schedule, last = self._schedule(len(x)), self.rank == self.world - 1
        losses: list = []
        if self.rank == 0:
            schedule.step(x)
        elif last:
            schedule.step(target=y, losses=losses)
        else:
            schedule.step()
        mean = torch.tensor([sum(float(v) for v in losses) / max(len(losses), 1)],
                            dtype=torch.float64)
        torch.distributed.broadcast(mean, src=self.world - 1)
        return mean.item()


def fit(spec, report, *, rank: int, world: int, resume: dict | None = None,
        device: str = "cpu") -> State:
    from dlopt.train.loop import (
        CHECKPOINT_FILE,
        batch_size_for,
        evaluate,
        final_metrics,
        loss_function,
        save_final_model,
    )

    # --- setup: the full model on every rank (same seed and init as the other strategies)
    torch.manual_seed(spec.seed)
    datasets = data_mod.load(spec.data, spec.seed)

    def build():
        return models.build(spec.model, datasets.input_shape, datasets.out_features)

    model = build()
    init_mod.apply(model, spec.model.init)
    model.to(device)
    stage = part(model, split(model, world), rank)
    optimizer = optim.build(spec.optimizer, stage.parameters())
    batch_size = batch_size_for(spec, len(datasets.train))
    steps_per_epoch = math.ceil(len(datasets.train) / batch_size)
    scheduler, sched_every = schedules.build(spec.schedule, optimizer, spec.epochs, steps_per_epoch)
    loss_fn = loss_function(datasets.task, spec.regularization.label_smoothing)
    stages = catalog.build(spec)
    state = State(spec=spec, model=model, optimizer=optimizer, datasets=datasets, rank=rank,
                  world=world, device=device, steps_per_epoch=steps_per_epoch,
                  evaluate=lambda m: evaluate(m, datasets.val, datasets.task, spec.precision, device))
    run_event(stages, "setup", state)  # on the full model: the dense baseline is measured there
    state.model = stage
    start_epoch = 0
    if resume is not None:
        own = torch.load(Path(resume["sharded"]) / f"stage{rank}.pt", weights_only=True)
        stage.load_state_dict(own["model"])
        optimizer.load_state_dict(own["optimizer"])
        scheduler.load_state_dict(resume["scheduler"])
        optim.apply_spec(optimizer, spec.optimizer, scheduler)
        for s, saved in zip(stages, resume.get("stages", [])):
            s.load_state_dict(saved)
        start_epoch, state.step = resume["epoch"], resume["step"]
        state.metrics = dict(resume.get("metrics", {}))
    pipe = Pipe(stage, rank, world, device, loss_fn)

    # --- train
    for epoch in range(start_epoch, spec.epochs):
        state.epoch, t0 = epoch, time.perf_counter()
        stage.train()
        total, count = 0.0, 0
        for idx in data_mod.shard_batches(len(datasets.train), batch_size, 0, 1, spec.seed, epoch):
            x, y = datasets.train.x[idx].to(device), datasets.train.y[idx].to(device)
            state.batch = (x, y)
            optimizer.zero_grad(set_to_none=True)
            loss = pipe.step(x, y)  # forward and backward of every microbatch
            state.loss = torch.tensor(loss)
            run_event(stages, "after_backward", state)
            optimizer.step()
            state.step += 1
            run_event(stages, "after_step", state)
            lr = optimizer.param_groups[0]["lr"]
            if sched_every == "step":
                scheduler.step()
            total += loss * len(y)
            count += len(y)
        if sched_every == "epoch":
            scheduler.step()
        full = gather_full(stage, build)
        metrics = {"epoch": epoch + 1, "train_loss": total / max(count, 1), "lr": lr,
                   **state.evaluate(full), "epoch_seconds": time.perf_counter() - t0,
                   "epoch_end_time": time.time()}
        state.metrics = metrics
        if not all(math.isfinite(metrics[k]) for k in ("train_loss", "val_loss") if k in metrics):
            report({**metrics, "diverged": 1}, None)
            state.report["diverged"] = 1
            return state
        run_event(stages, "epoch_end", state)
        saved = {"scheduler": scheduler.state_dict(), "epoch": epoch + 1, "step": state.step,
                 "stages": [s.state_dict() for s in stages], "metrics": metrics}

        def write(d, s=saved):  # every rank its stage; rank 0 also the replicated rest
            (Path(d) / sharding.SHARDED_DIR).mkdir(exist_ok=True)
            torch.save({"model": stage.state_dict(), "optimizer": optimizer.state_dict()},
                       Path(d) / sharding.SHARDED_DIR / f"stage{rank}.pt")
            if rank == 0:
                torch.save(s, Path(d) / CHECKPOINT_FILE)
        report(metrics, write)
        if state.stop:
            break

    # --- compress and save the gathered full model on rank 0, as dlopt.train.loop does
    full = gather_full(stage, build)
    held = torch.tensor([sum(p.numel() for p in stage.parameters())
                         / sum(p.numel() for p in full.parameters())], dtype=torch.float64)
    torch.distributed.all_reduce(held, op=torch.distributed.ReduceOp.MAX)
    state.report["stage_fraction_max"] = held.item()  # the largest share of weights one rank held
    if rank != 0:
        report({**state.metrics, **state.report, "final": 1}, None)
        return state
    state.model, state.artifact = full, None
    run_event(stages, "fit_end", state)
    final = final_metrics(state, full)
    report(final, save_final_model(final, state, full))
    return state
