"""Structured pruning of graph models while training: masks per dependency group.

A residual add ties the channels of the tensors it sums (dlopt.ml.residual), so a per-layer row
mask (torch's `LnStructured`, what chain models train with) masks channels the final cut cannot
remove alone, and the cut's own choice differs from what was trained. Here the masks are the
cut's plan itself: at each mask update `residual.plan` ranks each dependency group's channels
by their summed L1 magnitude over the group (torch-pruning's `MagnitudeImportance`) at the
schedule's sparsity, earlier choices kept; every member's output channels of the chosen ones
(conv/linear rows and biases, BN affine entries) are held at zero after every optimizer step.
The epochs after the schedule's last update are fine-tuning of the masked structure, and the
cut at fit_end removes exactly the masked channels (`residual.cut` with the same plan), so it
changes no prediction (act(0) == 0 is a spec check for conv nets: a masked channel outputs 0).

Why not torch's pruning reparametrization here: a group spans conv, BN and the adds between
them, which `weight_mask` on Linear/Conv does not express (BN's affine would keep a masked
channel alive); zeroing after the step is what the reparametrized path does too (`zero_pruned`).

DDP (docs/architecture.md, "Devices"): rank 0 plans on its bare module and the plan is broadcast
through dlopt.ml.collectives on the strategy's device, as the sensitivity allocation is; the
plan is the stage's state, so it is checkpointed and kept across restarts.
"""
from __future__ import annotations

import torch
from torch import nn

from dlopt.ml import collectives, residual
from dlopt.ml.devices import model_device
from dlopt.stages.pruning.masks import tensors_agree


def bare(model: nn.Module) -> nn.Module:
    """DDP's module (no collectives in its forward), else the model."""
    return getattr(model, "module", model)


class GroupMasks:
    """The plan ({root module name: output channels removed}) and the members it zeroes."""

    def __init__(self):
        self.roots: dict[str, list[int]] = {}
        self.masked: dict[str, list[int]] = {}
        self._dg = None  # (model, torch-pruning's graph of it): values change, not the shape

    def example(self, state) -> torch.Tensor:
        model = bare(state.model)
        return state.datasets.val.x[:1].to(model_device(model)).float()

    def update(self, state, sparsity: float, world: int) -> bool:
        """Raise every group to `sparsity`, decided on rank 0 and broadcast; True when every
        rank then holds the same plan. Collective when `world` > 1."""
        model = bare(state.model)
        plan = None
        if state.rank == 0:
            if self._dg is None or self._dg[0] is not model:
                self._dg = (model, residual.graph(model, self.example(state)))
            dg = self._dg[1]
            roots = residual.plan(model, self.example(state), sparsity, dg, self.roots)
            plan = (roots, residual.members(model, dg, roots))
        if world > 1:
            plan = collectives.broadcast_object(plan, 0, state.device)
        self.roots, self.masked = plan
        self.apply(state.model)
        return tensors_agree([self.fingerprint(state.device)], world)

    def fingerprint(self, device) -> torch.Tensor:
        flat = [float(i) for name in sorted(self.masked) for i in self.masked[name]]
        return torch.tensor([float(len(flat)), *flat], dtype=torch.float64, device=device)

    def apply(self, model: nn.Module) -> None:
        if self.masked:
            residual.zero_channels(bare(model), self.masked)

    def cut(self, state) -> dict[str, list[int]]:
        """Remove the masked channels (the model's outputs do not change); the pruned shapes."""
        model = bare(state.model)
        self.apply(model)
        if self.roots:
            residual.cut(model, self.example(state), self.roots)
        return residual.shapes(model)

    def state_dict(self) -> dict:
        return {"roots": self.roots, "masked": self.masked}

    def load_state_dict(self, data: dict | None) -> None:
        data = data or {}
        self.roots = {k: list(v) for k, v in data.get("roots", {}).items()}
        self.masked = {k: list(v) for k, v in data.get("masked", {}).items()}
