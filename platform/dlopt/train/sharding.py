"""Fully sharded data parallel training (FSDP2) and its sharded checkpoints.

Why FSDP: DDP keeps a full copy of the model, its gradients and optimizer state on every
worker; FSDP keeps 1/N of each on each of N workers and all-gathers a layer's weights only
while that layer runs. `torch.distributed.fsdp.fully_shard` (FSDP2) is used directly rather
than Ray's `prepare_model(parallel_strategy="fsdp")`, which wraps with the older FSDP1
(FlatParameter) API: FSDP2 leaves every parameter a DTensor under its own name, so the
model's state-dict keys, the optimizer and the stages see the same names as without FSDP.

How it fits the loop (dlopt.train.loop through dlopt.train.strategies.FullySharded,
`Resources.strategy == "fsdp"` and world > 1):
- `shard` runs before the optimizer is built (the optimizer must hold the DTensor shards);
- each epoch every rank writes its own shard with torch.distributed.checkpoint (DCP) into
  its own local checkpoint dir under `SHARDED_DIR`; Ray Train V2 agrees the checkpoint dir
  name across ranks (rank 0 broadcasts it) and every worker copies its files into that same
  storage dir (ray/train/v2/_internal/execution/context.py `_sync_checkpoint_dir_name_across_ranks`,
  storage.py `persist_current_checkpoint`), so the stored checkpoint holds all shards plus
  rank 0's `.metadata`: a complete DCP checkpoint;
- `load` restores a sharded model + optimizer from it (each rank reads what it owns);
- `full_model` gathers the full state dict to rank 0 (on CPU) into a plain, unsharded copy
  of the model: the compression stages, the saved artifact and registration then work
  exactly as for DDP, and the artifact has the same format.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

import torch
from torch import nn

from dlopt.ml import collectives
from dlopt.ml.devices import device_type
from dlopt.ml.quantization import qat_prepare
from dlopt.train.checkpoint import SHARDED_DIR


def policy(precision: str):
    """FSDP's mixed precision: bf16 compute copies, fp32 gradient reduction (and fp32 master
    shards, which the optimizer steps). None (full fp32) otherwise."""
    from torch.distributed.fsdp import MixedPrecisionPolicy

    if precision == "bf16-mixed":
        return MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    return None


def blocks(model: nn.Module) -> list[nn.Module]:
    """The units sharded one by one: every submodule that owns parameters directly (each
    Linear/Conv/norm layer), so only one layer's weights are gathered at a time."""
    return [m for m in model.modules()
            if m is not model and any(True for _ in m.parameters(recurse=False))]


def mesh(device: str):
    """The 1-D mesh over every rank, on the strategy's device type. Explicit because
    `fully_shard` without one picks the accelerator by presence (torch._C._get_accelerator()),
    not by what the trial asked for: a CPU trial on a GPU node would move its shards to CUDA."""
    from torch.distributed.device_mesh import init_device_mesh

    return init_device_mesh(device_type(device), (torch.distributed.get_world_size(),))


def shard(model: nn.Module, precision: str = "32", compression: list = (),
          device: str = "cpu") -> nn.Module:
    """Shard each block and then the root in place (FSDP2) over `mesh(device)`; returns the
    same module. The model may be on the CPU: fully_shard moves each rank's shards to the
    mesh's device, so no rank ever holds the whole model there.

    A QAT stage in `compression` swaps Linear for torchao's FakeQuantizedLinear here, before
    sharding: swapped after `fully_shard`, the new module has none of FSDP's hooks and its
    forward fails on the DTensor shard (measured, torch 2.13 / torchao 0.18: "aten.addmm.default
    got mixed torch.Tensor and DTensor"). Swapped first, FSDP shards the fake-quantized layers
    like any Linear; the Quantize stage sees them prepared and only switches fake quant."""
    from torch.distributed.fsdp import fully_shard

    if any(s.stage == "quantize" and s.method == "qat" for s in compression):
        qat_prepare(model)
    kwargs = {"mesh": mesh(device)}
    if policy(precision) is not None:
        kwargs["mp_policy"] = policy(precision)
    for block in blocks(model):
        fully_shard(block, **kwargs)
    fully_shard(model, **kwargs)
    return model


def local_shard_numel(model: nn.Module) -> dict[str, tuple[int, int]]:
    """Parameter name -> (elements this rank holds, elements of the full parameter)."""
    from torch.distributed.tensor import DTensor

    return {name: ((p.to_local().numel(), p.numel()) if isinstance(p, DTensor)
                   else (p.numel(), p.numel()))
            for name, p in model.named_parameters()}


def shard_fraction(model: nn.Module) -> float:
    """Elements this rank holds / elements of the whole model (1/world when all sharded)."""
    sizes = local_shard_numel(model).values()
    return sum(local for local, _ in sizes) / max(sum(full for _, full in sizes), 1)


# ------------------------------------------------------------------ sharded checkpoints
def save(model: nn.Module, optimizer: torch.optim.Optimizer, directory: Path) -> None:
    """Every rank writes its shard of model + optimizer state into `directory/sharded`
    (collective: all ranks call it; rank 0 also writes DCP's `.metadata`)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_sd, optim_sd = get_state_dict(model, optimizer)
    dcp.save({"model": model_sd, "optimizer": optim_sd},
             checkpoint_id=str(Path(directory) / SHARDED_DIR))


def load(model: nn.Module, optimizer: torch.optim.Optimizer, directory: str) -> None:
    """Read the shards this rank owns from a merged DCP checkpoint (collective)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    model_sd, optim_sd = get_state_dict(model, optimizer)
    state = {"model": model_sd, "optimizer": optim_sd}
    dcp.load(state, checkpoint_id=str(directory))
    set_state_dict(model, optimizer, model_state_dict=state["model"],
                   optim_state_dict=state["optimizer"])


# ------------------------------------------------------------------ back to one full model
def full_state_dict(model: nn.Module) -> dict:
    """The full (unsharded) state dict on rank 0, on CPU; empty on other ranks. Collective."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
    )

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True,
                                                                cpu_offload=True))


def full_model(model: nn.Module, build: Callable[[], nn.Module], rank: int
               ) -> Optional[nn.Module]:
    """A plain module with the gathered full weights on rank 0 (None on other ranks).

    All ranks must call it. The copy is built fresh (`build()`), so nothing of FSDP (hooks,
    DTensors) remains in the model that compression, export and registration see."""
    state = full_state_dict(model)
    if rank != 0:
        return None
    plain = build()
    plain.load_state_dict(state)
    return plain


def max_shard_fraction(model: nn.Module, device: str) -> float:
    """The largest `shard_fraction` over all ranks (collective, on `device`): about 1/world
    when every rank holds its share, 1.0 if some rank held a full copy."""
    return collectives.reduce([shard_fraction(model)], device, "max")[0]
