"""Per-layer sparsity chosen under a global parameter budget, from measured layer sensitivity.

Not wired into `Prune` yet (issue 29, third point: partly done). `sensitivity` prunes one layer
alone at a few levels with torch.nn.utils.prune (L1, unstructured) and records the metric drop
that `evaluate` (validation split only: the caller passes it) reports; `allocate` then picks one
level per layer so that the pruned parameters reach the global budget with the least summed
predicted drop. Hand-written because neither torch.nn.utils.prune nor torch-pruning chooses
per-layer amounts from a sensitivity table (docs/architecture.md, "Compression stages").
The choice is a pure function of its inputs, so every DDP rank that measures the same table
chooses the same sparsities; ranks that measure on different shards must broadcast the table
from rank 0 through dlopt.ml.collectives first.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn
from torch.nn.utils import prune


def sensitivity(mods: Sequence[nn.Module], levels: Sequence[float],
                evaluate: Callable[[], float]) -> list[dict[float, float]]:
    """Metric drop per layer and level: that layer pruned alone, every other layer intact."""
    base = evaluate()
    table = []
    for m in mods:
        original = m.weight.detach().clone()
        row = {}
        for level in levels:
            prune.l1_unstructured(m, "weight", amount=float(level))
            row[float(level)] = base - evaluate()
            prune.remove(m, "weight")
            with torch.no_grad():
                m.weight.copy_(original)
        table.append(row)
    return table


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
