"""Magnitude pruning with torch.nn.utils.prune: layer or global, unstructured or by rows.

How it stays correct under training, DDP and restarts:
- At setup every target weight gets torch's pruning reparametrization (`prune.identity`):
  the Parameter becomes `weight_orig` (the same object the optimizer and DDP hold) and a
  `weight_mask` buffer is multiplied in by a forward pre-hook. The structure exists before
  DDP wraps the model and before a checkpoint is loaded, so masks resume with the model.
- Mask updates compute the new mask with torch's own `L1Unstructured` / `LnStructured`
  `compute_mask` (over all targets concatenated for global scope, as
  `prune.global_unstructured` does) and copy it *in place* into `weight_mask`: hooks,
  buffers and optimizer references never change. Importance is `weight_orig * mask`, so a
  pruned weight (importance 0) is always among the smallest and masks only grow.
- After each optimizer step `weight_orig` is multiplied by the mask, so momentum or weight
  decay cannot revive a pruned weight, even in the stored parameter.
- Every DDP rank holds the same weights after the gradient all-reduce and runs the same
  deterministic mask computation; `masks_agree` checks that across ranks.

Schedules: "one_shot" prunes to the target at `start_epoch` (then training fine-tunes);
"gradual" follows Zhu & Gupta (2017), s_t = s_f + (s_i - s_f)(1 - (t - t0)/(n dt))^3,
updating masks every `frequency` steps between `start_epoch` and `end_epoch`.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import prune

from dlopt.stages import Stage, State

PRUNABLE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


# ------------------------------------------------------------------ schedule (pure)
def gradual_sparsity(step: int, final: float, start_step: int, end_step: int,
                     initial: float = 0.0) -> float:
    """Zhu & Gupta's cubic schedule at optimizer step `step` (clamped to the window)."""
    if step <= start_step:
        return initial
    if step >= end_step:
        return final
    frac = (step - start_step) / (end_step - start_step)
    return final + (initial - final) * (1.0 - frac) ** 3


def update_due(step: int, start_step: int, end_step: int, frequency: int) -> bool:
    """Masks change every `frequency` steps inside the window, and at its last step."""
    return start_step <= step <= end_step and ((step - start_step) % frequency == 0
                                               or step == end_step)


# ------------------------------------------------------------------ targets and masks
def targets(model: nn.Module, structured: bool) -> list[tuple[str, nn.Module]]:
    """Weights to prune: every Linear/Conv. Structured pruning spares the output layer,
    whose rows are the classes."""
    found = [(name, m) for name, m in model.named_modules() if isinstance(m, PRUNABLE)]
    return found[:-1] if structured and len(found) > 1 else found


def attach(model: nn.Module, structured: bool) -> None:
    """Install torch's pruning reparametrization with an all-ones mask (idempotent)."""
    for _, m in targets(model, structured):
        if not prune.is_pruned(m) or not hasattr(m, "weight_mask"):
            prune.identity(m, "weight")


def _importance(m: nn.Module) -> torch.Tensor:
    return (m.weight_orig * m.weight_mask).detach()


def compute_masks(mods: list[nn.Module], sparsity: float, scope: str, structured: bool,
                  norm: str = "l1") -> list[torch.Tensor]:
    """New masks reaching `sparsity` (a fraction of weights, or of rows when structured)."""
    if structured:
        n = 1 if norm == "l1" else 2
        return [prune.LnStructured(round(sparsity * m.weight_orig.shape[0]), n=n, dim=0)
                .compute_mask(_importance(m), m.weight_mask) for m in mods]
    if scope == "layer":
        return [prune.L1Unstructured(round(sparsity * m.weight_orig.numel()))
                .compute_mask(_importance(m), m.weight_mask) for m in mods]
    scores = torch.cat([_importance(m).reshape(-1) for m in mods])
    current = torch.cat([m.weight_mask.reshape(-1) for m in mods])
    flat = prune.L1Unstructured(round(sparsity * scores.numel())).compute_mask(scores, current)
    out, offset = [], 0
    for m in mods:
        k = m.weight_mask.numel()
        out.append(flat[offset:offset + k].reshape(m.weight_mask.shape))
        offset += k
    return out


@torch.no_grad()
def apply_masks(mods: list[nn.Module], masks: list[torch.Tensor]) -> None:
    for m, mask in zip(mods, masks):
        m.weight_mask.copy_(mask)
        m.weight_orig.mul_(m.weight_mask)
        m.weight = m.weight_orig * m.weight_mask  # what the pre-hook computes at the next forward


@torch.no_grad()
def zero_pruned(mods: list[nn.Module]) -> None:
    for m in mods:
        m.weight_orig.mul_(m.weight_mask)


def make_permanent(model: nn.Module) -> None:
    """Fold masks into the weights (prune.remove): plain Parameters with exact zeros."""
    for m in model.modules():
        if isinstance(m, PRUNABLE) and prune.is_pruned(m) and hasattr(m, "weight_mask"):
            prune.remove(m, "weight")


def mask_sparsity(mods: list[nn.Module]) -> float:
    total = sum(m.weight_mask.numel() for m in mods)
    return sum((m.weight_mask == 0).sum().item() for m in mods) / max(total, 1)


def masks_agree(mods: list[nn.Module], world: int) -> bool:
    """True when every DDP rank holds the same masks (a fingerprint compared by all-reduce)."""
    if world == 1:
        return True
    flat = torch.cat([m.weight_mask.reshape(-1).double().cpu() for m in mods])
    pos = torch.arange(1, flat.numel() + 1, dtype=torch.float64)
    fp = torch.stack([flat.sum(), (flat * pos).sum(), (flat * pos.sqrt()).sum()])
    device = mods[0].weight_mask.device
    lo, hi = fp.clone().to(device), fp.clone().to(device)
    torch.distributed.all_reduce(lo, op=torch.distributed.ReduceOp.MIN)
    torch.distributed.all_reduce(hi, op=torch.distributed.ReduceOp.MAX)
    return bool(torch.equal(lo, hi))


# ------------------------------------------------------------------ the stage
class Prune(Stage):
    name = "prune"

    def __init__(self, spec, experiment):
        self.spec = spec
        self.epochs = experiment.epochs
        self.sparsity = 0.0  # target reached so far
        self.rank_mismatches = 0
        self.updates = 0
        self.forced_at_end = 0

    def _window(self, steps_per_epoch: int) -> tuple[int, int]:
        s = self.spec
        start = s.start_epoch * steps_per_epoch
        if s.schedule == "one_shot":
            return start, start
        end_epoch = s.end_epoch if s.end_epoch is not None else self.epochs
        return start, end_epoch * steps_per_epoch

    def _mods(self, state: State) -> list[nn.Module]:
        return [m for _, m in targets(state.model, self.spec.structured)]

    def target(self, step: int, steps_per_epoch: int) -> float | None:
        """Sparsity to reach at `step`, or None when masks do not change there."""
        start, end = self._window(steps_per_epoch)
        if self.spec.schedule == "one_shot":
            return self.spec.sparsity if step == start else None
        if not update_due(step, start, end, self.spec.frequency):
            return None
        return gradual_sparsity(step, self.spec.sparsity, start, end)

    def _update(self, state: State, sparsity: float) -> None:
        if sparsity <= self.sparsity:
            return
        mods = self._mods(state)
        apply_masks(mods, compute_masks(mods, sparsity, self.spec.scope, self.spec.structured,
                                        self.spec.norm))
        self.sparsity = sparsity
        self.updates += 1
        if not masks_agree(mods, state.world):
            self.rank_mismatches += 1

    # --- events
    def setup(self, state: State) -> None:
        attach(state.model, self.spec.structured)
        if self._window(state.steps_per_epoch)[0] == 0:
            target = self.target(0, state.steps_per_epoch)
            if target is not None:
                self._update(state, target)

    def after_step(self, state: State) -> None:
        mods = self._mods(state)
        zero_pruned(mods)
        target = self.target(state.step, state.steps_per_epoch)
        if target is not None:
            self._update(state, target)

    def fit_end(self, state: State) -> None:
        if self.sparsity < self.spec.sparsity:  # stopped early: reach the target anyway
            self._update(state, self.spec.sparsity)
            self.forced_at_end = 1
        make_permanent(state.model)
        state.report.update({"prune_rank_mask_mismatches": self.rank_mismatches,
                             "prune_mask_updates": self.updates,
                             "prune_forced_at_end": self.forced_at_end})

    def state_dict(self) -> dict:
        return {"sparsity": self.sparsity, "rank_mismatches": self.rank_mismatches,
                "updates": self.updates}

    def load_state_dict(self, data: dict) -> None:
        self.sparsity = data.get("sparsity", 0.0)
        self.rank_mismatches = data.get("rank_mismatches", 0)
        self.updates = data.get("updates", 0)
