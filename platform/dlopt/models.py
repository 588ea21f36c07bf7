"""Model catalog: arch name -> builder(spec.Model, input_shape, out_features)."""
from __future__ import annotations

import importlib
import math

from torch import nn

from dlopt.spec import Model

ACTIVATIONS = {
    "relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "gelu": nn.GELU,
    "leaky_relu": nn.LeakyReLU, "elu": nn.ELU, "silu": nn.SiLU,
}


def mlp(spec: Model, input_shape, out_features: int) -> nn.Module:
    layers: list[nn.Module] = [nn.Flatten()]
    width = math.prod(input_shape)
    for h in spec.hidden:
        layers += [nn.Linear(width, h), ACTIVATIONS[spec.activation]()]
        if spec.dropout > 0:
            layers.append(nn.Dropout(spec.dropout))
        width = h
    layers.append(nn.Linear(width, out_features))
    return nn.Sequential(*layers)


def linear(spec: Model, input_shape, out_features: int) -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), out_features))


def import_path(path: str):
    module, _, attr = path.partition(":")
    return getattr(importlib.import_module(module), attr)


MODELS = {
    "mlp": mlp,
    "linear": linear,
}


def build(spec: Model, input_shape, out_features: int) -> nn.Module:
    if spec.arch in MODELS:
        return MODELS[spec.arch](spec, input_shape, out_features)
    if ":" in spec.arch:
        return import_path(spec.arch)(spec, input_shape, out_features)
    from dlopt import vision_models  # conv nets live apart from the dense ones

    return vision_models.MODELS[spec.arch](spec, input_shape, out_features)
