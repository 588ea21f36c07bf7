"""Optimizer catalog: name -> builder(spec.Optimizer, params). All of them are torch.optim.

`gd` is torch's SGD too: what makes it full-batch gradient descent is the loop taking
the whole training shard as one batch (see `train.loop.batch_size_for`).
"""
from __future__ import annotations

import torch

from dlopt.models import import_path
from dlopt.spec import Optimizer


def _sgd(spec: Optimizer, params):
    return torch.optim.SGD(params, lr=spec.lr, momentum=spec.momentum, nesterov=spec.nesterov,
                           weight_decay=spec.weight_decay, **spec.kwargs)


OPTIMIZERS = {
    "gd": _sgd,
    "sgd": _sgd,
    "adam": lambda s, p: torch.optim.Adam(p, lr=s.lr, betas=s.betas, weight_decay=s.weight_decay, **s.kwargs),
    "adamw": lambda s, p: torch.optim.AdamW(p, lr=s.lr, betas=s.betas, weight_decay=s.weight_decay, **s.kwargs),
    "rmsprop": lambda s, p: torch.optim.RMSprop(p, lr=s.lr, momentum=s.momentum,
                                                weight_decay=s.weight_decay, **s.kwargs),
    "adagrad": lambda s, p: torch.optim.Adagrad(p, lr=s.lr, weight_decay=s.weight_decay, **s.kwargs),
}


def build(spec: Optimizer, params) -> torch.optim.Optimizer:
    if spec.name in OPTIMIZERS:
        return OPTIMIZERS[spec.name](spec, params)
    # custom "pkg.module:Class": lr plus the spec's kwargs, nothing guessed
    return import_path(spec.name)(params, lr=spec.lr, **spec.kwargs)
