"""Spec -> ordered list of stages: regularization first, then compression in spec order.

`teachers`: the distillation teachers' files the driver resolved (dlopt.registry.teachers),
handed to the Distill stage's constructor.
"""
from __future__ import annotations

from typing import Optional

from dlopt.artifact.teachers import TeacherPayloads
from dlopt.spec import Experiment
from dlopt.stages import Stage, compression
from dlopt.stages.regularization import EarlyStopping, GradClip, Penalty


def build(spec: Experiment, teachers: Optional[TeacherPayloads] = None) -> list[Stage]:
    reg = spec.regularization
    stages: list[Stage] = []
    if reg.l1 or reg.l2:
        stages.append(Penalty(reg.l1, reg.l2))
    if reg.grad_clip_norm is not None or reg.grad_clip_value is not None:
        stages.append(GradClip(reg.grad_clip_norm, reg.grad_clip_value))
    if reg.early_stopping_patience:
        metric = spec.search.metric if spec.search.objectives is None else "val_loss"
        mode = spec.search.mode if spec.search.objectives is None else "min"
        stages.append(EarlyStopping(metric, mode, reg.early_stopping_patience))
    stages += [compression.build(s, spec, teachers) for s in spec.compression]
    return stages
