"""Stages: techniques that hook into the training loop at a few named events.

Composer-style: each stage reacts to events by name; the loop calls `run(event, state)`
on every stage in spec order. A stage's math lives in a pure function beside it,
testable without the loop or Ray.

Events: setup, loss, after_backward, after_step, epoch_end, fit_end.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch

EVENTS = ("setup", "loss", "after_backward", "after_step", "epoch_end", "fit_end")


@dataclass
class State:
    """What stages may read and change; the loop owns it."""

    spec: Any
    model: torch.nn.Module  # the bare module (unwrapped from DDP)
    optimizer: Optional[torch.optim.Optimizer] = None
    datasets: Any = None
    rank: int = 0
    world: int = 1
    device: str = "cpu"
    epoch: int = 0  # 0-based index of the current epoch
    step: int = 0  # optimizer steps taken so far
    steps_per_epoch: int = 1
    batch: Any = None  # (x, y) of the current step
    outputs: Optional[torch.Tensor] = None
    loss: Optional[torch.Tensor] = None
    metrics: dict = field(default_factory=dict)  # last epoch's metrics
    stop: bool = False
    report: dict = field(default_factory=dict)  # final compression report entries
    artifact: Any = None  # what fit_end stages produce for saving (see dlopt.artifact)
    evaluate: Optional[Callable] = None  # evaluate(model) -> metrics on validation


class Stage:
    """Base: override the events you need. `state_dict`/`load_state_dict` survive restarts."""

    name = "stage"

    def run(self, event: str, state: State) -> None:
        handler = getattr(self, event, None)
        if handler is not None:
            handler(state)

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, data: dict) -> None:
        pass


def run_event(stages: list[Stage], event: str, state: State) -> None:
    for stage in stages:
        stage.run(event, state)
