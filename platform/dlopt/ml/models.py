"""The model catalog, `MODELS`: arch name -> builder(spec.Model, input_shape, out_features).

One literal dict for every built-in architecture (docs/architecture.md, "Catalogs"): the
dense builders live here, the conv nets in `dlopt.ml.vision_models`.
"""
from __future__ import annotations

import math

from torch import nn

from dlopt.ml import vision_models
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
    "lenet5": vision_models.lenet5,
    "cnn": vision_models.cnn,
    "resnet": vision_models.resnet,
}


def build(spec: Model, input_shape, out_features: int) -> nn.Module:
    """A catalog model, or a custom one named by import path `"pkg.module:attr"`."""
    if spec.arch not in MODELS and ":" in spec.arch:
        return import_path(spec.arch)(spec, input_shape, out_features)
    return MODELS[spec.arch](spec, input_shape, out_features)
