"""`Search.warm_start`: an earlier sweep's trials, read from MLflow on the driver.

Before Ray starts, the earlier sweep's parent run (by run id, or by its `dlopt.sweep` name)
and its child runs are read: each child's params (the flattened trial spec) give its config
over this plan's domains, its last value of the searched metric the result, its
`dlopt.status` tag whether it diverged. They reach the sampler as
`dlopt.runtime.steer.WarmTrial`s (docs/architecture.md, "Typed boundaries"); the frozen plan
only names the source.
"""
from __future__ import annotations

import logging
import re
from typing import Any, Optional

from mlflow.tracking import MlflowClient

from dlopt.runtime.steer import WarmTrial
from dlopt.spec import flatten
from dlopt.spec.load import SpecError
from dlopt.spec.plan import Plan
from dlopt.spec.start_points import in_domain
from dlopt.tracking.names import param_text
from dlopt.tracking.startup import at_start, parent_filter

log = logging.getLogger(__name__)
RUN_ID = re.compile(r"^[0-9a-f]{32}$")


def parent_run(client, ref: str, experiment: str):
    """The earlier sweep's parent run: `ref` as a run id, else a sweep name looked up in
    every MLflow experiment (this plan's first); None when nothing matches."""
    if RUN_ID.match(ref):
        try:
            return at_start(lambda: client.get_run(ref), "warm-start run look-up")
        except Exception:  # noqa: BLE001 - not a run id after all; try it as a sweep name
            pass
    exp = at_start(lambda: client.get_experiment_by_name(experiment), "experiment look-up")
    ids = [exp.experiment_id] if exp is not None else []
    ids += [e.experiment_id for e in at_start(client.search_experiments, "experiment list")
            if e.experiment_id not in ids]
    found = at_start(lambda: client.search_runs(ids, parent_filter(ref)), "warm-start look-up")
    return found[0] if found else None


def child_runs(client, parent) -> list:
    """Every child run of `parent`, page by page."""
    runs, token = [], None
    while True:
        page = at_start(lambda at=token: client.search_runs(
            [parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'",
            max_results=1000, page_token=at), "warm-start trials")
        runs += list(page)
        token = page.token
        if not token:
            return runs


def parse(dom: dict, text: Optional[str]) -> Any:
    """A param's text as a value of `dom` (None: absent or outside the domain)."""
    if text is None:
        return None
    if dom["domain"] in ("choice", "grid"):
        return next((v for v in dom["values"] if param_text(v) == text), None)
    try:
        value = int(float(text)) if dom["domain"] == "randint" else float(text)
    except ValueError:
        return None
    return value if in_domain(dom, value) else None


def table_index(values: list, path: str, params: dict) -> Optional[int]:
    """The index of the non-scalar choice whose flattened params the run logged (a Tune
    config holds such a choice as its index: Plan.tables)."""
    for i, value in enumerate(values):
        flat = flatten(value, path)
        if flat and all(params.get(k) == param_text(v) for k, v in flat.items()):
            return i
    return None


def searched_config(plan: Plan, params: dict) -> Optional[dict]:
    """A child run's logged params as a Tune config over this plan's domains (non-scalar
    choices as table indices); None where a searched value is missing (not searched then)
    or outside this plan's domain."""
    tables, config = plan.tables, {}
    for path, dom in plan.domains.items():
        value = (table_index(tables[path], path, params) if path in tables
                 else parse(dom, params.get(path)))
        if value is None:
            return None
        config[path] = value
    return config


def warm_trial(plan: Plan, run) -> Optional[WarmTrial]:
    """One earlier trial over this plan's domains (None: it does not fit them)."""
    config = searched_config(plan, run.data.params)
    if config is None:
        return None
    diverged = run.data.tags.get("dlopt.status") == "diverged"
    return WarmTrial(config=config, value=run.data.metrics.get(plan.metric), diverged=diverged)


def earlier_trials(plan: Plan, tracking_uri: str) -> list[WarmTrial]:
    """The warm-start sweep's trials that fit this plan ([] without `search.warm_start`).

    Raises SpecError (exit 2, before Ray starts) when no such sweep exists or none of its
    trials fits this plan's search space."""
    if not plan.warm_start:
        return []
    client = MlflowClient(tracking_uri)
    parent = parent_run(client, plan.warm_start, plan.tracking_experiment)
    if parent is None:
        raise SpecError([f"search.warm_start: no sweep or MLflow parent run {plan.warm_start!r} "
                         "in this tracking store"])
    runs = child_runs(client, parent)
    trials = [t for t in (warm_trial(plan, r) for r in runs) if t is not None]
    if runs and not trials:
        raise SpecError([f"search.warm_start: none of the {len(runs)} trials of "
                         f"{plan.warm_start!r} has a value inside every searched domain "
                         f"({', '.join(plan.domains)})"])
    if len(trials) < len(runs):
        log.warning("warm start: %d of %d trials of %r fit this search space; the rest are "
                    "left out", len(trials), len(runs), plan.warm_start)
    return trials
