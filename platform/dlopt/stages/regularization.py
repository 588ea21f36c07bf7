"""Regularization stages: L1/L2 penalties, gradient clipping, early stopping.

Decoupled weight decay lives in the optimizer (Optimizer.weight_decay), dropout in the
model and label smoothing in the loss function; these are the parts that act on the loop.
"""
from __future__ import annotations

import math

import torch

from dlopt.stages import Stage, State


def weight_params(model: torch.nn.Module) -> list[torch.Tensor]:
    """Weights only (dim > 1): penalties leave biases and norm scales alone."""
    return [p for p in model.parameters() if p.requires_grad and p.dim() > 1]


def l1_l2_penalty(weights: list[torch.Tensor], l1: float, l2: float) -> torch.Tensor:
    """l1 * sum|W| + l2 * sum W^2 over the weights, as a plain scalar tensor.

    Under FSDP each weight is a DTensor shard: its sums are `Partial` (each rank holds its
    shard's share). They are added up while still Partial and made whole with one all-reduce
    (`full_tensor()`), so every rank gets the full-model penalty, the value DDP computes.
    Its backward hands each rank the gradient of its own shard only (Partial -> Replicate
    reduces nothing going back); FSDP then adds that to the rank-averaged loss gradient it
    reduce-scatters into the same shard: the same update as DDP's averaged (loss + penalty)."""
    from torch.distributed.tensor import DTensor

    terms = []
    for w in weights:
        if l1:
            terms.append(l1 * w.abs().sum())
        if l2:
            terms.append(l2 * w.pow(2).sum())
    plain = [t for t in terms if not isinstance(t, DTensor)]
    sharded = [t for t in terms if isinstance(t, DTensor)]
    total = weights[0].to_local().new_zeros(()) if isinstance(weights[0], DTensor) \
        else weights[0].new_zeros(())
    for t in plain:
        total = total + t
    if sharded:
        partial = sharded[0]
        for t in sharded[1:]:
            partial = partial + t
        total = total + partial.full_tensor()
    return total


class Penalty(Stage):
    name = "penalty"

    def __init__(self, l1: float, l2: float):
        self.l1, self.l2 = l1, l2

    def loss(self, state: State) -> None:
        state.loss = state.loss + l1_l2_penalty(weight_params(state.model), self.l1, self.l2)


class GradClip(Stage):
    name = "grad_clip"

    def __init__(self, max_norm=None, max_value=None):
        self.max_norm, self.max_value = max_norm, max_value

    def after_backward(self, state: State) -> None:
        params = [p for p in state.model.parameters() if p.grad is not None]
        if self.max_value is not None:
            torch.nn.utils.clip_grad_value_(params, self.max_value)
        if self.max_norm is not None:
            torch.nn.utils.clip_grad_norm_(params, self.max_norm)


def should_stop(history: list[float], patience: int, mode: str) -> bool:
    """True once the best value is `patience` epochs old."""
    if len(history) <= patience:
        return False
    best_at = max(range(len(history)), key=lambda i: history[i] if mode == "max" else -history[i])
    return len(history) - 1 - best_at >= patience


class EarlyStopping(Stage):
    name = "early_stopping"

    def __init__(self, metric: str, mode: str, patience: int):
        self.metric, self.mode, self.patience = metric, mode, patience
        self.history: list[float] = []

    def epoch_end(self, state: State) -> None:
        value = state.metrics.get(self.metric)
        if value is None or not math.isfinite(value):
            return
        self.history.append(float(value))
        if should_stop(self.history, self.patience, self.mode):
            state.stop = True

    def state_dict(self) -> dict:
        return {"history": self.history}

    def load_state_dict(self, data: dict) -> None:
        self.history = list(data.get("history", []))
