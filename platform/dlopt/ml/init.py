"""Weight init catalog: name -> function(weight tensor), applied to Linear/Conv weights; biases zero.

Applied after seeding with the experiment's seed, so every DDP rank builds the same
weights (DDP also broadcasts rank 0's, but tests and single-worker runs rely on the seed).
"""
from __future__ import annotations

import math

import torch
from torch import nn


def normal_fan_in(weight: torch.Tensor) -> None:
    """N(0, 1/fan_in): LeCun normal; torch has no one-call version of it."""
    fan_in = weight[0].numel()
    nn.init.normal_(weight, 0.0, 1.0 / math.sqrt(fan_in))


INITS = {
    "xavier_uniform": nn.init.xavier_uniform_,
    "xavier_normal": nn.init.xavier_normal_,
    "kaiming_uniform": lambda w: nn.init.kaiming_uniform_(w, nonlinearity="relu"),
    "kaiming_normal": lambda w: nn.init.kaiming_normal_(w, nonlinearity="relu"),
    "orthogonal": nn.init.orthogonal_,
    "normal_fan_in": normal_fan_in,
}


def apply(model: nn.Module, name: str) -> nn.Module:
    if name == "default":  # torch's own per-layer default
        return model
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            with torch.no_grad():
                INITS[name](module.weight)
                if module.bias is not None:
                    module.bias.zero_()
    return model
