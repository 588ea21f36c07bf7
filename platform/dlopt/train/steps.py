"""What the loop and its strategies share: batch size, autocast, loss, validation.

Its own module so that dlopt.train.loop and dlopt.train.strategies both import it and
neither imports the other (docs/architecture.md, "Layers").
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

from dlopt.ml import metrics as metrics_mod
from dlopt.ml import streams
from dlopt.ml.devices import device_type, to_device
from dlopt.spec import Experiment


def batch_size_for(spec: Experiment, shard_size: int) -> int:
    """`gd` is full-batch gradient descent: the whole shard is one batch."""
    return shard_size if spec.optimizer.name == "gd" else spec.data.batch_size


def autocast(precision: str, device: str):
    # the device's type ("cuda", never "cuda:N": autocast skips its bf16 check for that)
    if precision == "bf16-mixed":
        return torch.autocast(device_type=device_type(device), dtype=torch.bfloat16)
    if precision == "16-mixed":
        return torch.autocast(device_type=device_type(device), dtype=torch.float16)
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

    Names (see dlopt.ml.metrics): classification val_loss, val_accuracy, val_precision,
    val_recall, val_f1 (macro) and val_top5_accuracy (more than 5 classes); regression
    val_loss (= val_mse), val_mse, val_mae, val_r2. Each may be Search.metric or an objective.
    """
    if streams.is_streamed(split):  # read batch by batch (dlopt.ml.streams)
        out, y = predict_streamed(model, split, precision, device, batch_size)
        return metrics_mod.compute(out, y, task, prefix=prefix)
    out = predict(model, split.x, precision, device, batch_size)
    return metrics_mod.compute(out, split.y, task, prefix=prefix)


@torch.no_grad()
def predict_streamed(model: torch.nn.Module, split, precision: str = "32", device: str = "cpu",
                     batch_size: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """Outputs (float32, CPU) and labels over a streamed split's raw batches, each put
    through `split.prepare` (the training split's transform, on the device; None where
    the model applies its own, as a registered model does)."""
    was_training = model.training
    model.eval()
    outs, ys = [], []
    prepare = split.prepare
    with autocast(precision, device):
        for x, y in split.batches(batch_size, 0):
            x = to_device(x, device)
            outs.append(model(prepare(x) if prepare else x).float().cpu())
            ys.append(y.cpu())
    model.train(was_training)
    return torch.cat(outs), torch.cat(ys)
