"""Where tensors live (docs/architecture.md, "Devices"): the model's own device, batches copied
to the strategy's device, the precision the device can run.

The strategy's device is the string the worker passes to the loop (`"cpu"`, or Ray Train's
`"cuda:N"`); a model gathered to the CPU for saving or export (FSDP's full state dict, the
pipeline's gathered model) is evaluated where it is (`model_device`), not on that device.
"""
from __future__ import annotations

import os

import torch


def device_type(device: torch.device | str) -> str:
    """`"cuda:1"` -> `"cuda"`: what torch.autocast, GradScaler and DeviceMesh take."""
    return torch.device(device).type


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of the model's first parameter (or buffer); CPU for a model with neither.
    A DTensor (FSDP shard) reports its mesh's device."""
    for t in (*model.parameters(), *model.buffers()):
        return t.device
    return torch.device("cpu")


def to_device(t: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """A host batch on `device`: on CUDA through pinned memory without blocking the host (the
    copy is ordered on the current stream before the kernels that read it); else `.to`."""
    if device_type(device) == "cuda" and t.device.type == "cpu":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def configure_kernels(device: torch.device | str, deterministic: bool) -> None:
    """Kernel choice for this process, set on every fit (a Tune actor may run several trials):
    cuDNN autotuning on CUDA for speed, or, with `deterministic`, torch's deterministic
    algorithms (an op without one raises) and no autotuning, so a rerun gives the same weights.
    cuBLAS needs CUBLAS_WORKSPACE_CONFIG set before its first call for that (torch's
    reproducibility notes); set here only when the user has not set it."""
    if deterministic and device_type(device) == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(deterministic)
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cudnn.benchmark = device_type(device) == "cuda" and not deterministic


def check_precision(precision: str, device: torch.device | str) -> None:
    """Refuse bf16 on a GPU that only emulates it (e.g. a T4: autocast would run it, slowly,
    and torch.autocast skips its own check when given "cuda:N"). Runs on the worker, where the
    GPU is."""
    if precision != "bf16-mixed" or device_type(device) != "cuda":
        return
    if not torch.cuda.is_bf16_supported(including_emulation=False):
        name = torch.cuda.get_device_name(torch.device(device))
        raise RuntimeError(f"precision 'bf16-mixed': {name} ({device}) has no native bf16; "
                           "use precision='16-mixed' or '32' on this GPU")
