"""Optimizer catalog: name -> builder(spec.Optimizer, params). All of them are torch.optim.

`gd` is torch's SGD too: what makes it full-batch gradient descent is the loop taking
the whole training shard as one batch (see `train.steps.batch_size_for`).
"""
from __future__ import annotations

import torch

from dlopt.ml.components import import_path
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


def apply_spec(optimizer: torch.optim.Optimizer, spec: Optimizer, scheduler=None) -> None:
    """Set lr, momentum and weight decay from `spec` on an optimizer whose state was loaded.

    `load_state_dict` restores the hyperparameters saved with the state. After a PBT
    exploit the spec holds new values: the lr keeps its place in the schedule (scaled by
    new base lr / old base lr, and the scheduler's base_lrs follow), momentum and weight
    decay are replaced. With the same spec (a plain restart) nothing changes.
    """
    for group in optimizer.param_groups:
        base = group.get("initial_lr", group["lr"])
        if base > 0 and base != spec.lr:
            group["lr"] = group["lr"] * spec.lr / base
        if "initial_lr" in group:
            group["initial_lr"] = spec.lr
        elif base != spec.lr:
            group["lr"] = spec.lr
        if "momentum" in group:
            group["momentum"] = spec.momentum
        if "weight_decay" in group:
            group["weight_decay"] = spec.weight_decay
    if scheduler is not None and hasattr(scheduler, "base_lrs"):
        scheduler.base_lrs = [g.get("initial_lr", g["lr"]) for g in optimizer.param_groups]
