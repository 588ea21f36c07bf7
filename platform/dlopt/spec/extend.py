"""`dlopt run SPEC --extend N`: the plan of N more trials added to an earlier sweep.

The extension keeps the earlier sweep's name (its MLflow parent run is found by the
`dlopt.sweep` tag and reused; its child runs are numbered on) but runs in a Tune run
directory of its own, `SWEEP-xN-YYYYmmdd-HHMMSS` (a new `Tuner.fit`: a finished Tune
experiment cannot be given more samples by `Tuner.restore`). Which algorithms can be
extended is checked here, before anything starts (exit 2, one line naming what is wrong);
the driver finds the sweep and its trials (dlopt.driver.extend; docs/architecture.md,
"Extending a sweep"). Pure Python.
"""
from __future__ import annotations

import re
from dataclasses import replace
from datetime import datetime, timezone
from typing import Optional

from dlopt.spec.load import SpecError
from dlopt.spec.plan import Plan
from dlopt.spec.start_points import WARM_START_ALGORITHMS

# random needs nothing from the earlier trials (a new seed); Optuna's samplers learn them
EXTEND_ALGORITHMS = ("random", *WARM_START_ALGORITHMS)


def extend_problems(plan: Plan, n: int) -> list[str]:
    """Why `--extend n` cannot work for this plan (one line each; [] when it can)."""
    if n < 1:
        return [f"--extend: the number of trials to add must be at least 1 (got {n})"]
    if plan.algorithm == "grid" or plan.grid_points > 1:
        return ["--extend: a grid sweep has no further points to try (search.algorithm "
                f"{plan.algorithm!r}, {plan.grid_points} grid points); raise num_samples "
                "or use a 'random' or 'bayesian' search"]
    if plan.algorithm not in EXTEND_ALGORITHMS:
        return [f"--extend: search.algorithm {plan.algorithm!r} cannot be given the earlier "
                f"trials; extend a {', '.join(repr(a) for a in EXTEND_ALGORITHMS)} search"]
    if plan.objectives and plan.algorithm != "random":
        return ["--extend: a multi-objective 'bayesian' search (NSGA-II) cannot be given the "
                "earlier trials; extend a 'random' multi-objective search"]
    return []


def extending(plan: Plan, n: int) -> Plan:
    """The plan of `n` more trials (the earlier sweep is found when the run starts: `onto`);
    raises SpecError where the search cannot be extended. The start points were tried by
    the earlier sweep and are not repeated."""
    problems = extend_problems(plan, n)
    if problems:
        raise SpecError(problems)
    detail = plan.sampler_detail if plan.algorithm == "random" else (
        plan.sampler_detail.split(":")[0] + ": the earlier trials are told to it before the "
        f"first suggestion (they count toward its warm-up of {plan.setting('warmup_trials')}), "
        f"then each of the {n} new trials is modelled on every trial finished so far")
    return replace(plan, extend=n, num_samples=n, trials=n, start_points=[],
                   max_concurrent_trials=min(plan.max_concurrent_trials, n),
                   sampler_detail=detail)


def onto(plan: Plan, sweep_name: str, earlier: int, tune_dir: Optional[str] = None,
         now: Optional[datetime] = None) -> Plan:
    """The extension plan placed on the sweep `sweep_name` with `earlier` trials so far: the
    sweep's name (its parent run), a Tune run directory of its own, and a search seed offset
    by `earlier` (the same seed would draw the first trials' configurations again)."""
    stamp = (now or datetime.now(timezone.utc)).strftime("%Y%m%d-%H%M%S")
    return replace(plan, sweep_name=sweep_name, earlier_trials=earlier,
                   tune_dir=tune_dir or f"{sweep_name}-x{plan.extend}-{stamp}")


def extension_size(dir_name: str, sweep_name: str) -> Optional[int]:
    """N where `dir_name` is an extension directory `SWEEP-xN-stamp` of `sweep_name`."""
    m = re.match(re.escape(sweep_name) + r"-x(\d+)-\d{8}-\d{6}$", dir_name)
    return int(m.group(1)) if m else None
