"""Pipeline model parallelism for sequential models (`Resources.strategy == "pipeline"`).

Why: data parallelism (DDP, FSDP) splits the batches; a pipeline splits the model into
consecutive parts, one per worker, and streams microbatches through them, so each worker
holds and computes only its own layers. torch.distributed.pipelining runs on CPU with gloo
(torch 2.13, measured: GPipe over 2 ranks gives the single-process losses to the last digit).

How it plugs into the one loop (dlopt.train.loop, through dlopt.train.strategies.Pipelined):
one training step is one schedule call that runs forward *and* backward of every microbatch
across the ranks (rank 0 feeds inputs, the last rank computes the loss), so the loop's
`loss` event does not fire. The rest is the loop's: same seed, data order and batches (every
rank walks all batches: the model is split, not the data), optimizer, LR schedule, report
cadence, per-epoch metrics, checkpoints and the same final report and artifact.

Naming: torch calls each rank's slice a "stage"; here it is a `PipelinePart`, since a
`Stage` in dlopt is a training technique (dlopt.stages). Only the file name
`stage{rank}.pt` and the metric `stage_fraction_max` keep torch's word (on-disk and
reported names stay as they were).

- `split`: cut points of an nn.Sequential into `world` contiguous parts, balanced by
  parameter count, each with at least one layer that has weights.
- A batch of n samples goes through as the largest divisor of n up to `MICROBATCHES`
  equal microbatches: a PipelineStage fixes its buffer shapes at its first step, so unequal
  microbatches fail (measured: "Expected input batch_size (6) to match target batch_size
  (5)"); one schedule per batch size is kept. Equal microbatches also make the mean of
  their losses the batch mean, so losses and gradients equal single-process training.
- Validation metrics and the final model come from the full weights gathered onto every
  rank (`all_gather_object` of each part's state dict; the models here are small).
- Checkpoints: each rank writes its part's model and optimizer state dicts as
  `sharded/stage{rank}.pt` (`save_part`); Ray Train merges every worker's files into one
  checkpoint dir (as for FSDP's shards) and a restart reads its own file back
  (`load_part`). Not torch.distributed.checkpoint as for FSDP: with different keys on each
  rank, the resumed optimizer lost its param-group settings (measured: KeyError 'lr' right
  after `set_state_dict`).
Stages that act during training on all weights at once (L1/L2 penalty, grad-norm clipping,
pruning, QAT, distillation) are refused by the spec for this strategy; post-training
quantization runs on the gathered model.
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from dlopt.ml import collectives
from dlopt.train.checkpoint import SHARDED_DIR

MICROBATCHES = 4

# one rank's consecutive slice of the model (torch.distributed.pipelining's "stage")
PipelinePart = nn.Sequential


def split(model: nn.Sequential, world: int) -> list[int]:
    """Start index of each part after the first (len == world - 1)."""
    sizes = [sum(p.numel() for p in m.parameters()) for m in model]
    weighted = [i for i, n in enumerate(sizes) if n]
    if len(weighted) < world:
        raise ValueError(f"{len(weighted)} layers with weights cannot fill {world} pipeline parts")
    total, acc, cuts = sum(sizes), 0, []
    for j, i in enumerate(weighted):
        parts_left = world - 1 - len(cuts)
        if j and parts_left and (acc >= total * (len(cuts) + 1) / world
                                 or len(weighted) - j <= parts_left):
            cuts.append(i)
        acc += sizes[i]
    return cuts


def part(model: nn.Sequential, cuts: list[int], rank: int) -> PipelinePart:
    """This rank's part: a slice of the Sequential that keeps the full model's layer names,
    so the parts' state dicts merge back into the full model's."""
    bounds = [0, *cuts, len(model)]
    items = list(model._modules.items())[bounds[rank]:bounds[rank + 1]]
    return nn.Sequential(OrderedDict(items))


def microbatches(n: int) -> int:
    return max(d for d in range(1, MICROBATCHES + 1) if n % d == 0)


def gather_full(own: PipelinePart, build: Callable[[], nn.Module]) -> nn.Module:
    """A plain full model with every part's current weights, on every rank, on the CPU
    (collective). Evaluated where it is (docs/architecture.md, "Devices")."""
    parts = collectives.gather_objects({k: v.detach().cpu() for k, v in own.state_dict().items()})
    full = build()
    full.load_state_dict({k: v for p in parts for k, v in p.items()})
    return full


class Pipe:
    """GPipe over this rank's part; `step(x, y)` trains one batch and returns its mean loss on
    the last rank (zero on the others), a float64 tensor on the device: no per-step sync."""

    def __init__(self, part: PipelinePart, rank: int, world: int, device: str, loss_fn):
        self.part, self.rank, self.world, self.device = part, rank, world, device
        self.loss_fn = loss_fn
        self.schedules: dict[int, object] = {}

    def _schedule(self, n: int):
        from torch.distributed.pipelining import PipelineStage, ScheduleGPipe

        if n not in self.schedules:
            st = PipelineStage(self.part, self.rank, self.world, torch.device(self.device))
            self.schedules[n] = ScheduleGPipe(st, n_microbatches=microbatches(n),
                                              loss_fn=self.loss_fn)
        return self.schedules[n]

    def step(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        schedule, last = self._schedule(len(x)), self.rank == self.world - 1
        losses: list = []
        if self.rank == 0:
            schedule.step(x)
        elif last:
            schedule.step(target=y, losses=losses)
        else:
            schedule.step()
        total = torch.zeros((), dtype=torch.float64, device=self.device)
        for v in losses:  # in order, in float64: the sum the host computed before
            total = total + v.detach().double()
        return total / max(len(losses), 1)


def max_part_fraction(own: PipelinePart, full: nn.Module, device: str) -> float:
    """The largest share of the model's weights one rank held (collective)."""
    held = (sum(p.numel() for p in own.parameters())
            / sum(p.numel() for p in full.parameters()))
    return collectives.reduce([held], device, "max")[0]


def save_part(own: PipelinePart, optimizer: torch.optim.Optimizer, directory: Path,
              rank: int) -> None:
    """This rank's part and optimizer state, as `directory/sharded/stage{rank}.pt`."""
    (Path(directory) / SHARDED_DIR).mkdir(exist_ok=True)
    torch.save({"model": own.state_dict(), "optimizer": optimizer.state_dict()},
               Path(directory) / SHARDED_DIR / f"stage{rank}.pt")


def load_part(own: PipelinePart, optimizer: torch.optim.Optimizer, sharded_dir: str,
              rank: int) -> None:
    """Read back what `save_part` wrote for this rank (`sharded_dir` is the merged
    checkpoint's `sharded` dir, copied out by dlopt.train.checkpoint.keep_local_copy)."""
    # onto the CPU whatever device wrote it; load_state_dict copies to the part's device
    saved = torch.load(Path(sharded_dir) / f"stage{rank}.pt", map_location="cpu",
                       weights_only=True)
    own.load_state_dict(saved["model"])
    optimizer.load_state_dict(saved["optimizer"])
