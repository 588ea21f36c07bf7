"""Per-layer sparsity chosen under a global parameter budget, from measured layer sensitivity.

`Prune(allocation="sensitivity")` (dlopt.stages.pruning.stage) calls these when its first mask
update is due: `sensitivity` prunes one layer alone at a few levels (torch's `L1Unstructured`
mask written into the layer's `weight_mask`, the same reparametrization the stage trains
with) and records the drop of the validation metric that `evaluate` reports (the stage passes
the validation split, never the test split); `allocate` then picks one level per layer so that
the pruned weights reach the global budget with the least summed predicted drop.
Hand-written because neither torch.nn.utils.prune nor torch-pruning chooses per-layer amounts
from a sensitivity table (docs/architecture.md, "The training loop and its events": a stage's math is a pure
function beside it). `allocate` is a pure
function; under DDP rank 0 measures and the stage broadcasts its choice through
dlopt.ml.collectives, so every rank prunes to the same per-layer sparsities.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn
from torch.nn.utils import prune

LEVELS = (0.5, 0.7, 0.8, 0.9, 0.95, 0.97, 0.98, 0.99)  # measured per layer, plus the budget


def levels_for(budget: float) -> list[float]:
    return sorted({*LEVELS, round(float(budget), 6)})


@torch.no_grad()
def sensitivity(mods: Sequence[nn.Module], levels: Sequence[float],
                evaluate: Callable[[], float]) -> list[dict[float, float]]:
    """Metric drop per layer and level: that layer pruned alone (on top of its current mask),
    every other layer as it is. `mods` carry torch's reparametrization (`weight_orig`,
    `weight_mask`); each layer's mask is restored before the next is measured."""
    base = evaluate()
    table = []
    for m in mods:
        saved = m.weight_mask.clone()
        importance = (m.weight_orig * saved).detach()
        row = {}
        for level in levels:
            amount = round(float(level) * importance.numel())
            m.weight_mask.copy_(prune.L1Unstructured(amount).compute_mask(importance, saved))
            row[float(level)] = base - evaluate()
        m.weight_mask.copy_(saved)
        table.append(row)
    return table


def layer_masks(mods: Sequence[nn.Module], sparsities: Sequence[float]) -> list[torch.Tensor]:
    """Masks reaching each layer's own sparsity (L1 within the layer; masks only grow)."""
    out = []
    for m, s in zip(mods, sparsities):
        importance = (m.weight_orig * m.weight_mask).detach()
        amount = round(float(s) * importance.numel())
        out.append(prune.L1Unstructured(amount).compute_mask(importance, m.weight_mask))
    return out


def allocate(sizes: Sequence[int], drops: Sequence[dict[float, float]],
             budget: float) -> list[float]:
    """One level per layer: fraction of all `sizes` pruned >= `budget`, least summed drop.

    Greedy on the marginal drop per parameter pruned (ties: lower layer index first), from
    level 0 for every layer; deterministic. Raises ValueError when the budget is unreachable.
    """
    if len(sizes) != len(drops) or not sizes:
        raise ValueError("one sensitivity row per layer is needed")
    levels = [sorted({0.0, *row}) for row in drops]
    total = sum(sizes)
    if sum(s * lv[-1] for s, lv in zip(sizes, levels)) < budget * total - 1e-9:
        raise ValueError(f"budget {budget} above what the measured levels can prune")
    at = [0] * len(sizes)

    def cost(i: int, k: int) -> float:
        return 0.0 if levels[i][k] == 0.0 else drops[i][levels[i][k]]

    while sum(s * lv[a] for s, lv, a in zip(sizes, levels, at)) < budget * total - 1e-9:
        best = None
        for i, s in enumerate(sizes):
            if at[i] + 1 >= len(levels[i]):
                continue
            gained = s * (levels[i][at[i] + 1] - levels[i][at[i]])
            ratio = max(cost(i, at[i] + 1) - cost(i, at[i]), 0.0) / gained
            if best is None or ratio < best[0]:
                best = (ratio, i)
        at[best[1]] += 1
    return [lv[a] for lv, a in zip(levels, at)]


def kept(sizes: Sequence[int], sparsities: Sequence[float]) -> list[int]:
    """Parameters kept per layer at the chosen sparsities (the per-layer report's column)."""
    return [s - round(s * p) for s, p in zip(sizes, sparsities)]
