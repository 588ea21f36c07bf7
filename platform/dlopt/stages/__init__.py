"""Stages: techniques that hook into the training loop at a few named events.

Composer-style: each stage reacts to events by name; the loop calls `run_event(stages,
event, state)`, which runs every stage in spec order. A stage's math lives in a pure
function beside it, testable without the loop or Ray. Where each event sits in the loop:
`Event` (docs/architecture.md, "The training loop and its events").
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Callable, Mapping, Optional, Union

import torch

from dlopt.artifact.compact import CompactArtifact
from dlopt.ml.splits import Datasets
from dlopt.spec import Experiment


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
        FIT_END           compress the trained model into state.compression
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


@dataclass(frozen=True)
class DenseMeasures:
    """The dense model's size, measured once on a fresh CPU build of the spec's architecture
    (dlopt.stages.compression.dense_measures): what the compressed model is compared with."""

    param_count: int
    flops: int
    weights: int  # Linear/Conv weights, what `sparsity` counts against


@dataclass(frozen=True)
class CompressionResult:
    """What the compression stages produce at FIT_END: the artifact the loop saves (None:
    save the dense model) and the entries they add to the final report (`metrics`, e.g.
    `compressed_val_accuracy`, `prune_sparsity`, `dense_bytes`). Each stage hands on a new
    one (`with_metrics`, `with_artifact`); the worker turns the last into the final report
    (dlopt.train.loop.final_metrics)."""

    artifact: Optional[CompactArtifact] = None
    metrics: Mapping[str, Any] = field(default_factory=dict)

    def with_metrics(self, entries: Mapping[str, Any]) -> "CompressionResult":
        return dataclasses.replace(self, metrics={**self.metrics, **entries})

    def with_artifact(self, artifact: Optional[CompactArtifact]) -> "CompressionResult":
        return dataclasses.replace(self, artifact=artifact)


@dataclass
class State:
    """What stages may read and change; the loop owns it."""

    spec: Experiment
    model: torch.nn.Module  # the bare module (unwrapped from DDP)
    optimizer: Optional[torch.optim.Optimizer] = None
    datasets: Optional[Datasets] = None
    rank: int = 0
    world: int = 1
    device: str = "cpu"
    epoch: int = 0  # 0-based index of the current epoch
    step: int = 0  # optimizer steps taken so far
    steps_per_epoch: int = 1
    batch: Optional[tuple[torch.Tensor, torch.Tensor]] = None  # (x, y) of the current step
    outputs: Optional[torch.Tensor] = None
    loss: Optional[torch.Tensor] = None
    metrics: dict = field(default_factory=dict)  # last epoch's metrics
    stop: bool = False
    compression: CompressionResult = field(default_factory=CompressionResult)
    # final-report entries about the run itself: divergence, how the model was spread
    run_entries: dict = field(default_factory=dict)
    dense: Optional[DenseMeasures] = None  # taken at the first fit_end that needs them
    evaluate: Optional[Callable[[torch.nn.Module], dict]] = None  # metrics on validation

    def add_compression_metrics(self, entries: Mapping[str, Any]) -> None:
        self.compression = self.compression.with_metrics(entries)


class Stage:
    """Base: override the events you need. `state_dict`/`load_state_dict` survive restarts.

    One name per meaning: this is the object that runs in the loop; what the spec configures
    is a `dlopt.spec.StageSpec`, and a pipeline rank's slice of the model is a
    `dlopt.train.pipeline.PipelinePart`."""

    name = "stage"

    def run(self, event: Union[Event, str], state: State) -> None:
        handler = getattr(self, Event(event).value, None)  # ValueError on a misspelled event
        if handler is not None:
            handler(state)

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, data: dict) -> None:
        pass


@dataclass(frozen=True)
class StageOutput:
    """What a compression stage leaves for its artifact after its fit_end (read by
    dlopt.stages.compression.record): torchao quantization settings, the widths left by
    structured removal, the ONNX Runtime int8 model and its meta."""

    quantization: Optional[dict] = None
    widths: Mapping[str, int] = field(default_factory=dict)
    shapes: Mapping[str, list] = field(default_factory=dict)  # graph models (dlopt.ml.residual)
    onnx: Optional[bytes] = None
    onnx_meta: Mapping[str, Any] = field(default_factory=dict)


class CompressionStage(Stage):
    """A stage that compresses the model at FIT_END (prune, quantize, distill)."""

    def output(self) -> StageOutput:
        return StageOutput()


def run_event(stages: list[Stage], event: Union[Event, str], state: State) -> None:
    event = Event(event)  # a misspelled event fails here, even with no stage listening
    for stage in stages:
        stage.run(event, state)
