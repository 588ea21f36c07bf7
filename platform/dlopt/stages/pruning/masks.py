"""Magnitude pruning as pure functions on torch.nn.utils.prune: schedules, masks, agreement.

The Prune stage (dlopt.stages.pruning.stage) and the FSDP masks (dlopt.stages.pruning.sharded)
both use them. No stage, no loop, no Ray: testable on a bare module.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import prune

from dlopt.ml import collectives

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
    return masks_from([_importance(m) for m in mods], [m.weight_mask for m in mods],
                      sparsity, scope, structured, norm)


def masks_from(importance: list[torch.Tensor], current: list[torch.Tensor], sparsity: float,
               scope: str, structured: bool, norm: str = "l1") -> list[torch.Tensor]:
    """The mask math on plain tensors (weights' importance, current masks); shared by the
    reparametrized (DDP) path and the sharded (FSDP) path, which passes gathered weights."""
    if structured:
        n = 1 if norm == "l1" else 2
        return [prune.LnStructured(round(sparsity * w.shape[0]), n=n, dim=0)
                .compute_mask(w, c) for w, c in zip(importance, current)]
    if scope == "layer":
        return [prune.L1Unstructured(round(sparsity * w.numel())).compute_mask(w, c)
                for w, c in zip(importance, current)]
    scores = torch.cat([w.reshape(-1) for w in importance])
    flat_current = torch.cat([c.reshape(-1) for c in current])
    flat = prune.L1Unstructured(round(sparsity * scores.numel())).compute_mask(scores,
                                                                               flat_current)
    out, offset = [], 0
    for c in current:
        out.append(flat[offset:offset + c.numel()].reshape(c.shape))
        offset += c.numel()
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


@torch.no_grad()
def zero_dead_biases(mods: list[nn.Module]) -> None:
    """Structured pruning: the bias of a pruned row is kept at zero too, so the unit outputs
    act(0) whatever the input and can be cut out of the saved model (dlopt.ml.shrink)."""
    for m in mods:
        if m.bias is None:
            continue
        w = m.weight_mask if hasattr(m, "weight_mask") else m.weight
        m.bias.mul_((w.reshape(w.shape[0], -1) != 0).any(dim=1).to(m.bias.dtype))


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
    return tensors_agree([m.weight_mask for m in mods], world)


def tensors_agree(masks: list[torch.Tensor], world: int) -> bool:
    """True when every rank holds the same (full, plain) masks. Collective."""
    if world == 1:
        return True
    # on the masks' device, the model's: the strategy's (docs/architecture.md, "Devices")
    flat = torch.cat([m.reshape(-1).double() for m in masks])
    pos = torch.arange(1, flat.numel() + 1, dtype=torch.float64, device=flat.device)
    fp = torch.stack([flat.sum(), (flat * pos).sum(), (flat * pos.sqrt()).sum()])
    lo = collectives.reduce_on_device(fp.clone(), "min")
    hi = collectives.reduce_on_device(fp.clone(), "max")
    return bool(torch.equal(lo, hi))


# ------------------------------------------------------------------ the stage
