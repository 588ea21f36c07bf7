"""Model catalog: arch name -> builder(spec.Model, input_shape, out_features)."""
from __future__ import annotations

import math

from torch import nn

from dlopt.ml import vision_models  # conv nets live apart from the dense ones
from dlopt.ml.components import ACTIVATIONS, import_path
from dlopt.spec import Model


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


MODELS = {
    "mlp": mlp,
    "linear": linear,
}


def build(spec: Model, input_shape, out_features: int) -> nn.Module:
    if spec.arch in MODELS:
        return MODELS[spec.arch](spec, input_shape, out_features)
    if ":" in spec.arch:
        return import_path(spec.arch)(spec, input_shape, out_features)
    return vision_models.MODELS[spec.arch](spec, input_shape, out_features)
