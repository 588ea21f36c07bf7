"""The input transform a dataset fits on its training split, saved with the model.

Training sees standardized features; a user holds the raw arrays the data source gives
(`load_digits().data`, values 0-16; MNIST's uint8 pixels; a custom builder's `x`). The
transform between the two is part of the model: `dlopt.ml.data` fits it (training-split
statistics only) and applies it with `InputTransform.apply`; the saved model's metadata
carries it (dlopt.train.loop.save_final_model), and `WithInputTransform` applies the same
float32 operations in torch at inference, so a registered model takes raw arrays and
reproduces its tagged test metrics (docs/architecture.md, "Registration after the sweep").
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch


@dataclass
class InputTransform:
    """x -> (float32(x) / divisor - mean) / std; mean and std broadcast over one example."""

    divisor: float = 1.0  # a built-in dataset's fixed scaling (digits 16, pixels 255)
    mean: Optional[np.ndarray] = None  # float32; None: no standardization (regression)
    std: Optional[np.ndarray] = None

    def apply(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x).astype(np.float32)
        if self.divisor != 1.0:
            x = x / np.float32(self.divisor)
        if self.mean is not None:
            x = (x - self.mean) / self.std
        return x

    def apply_torch(self, x: torch.Tensor) -> torch.Tensor:
        """`apply` in torch on x's device (a streamed batch, dlopt.ml.streams): the same
        float32 operations as WithInputTransform."""
        x = x.to(torch.float32)
        if self.divisor != 1.0:
            x = x / self.divisor
        if self.mean is not None:
            mean, std = self._on(x.device)
            x = (x - mean) / std
        return x

    def _on(self, device) -> tuple[torch.Tensor, torch.Tensor]:
        cache = self.__dict__.setdefault("_tensors", {})
        if device not in cache:
            cache[device] = (torch.from_numpy(self.mean).to(device),
                             torch.from_numpy(self.std).to(device))
        return cache[device]

    def to_json(self) -> dict:
        return {"divisor": self.divisor,
                "mean": None if self.mean is None else self.mean.tolist(),
                "std": None if self.std is None else self.std.tolist()}

    @classmethod
    def from_json(cls, d: dict) -> "InputTransform":
        return cls(float(d.get("divisor", 1.0)), _array(d.get("mean")), _array(d.get("std")))


def _array(values) -> np.ndarray | None:
    return None if values is None else np.asarray(values, dtype=np.float32)


def standardizer(x_train: np.ndarray, divisor: float = 1.0, axis=0,
                 min_std: float = 1e-6, add_std: float = 0.0) -> InputTransform:
    """Fit mean/std on the training split (after `divisor`). A feature constant on the
    training split (a digits border pixel) keeps scale 1: dividing by its ~0 std would turn
    a rare nonzero validation/test value into a 1e5 outlier."""
    x = InputTransform(divisor).apply(x_train)
    mean = x.mean(axis=axis, keepdims=True)[0]
    std = x.std(axis=axis, keepdims=True)[0] + np.float32(add_std)
    if not add_std:
        std = np.where(std > min_std, std, 1.0).astype(np.float32)
    return InputTransform(divisor, mean.astype(np.float32), std.astype(np.float32))


class WithInputTransform(torch.nn.Module):
    """The network behind its input transform: takes raw arrays, as a registered model does."""

    def __init__(self, transform: InputTransform, network: torch.nn.Module):
        super().__init__()
        self.divisor = transform.divisor
        self.register_buffer("mean", None if transform.mean is None else torch.from_numpy(transform.mean))
        self.register_buffer("std", None if transform.std is None else torch.from_numpy(transform.std))
        self.network = network

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.as_tensor(x).to(torch.float32)
        if self.divisor != 1.0:
            x = x / self.divisor
        if self.mean is not None:
            x = (x - self.mean) / self.std
        return self.network(x)
