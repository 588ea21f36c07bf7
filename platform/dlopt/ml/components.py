"""Pieces the catalogs share: activation classes by name, custom components by import path."""
from __future__ import annotations

import importlib

from torch import nn

ACTIVATIONS = {
    "relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "gelu": nn.GELU,
    "leaky_relu": nn.LeakyReLU, "elu": nn.ELU, "silu": nn.SiLU,
}


def import_path(path: str):
    """A custom component named "pkg.module:attr" (docs/architecture.md, "Catalogs")."""
    module, _, attr = path.partition(":")
    return getattr(importlib.import_module(module), attr)
