"""Knowledge distillation (Hinton et al. 2015) from a registered teacher.

loss = alpha * T^2 * KL(softmax(t/T) || softmax(s/T)) + (1 - alpha) * CE(s, y)

The T^2 factor keeps the soft-target gradients on the scale of the hard-target ones
when T changes. The teacher is resolved and pinned to one registry version once, by the
driver before the sweep (dlopt.registry.teachers.fetch); its files reach this stage's
constructor through the trial and the loop (`teachers`, dlopt.stages.catalog.build), and it
runs in eval mode, without gradients, on every worker.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from typing import Optional

from dlopt.artifact import teachers as teachers_mod
from dlopt.artifact.teachers import TeacherPayloads
from dlopt.ml.devices import model_device
from dlopt.stages import CompressionStage, State


def soft_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float
              ) -> torch.Tensor:
    """T^2 * KL(softmax(t/T) || softmax(s/T)), averaged over the batch."""
    t = temperature
    return F.kl_div(F.log_softmax(student_logits.float() / t, dim=-1),
                    F.log_softmax(teacher_logits.float() / t, dim=-1),
                    reduction="batchmean", log_target=True) * (t * t)


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, targets: torch.Tensor,
            temperature: float, alpha: float) -> torch.Tensor:
    hard = F.cross_entropy(student_logits.float(), targets)
    return alpha * soft_loss(student_logits, teacher_logits, temperature) + (1 - alpha) * hard


class Distill(CompressionStage):
    name = "distill"

    def __init__(self, spec, experiment, teachers: Optional[TeacherPayloads] = None):
        self.spec = spec
        self.label_smoothing = experiment.regularization.label_smoothing
        self.files = teachers_mod.pinned(teachers, spec.teacher)  # fails here, not mid-run
        self.teacher = None

    def setup(self, state: State) -> None:
        self.teacher = teachers_mod.load(self.files, state.device)

    def loss(self, state: State) -> None:
        """Swap the loop's hard loss term for the KD mix; other terms (penalties) stay."""
        x, y = state.batch
        with torch.no_grad():
            teacher_logits = self.teacher(x)
        hard = F.cross_entropy(state.outputs.float(), y, label_smoothing=self.label_smoothing)
        a = self.spec.alpha
        soft = soft_loss(state.outputs, teacher_logits, self.spec.temperature)
        state.loss = state.loss + a * (soft - hard)

    @torch.no_grad()
    def agreement(self, model: torch.nn.Module, split) -> float:
        """Each model runs on the device it is on (at fit_end the student may have been
        gathered to the CPU while the teacher stayed on the trial's device)."""
        was = model.training
        model.eval()
        ours = model(split.x.to(model_device(model))).argmax(1).cpu()
        theirs = self.teacher(split.x.to(model_device(self.teacher))).argmax(1).cpu()
        same = (ours == theirs).float().mean().item()
        model.train(was)
        return same

    def fit_end(self, state: State) -> None:
        state.add_compression_metrics({
            "distill_teacher_agreement": self.agreement(state.model, state.datasets.val),
            "distill_teacher_version": int(self.files.version)})
        self.teacher = None  # free it before compression and saving
