"""How one training run spreads over its workers: the parts of the loop that differ by
`Resources.strategy` (docs/architecture.md, "The training loop and its events").

dlopt.train.loop.fit is the one loop for every strategy. It asks its strategy, in order:
- `prepare(model, build)`: the module this rank trains, before the optimizer exists
  (DDP: the model; FSDP: the model sharded in place; pipeline: this rank's `PipelinePart`);
- `load(resume, optimizer)`: that module's and the optimizer's state from a `TrialCheckpoint`;
- `start(optimizer, loss_fn)`: what must follow loading (DDP wraps the model here);
- `train_step(state, x, y, run)`: one batch's forward, backward and optimizer step, with
  the stage events in between (`run(event)`); returns the batch's mean loss as a 0-dim
  tensor on the device (never read per step: no host sync);
- `epoch_loss(mean)`: this rank's mean loss of the epoch (a device tensor) -> the epoch's
  train_loss, the same on every rank (one collective);
- `validate(evaluate)`: the validation metrics after each epoch, the same on every rank
  (DDP and pipeline: rank 0 evaluates and broadcasts them; FSDP: every rank runs the forward,
  which is collective);
- `checkpoint(saved)`: the writer of this rank's part of an epoch's `TrialCheckpoint`, or None;
- `final_model(state)`: the plain full model the final stages compress (None on a rank
  with nothing left to do; that rank sends the final metrics without a model).
`data_rank`/`data_world` say how batches are dealt: DDP and FSDP split each epoch's
batches across the ranks; a pipeline splits the model instead, so every rank walks every
batch. The mechanics live in dlopt.train.sharding (FSDP) and dlopt.train.pipeline.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional, Protocol

import torch
from torch import nn

from dlopt.ml import collectives
from dlopt.ml.devices import device_type
from dlopt.spec import Experiment
from dlopt.stages import Event, State
from dlopt.train import checkpoint, pipeline, sharding
from dlopt.train.checkpoint import TrialCheckpoint
from dlopt.train.steps import autocast

Writer = Callable[[Path], None]
Events = Callable[[Event], None]


class Strategy(Protocol):
    data_rank: int
    data_world: int

    def prepare(self, model: nn.Module, build: Callable[[], nn.Module]) -> nn.Module: ...

    def load(self, resume: TrialCheckpoint, optimizer: torch.optim.Optimizer) -> None: ...

    def start(self, optimizer: torch.optim.Optimizer, loss_fn: Callable) -> None: ...

    def train_step(self, state: State, x: torch.Tensor, y: torch.Tensor,
                   run: Events) -> torch.Tensor: ...

    def epoch_loss(self, mean: torch.Tensor) -> float: ...

    def validate(self, evaluate: Callable[[nn.Module], dict]) -> dict: ...

    def checkpoint(self, saved: TrialCheckpoint) -> Optional[Writer]: ...

    def final_model(self, state: State) -> Optional[nn.Module]: ...


def pick(spec: Experiment, rank: int, world: int, device: str,
         wrap: Callable[[nn.Module], nn.Module]) -> Strategy:
    """FSDP and pipeline need more than one worker; alone, every strategy is plain training."""
    if world > 1 and spec.resources.strategy == "fsdp":
        return FullySharded(spec, rank, world, device)
    if world > 1 and spec.resources.strategy == "pipeline":
        return Pipelined(spec, rank, world, device)
    return DataParallel(spec, rank, world, device, wrap)


class DataParallel:
    """DDP (`wrap` is Ray's prepare_model or torch's DDP) or one process (`wrap` is the
    identity): every rank holds the whole model and trains on its share of the batches."""

    def __init__(self, spec: Experiment, rank: int, world: int, device: str,
                 wrap: Callable[[nn.Module], nn.Module] = lambda m: m):
        self.spec, self.rank, self.device, self.wrap = spec, rank, device, wrap
        self.data_rank, self.data_world = rank, world
        self.scaler = (torch.amp.GradScaler(device_type(device))
                       if spec.precision == "16-mixed" else None)

    def prepare(self, model: nn.Module, build: Callable[[], nn.Module]) -> nn.Module:
        self.model, self.build = model.to(self.device), build
        return self.model

    def load(self, resume: TrialCheckpoint, optimizer: torch.optim.Optimizer) -> None:
        self.model.load_state_dict(resume.model)
        optimizer.load_state_dict(resume.optimizer)
        self.load_scaler(resume)

    def load_scaler(self, resume: TrialCheckpoint) -> None:
        """fp16's loss scale goes on where it was (absent from checkpoints older than it)."""
        if self.scaler is not None and resume.scaler is not None:
            self.scaler.load_state_dict(resume.scaler)

    def with_scaler(self, saved: TrialCheckpoint) -> TrialCheckpoint:
        return saved if self.scaler is None else saved.with_scaler(self.scaler.state_dict())

    def start(self, optimizer: torch.optim.Optimizer, loss_fn: Callable) -> None:
        self.optimizer, self.loss_fn = optimizer, loss_fn
        self.forward = self.wrap(self.model)  # after loading: DDP starts from rank 0's weights

    def train_step(self, state: State, x: torch.Tensor, y: torch.Tensor, run: Events) -> float:
        with autocast(self.spec.precision, self.device):
            state.outputs = self.forward(x)
            state.loss = self.loss_fn(state.outputs, y)
        run(Event.LOSS)
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(state.loss).backward()
            self.scaler.unscale_(self.optimizer)
            run(Event.AFTER_BACKWARD)
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            state.loss.backward()
            run(Event.AFTER_BACKWARD)
            self.optimizer.step()
        return state.loss.detach()

    def epoch_loss(self, mean: torch.Tensor) -> float:
        """The mean over ranks of each rank's mean loss."""
        if self.data_world == 1:
            return mean.item()
        return collectives.reduce_on_device(mean.reshape(1)).item() / self.data_world

    def validate(self, evaluate: Callable[[nn.Module], dict]) -> dict:
        """Every rank holds the same weights: rank 0 evaluates, the others receive its metrics
        (the same numbers every rank computed before, for 1/world of the work)."""
        if self.data_world == 1:
            return evaluate(self.model)
        metrics = evaluate(self.model) if self.rank == 0 else None
        return collectives.broadcast_object(metrics, 0, self.device)

    def checkpoint(self, saved: TrialCheckpoint) -> Optional[Writer]:
        if self.rank != 0:  # every rank holds the same weights: rank 0 writes them
            return None
        saved = self.with_scaler(saved.with_weights(self.model.state_dict(),
                                                    self.optimizer.state_dict()))
        return lambda d: checkpoint.save(saved, d)

    def final_model(self, state: State) -> Optional[nn.Module]:
        # every rank holds the same weights: rank 0 alone runs the final stages (compression,
        # ONNX export) and saves; the others send the final metrics without a model
        return self.model if self.rank == 0 else None


class FullySharded(DataParallel):
    """FSDP2 (dlopt.train.sharding): each rank holds 1/world of every weight; the same
    forward and backward as DDP, with FSDP's own all-gathers and reduce-scatters."""

    def prepare(self, model: nn.Module, build: Callable[[], nn.Module]) -> nn.Module:
        # parameters become DTensor shards, so shard before the optimizer is built; the model
        # is still on the CPU: fully_shard moves only this rank's shards to the device
        sharding.shard(model, self.spec.precision, self.spec.compression, self.device)
        self.model, self.build = model, build
        return model

    def load(self, resume: TrialCheckpoint, optimizer: torch.optim.Optimizer) -> None:
        sharding.load(self.model, optimizer, resume.sharded)  # each rank its own shards
        self.load_scaler(resume)

    def validate(self, evaluate: Callable[[nn.Module], dict]) -> dict:
        return evaluate(self.model)  # the sharded forward is collective: every rank runs it

    def start(self, optimizer: torch.optim.Optimizer, loss_fn: Callable) -> None:
        self.optimizer, self.loss_fn = optimizer, loss_fn
        self.forward = self.model  # already sharded: no DDP wrapper

    def checkpoint(self, saved: TrialCheckpoint) -> Optional[Writer]:
        saved = self.with_scaler(saved)

        def write(d: Path) -> None:  # every rank writes its shard; rank 0 also the rest
            sharding.save(self.model, self.optimizer, d)
            if self.rank == 0:
                checkpoint.save(saved, d)
        return write

    def final_model(self, state: State) -> Optional[nn.Module]:
        """The full weights gathered into a plain model on rank 0, on the CPU (collective)."""
        state.run_entries["shard_fraction_max"] = sharding.max_shard_fraction(self.model,
                                                                              self.device)
        return sharding.full_model(self.model, self.build, self.rank)


class Pipelined:
    """GPipe over consecutive parts of an nn.Sequential, one per rank (dlopt.train.pipeline):
    each rank trains only its `PipelinePart`, on every batch of the epoch."""

    def __init__(self, spec: Experiment, rank: int, world: int, device: str):
        self.rank, self.world, self.device = rank, world, device
        self.data_rank, self.data_world = 0, 1  # the model is split, not the data

    def prepare(self, model: nn.Module, build: Callable[[], nn.Module]) -> nn.Module:
        self.build = build
        part = pipeline.part(model, pipeline.split(model, self.world), self.rank)
        self.part = part.to(self.device)  # only this rank's layers go to the device
        return self.part

    def load(self, resume: TrialCheckpoint, optimizer: torch.optim.Optimizer) -> None:
        pipeline.load_part(self.part, optimizer, resume.sharded, self.rank)

    def start(self, optimizer: torch.optim.Optimizer, loss_fn: Callable) -> None:
        self.optimizer = optimizer
        self.pipe = pipeline.Pipe(self.part, self.rank, self.world, self.device, loss_fn)

    def train_step(self, state: State, x: torch.Tensor, y: torch.Tensor,
                   run: Events) -> torch.Tensor:
        self.optimizer.zero_grad(set_to_none=True)
        # forward and backward of every microbatch: no LOSS event; the loss is the last
        # rank's (zero elsewhere), sent to the others once per epoch by `epoch_loss`
        state.loss = self.pipe.step(x, y)
        run(Event.AFTER_BACKWARD)
        self.optimizer.step()
        return state.loss

    def epoch_loss(self, mean: torch.Tensor) -> float:
        return collectives.broadcast_tensor(mean.reshape(1), self.world - 1).item()

    def validate(self, evaluate: Callable[[nn.Module], dict]) -> dict:
        """The gathered full model (on the CPU, collective) evaluated on rank 0, its metrics
        sent to the others."""
        full = pipeline.gather_full(self.part, self.build)
        metrics = evaluate(full) if self.rank == 0 else None
        return collectives.broadcast_object(metrics, 0, self.device)

    def checkpoint(self, saved: TrialCheckpoint) -> Optional[Writer]:
        def write(d: Path) -> None:  # every rank writes its part; rank 0 also the rest
            pipeline.save_part(self.part, self.optimizer, d, self.rank)
            if self.rank == 0:
                checkpoint.save(saved, d)
        return write

    def final_model(self, state: State) -> Optional[nn.Module]:
        """The gathered full model on rank 0 (collective)."""
        full = pipeline.gather_full(self.part, self.build)
        state.run_entries["stage_fraction_max"] = pipeline.max_part_fraction(self.part, full,
                                                                             self.device)
        return full if self.rank == 0 else None
