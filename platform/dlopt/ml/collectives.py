"""Every collective dlopt itself calls, on the device it is told (docs/architecture.md, "Devices").

Why one module: under Ray Train with GPUs the process group is NCCL, which torch registers for
device type `cuda` only, so a collective on a CPU tensor raises "No backend type associated
with device type cpu" (gloo on CPU accepts anything, so a CPU suite never sees it). Each
function here takes the strategy's device and builds its tensor there; callers pass the device
they train on, never a literal. tests/test_devices.py checks statically that no other module of
dlopt calls torch.distributed's collectives, and runs these under a process group whose only
backend serves one non-CPU device type, as NCCL does.

Numbers cross as one float64 tensor and are read back once (`tolist`: one host sync per call).
Objects (`gather_objects`, `broadcast_object`) are torch's pickling collectives; under NCCL they
stage through `torch.cuda.current_device()`, which Ray Train sets per worker
(ray.train.torch.config.TorchConfigContextManager); `broadcast_object` also takes the device.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.distributed as dist

OPS = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN}


def reduce_tensor(values: Sequence[float], device: torch.device | str, op: str = "sum"
                  ) -> torch.Tensor:
    """All-reduce `values` as one float64 tensor made on `device`; the reduced tensor."""
    t = torch.tensor(list(values), dtype=torch.float64, device=device)
    dist.all_reduce(t, op=OPS[op])
    return t


def reduce(values: Sequence[float], device: torch.device | str, op: str = "sum") -> list[float]:
    """`reduce_tensor`, read back on the host (one sync)."""
    return reduce_tensor(values, device, op).tolist()


def reduce_on_device(t: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """All-reduce a tensor that already lives on the strategy's device (in place; returned)."""
    dist.all_reduce(t, op=OPS[op])
    return t


def broadcast_tensor(t: torch.Tensor, src: int) -> torch.Tensor:
    """Broadcast a tensor that already lives on the strategy's device (in place; returned)."""
    dist.broadcast(t, src=src)
    return t


def gather_objects(obj: Any) -> list:
    """Every rank's `obj`, in rank order, on every rank."""
    out: list = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, src: int, device: torch.device | str) -> Any:
    """`src`'s `obj` on every rank, serialized through a tensor on `device`."""
    box = [obj]
    dist.broadcast_object_list(box, src=src, device=torch.device(device))
    return box[0]
