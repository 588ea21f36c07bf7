"""Pareto fronts over finished trials: pure Python, no Ray, no torch.

A multi-objective sweep ends with every trial's objective values; the driver keeps
the trials no other trial beats on all objectives at once (rank 1), and ranks the
rest by non-dominated sorting (rank 2 = the front once rank 1 is removed, ...).

Why hand-written: Optuna computes the front of *its own* study (`study.best_trials`),
but the driver's trials come from Ray Tune results (any search algorithm, including
grid and random), and the objectives may be metrics Optuna never saw (the final
compression report). The computation is a few lines of textbook non-dominated sorting.
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence


def _signed(point: Mapping[str, float], objectives: Mapping[str, str]) -> tuple[float, ...]:
    """The point as a tuple in which larger is always better."""
    return tuple(point[k] if mode == "max" else -point[k] for k, mode in objectives.items())


def dominates(a: Mapping[str, float], b: Mapping[str, float], objectives: Mapping[str, str]) -> bool:
    """True when `a` is at least as good as `b` on every objective and better on one."""
    sa, sb = _signed(a, objectives), _signed(b, objectives)
    return all(x >= y for x, y in zip(sa, sb)) and any(x > y for x, y in zip(sa, sb))


def valid(point: Mapping[str, float], objectives: Mapping[str, str]) -> bool:
    """A point takes part only when every objective is a finite number."""
    for k in objectives:
        v = point.get(k)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            return False
    return True


def ranks(points: Sequence[Mapping[str, float]], objectives: Mapping[str, str]) -> list[int | None]:
    """Pareto rank of each point (1 = on the front); None for points missing an objective."""
    out: list[int | None] = [None] * len(points)
    left = [i for i, p in enumerate(points) if valid(p, objectives)]
    rank = 1
    while left:
        front = [i for i in left
                 if not any(dominates(points[j], points[i], objectives) for j in left if j != i)]
        for i in front:
            out[i] = rank
        left = [i for i in left if out[i] is None]
        rank += 1
    return out


def front(points: Sequence[Mapping[str, float]], objectives: Mapping[str, str]) -> list[int]:
    """Indices of the Pareto-optimal points (rank 1), in input order."""
    return [i for i, r in enumerate(ranks(points, objectives)) if r == 1]


def extremes(points: Sequence[Mapping[str, float]], indices: Sequence[int],
             objectives: Mapping[str, str]) -> dict[str, int]:
    """For each objective, the index (among `indices`) of the best point on it alone.

    Ties go to the earlier index, so the choice is deterministic.
    """
    best: dict[str, int] = {}
    for k, mode in objectives.items():
        sign = 1.0 if mode == "max" else -1.0
        best[k] = max(indices, key=lambda i: (sign * points[i][k], -i)) if indices else None
    return best
