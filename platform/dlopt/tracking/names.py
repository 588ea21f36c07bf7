"""How trials and values look in MLflow: run names, param text, the metrics of a result.

Shared by the MLflow writer and the progress table, so a trial has one name in both.
No Ray, no MLflow.
"""
from __future__ import annotations

import json
from typing import Any

from dlopt.spec.report import NOT_METRICS


def numeric_metrics(result: dict) -> dict[str, float]:
    """The metric values of a report: numbers (not bools) under keys that are not protocol
    or Tune bookkeeping (dlopt.spec.report.NOT_METRICS)."""
    out = {}
    for key, value in result.items():
        if key in NOT_METRICS or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        out[key] = float(value)
    return out


def param_text(value: Any) -> str:
    """A param value as MLflow stores it: JSON for lists and dicts, cut to MLflow's 6000 chars."""
    text = json.dumps(value) if isinstance(value, (list, dict)) else str(value)
    return text[:6000]


def short_value(value: Any) -> str:
    """A swept value short enough for a run name: 3 significant digits, stage lists counted."""
    if isinstance(value, float):
        return f"{value:.3g}"
    if isinstance(value, list):
        return f"[{len(value)} stages]" if value and isinstance(value[0], dict) else str(value)
    return str(value)


def trial_run_name(index: int, assignment: dict) -> str:
    """`trial-003 lr=0.031 sparsity=0.9`: the swept values, shortened."""
    parts = [f"{path.rsplit('.', 1)[-1]}={short_value(v)}" for path, v in assignment.items()]
    return " ".join([f"trial-{index:03d}"] + parts)[:250]
