"""Checks of the search's starting knowledge and sweep-level stops (`Search.points_to_evaluate`,
`Search.warm_start`, `time_budget_s`, `stop_when`, `stop_on_plateau`): one line per problem,
naming the field path (`search.points_to_evaluate[0].optimizer.lr: ...`), found before
anything starts (docs/architecture.md, "Logging and the terminal"). Pure Python.
"""
from __future__ import annotations

import json
import math
from typing import Any

from pydantic import ValidationError

from dlopt.spec.paths import set_path, shown

# Samplers that learn from earlier results given to them (Optuna's `add_trial`).
WARM_START_ALGORITHMS = ("bayesian", "bayesian_gp")


def in_domain(dom: dict, value: Any) -> bool:
    """Whether `value` is one the domain can produce (choices compared as JSON)."""
    kind = dom["domain"]
    if kind in ("choice", "grid"):
        return any(json.dumps(value, sort_keys=True) == json.dumps(v, sort_keys=True)
                   for v in dom["values"])
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    if kind == "randint":
        return float(value).is_integer() and dom["low"] <= value < dom["high"]
    return math.isfinite(value) and dom["low"] <= value <= dom["high"]


def _describe(dom: dict) -> str:
    if dom["domain"] in ("choice", "grid"):
        return f"one of {dom['values']}"
    upper = "<" if dom["domain"] == "randint" else "<="
    return f"{dom['low']:g} <= value {upper} {dom['high']:g} ({dom['domain']})"


def _field_problem(spec, base: dict, point: dict) -> tuple[str, str] | None:
    """(path, message) of the first field constraint the point breaks, else None."""
    trial = json.loads(json.dumps(base))
    for path, value in point.items():
        set_path(trial, path, value)
    try:
        type(spec).model_validate(trial)
    except ValidationError as err:
        first = err.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        path = next((p for p in point if loc.startswith(p)), loc)
        return path, first["msg"].splitlines()[0]
    return None


def _point_problems(spec, doms: dict, i: int, point: Any, base: dict) -> list[str]:
    where = f"search.points_to_evaluate[{i}]"
    if not isinstance(point, dict):
        return [f"{where}: a point is a dict {{spec path: value}}, got {point!r}"]
    problems = [f"{where}.{path}: not a searched field (searched: {', '.join(doms) or 'none'})"
                for path in point if path not in doms]
    problems += [f"{where}: no value for {path} (a point gives every searched field)"
                 for path in doms if path not in point]
    problems += [f"{where}.{path}: {point[path]!r} is outside the search domain: "
                 f"{_describe(doms[path])}" for path in point
                 if path in doms and not in_domain(doms[path], point[path])]
    if not problems:
        bad = _field_problem(spec, base, point)
        if bad is not None:
            problems.append(f"{where}.{shown(bad[0])}: {bad[1]}")
    return problems


def start_problems(spec, doms: dict) -> list[str]:
    """Every problem of points_to_evaluate, warm_start and the sweep-level stops."""
    search = spec.search
    problems: list[str] = []
    points = search.points_to_evaluate or []
    if points and search.algorithm == "grid":
        problems.append("search.points_to_evaluate: algorithm 'grid' already enumerates every "
                        "point; use 'random' or a model-based algorithm")
    elif points and doms:  # a trial's resolved spec has no domains left: nothing to check
        grid = math.prod(len(d["values"]) for d in doms.values() if d["domain"] == "grid")
        if len(points) > search.num_samples * grid:
            problems.append(f"search.points_to_evaluate: {len(points)} points but the sweep "
                            f"runs {search.num_samples * grid} trials (raise num_samples)")
        base = spec.model_dump(mode="json")
        base["search"] = {}  # validating copies must not re-enter these checks
        for i, point in enumerate(points):
            problems += _point_problems(spec, doms, i, point, base)
    if search.warm_start is not None and (search.algorithm not in WARM_START_ALGORITHMS
                                          or search.objectives):
        problems.append(f"search.warm_start: needs algorithm 'bayesian' or 'bayesian_gp' with "
                        f"one metric (Optuna learns from the earlier trials); algorithm "
                        f"{search.algorithm!r}" + (" with objectives" if search.objectives else "")
                        + " would ignore them")
    if search.warm_start is not None and not search.warm_start.strip():
        problems.append("search.warm_start: name an earlier sweep or its MLflow parent run id")
    searched = list(search.objectives or {search.metric: search.mode})
    for name in search.stop_when or {}:
        if name not in searched:
            problems.append(f"search.stop_when.{name}: the goal must be a searched metric "
                            f"({', '.join(searched)}): its direction is the search's mode")
    if search.stop_on_plateau is not None and search.objectives:
        problems.append("search.stop_on_plateau: needs a single metric (objectives trade off; "
                        "no one value plateaus)")
    return problems
