"""Stages: techniques that hook into the training loop at a few named events.

Composer-style: each stage reacts to events by name; the loop calls `run_event(stages,
event, state)`, which runs every stage in spec order. A stage's math lives in a pure
function beside it, testable without the loop or Ray. Where each event sits in the loop:
`Event` (docs/architecture.md, "The training loop and its events").
"""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Callable, Optional, Union

import torch


class Event(str, Enum):
    """The points of dlopt.train.loop.fit where stages run, drawn as the loop::

        build model, optimizer, LR schedule (the strategy wraps or splits the model)
        SETUP             on the whole model: attach masks, prepare QAT, measure dense size
        resume: load model, optimizer and stage state from the checkpoint
        for epoch:
            for batch:
                forward, loss
                LOSS              state.loss may still change: penalties, distillation
                backward
                AFTER_BACKWARD    gradients ready, optimizer not stepped: clipping
                optimizer step
                AFTER_STEP        weights changed: pruning keeps pruned weights at zero
            validate (a non-finite loss reports `diverged` and ends the run here)
            EPOCH_END         state.metrics is this epoch's: early stopping, QAT switch-on
            report metrics (+ checkpoint) when the cadence says so
        gather the full model onto rank 0
        FIT_END           compress the trained model into state.artifact
        final report

    Under the pipeline strategy one schedule call runs forward and backward of every
    microbatch, so LOSS never fires there (the spec refuses the stages that need it).
    A stage handles an event with a method of the same name; a misspelled event is an error.
    """

    SETUP = "setup"
    LOSS = "loss"
    AFTER_BACKWARD = "after_backward"
    AFTER_STEP = "after_step"
    EPOCH_END = "epoch_end"
    FIT_END = "fit_end"


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
    dense: dict = field(default_factory=dict)  # the dense model's measures taken at setup
    artifact: Any = None  # what fit_end stages produce for saving (see dlopt.artifact)
    evaluate: Optional[Callable] = None  # evaluate(model) -> metrics on validation


class Stage:
    """Base: override the events you need. `state_dict`/`load_state_dict` survive restarts."""

    name = "stage"

    def run(self, event: Union[Event, str], state: State) -> None:
        handler = getattr(self, Event(event).value, None)  # ValueError on a misspelled event
        if handler is not None:
            handler(state)

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, data: dict) -> None:
        pass


def run_event(stages: list[Stage], event: Union[Event, str], state: State) -> None:
    event = Event(event)  # a misspelled event fails here, even with no stage listening
    for stage in stages:
        stage.run(event, state)
