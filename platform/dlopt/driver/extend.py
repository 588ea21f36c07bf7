"""`dlopt run SPEC --extend N` on the driver: the sweep to extend, and what its trials teach.

Before Ray starts, the latest sweep of the experiment is found in MLflow (its parent run,
tag `dlopt.sweep` = `NAME-YYYYmmdd-HHMMSS`, finished or killed), its child runs are read,
and the extension's plan is placed on it (dlopt.spec.extend.onto): the same sweep name, so
the Tracker reopens the parent and numbers the new children after the old ones; a Tune run
directory of its own; the search seed offset. Every earlier trial goes to the sampler as a
`WarmTrial` (the same path as `Search.warm_start`, dlopt.driver.warmstart), so a model-based
searcher continues from every earlier result. After the fit, dlopt.driver.finalize merges
the earlier child runs into the collection. `--resume` of an interrupted extension restores
its own directory (`latest_extension_dir`). docs/architecture.md, "Extending a sweep".
"""
from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Union

from mlflow.tracking import MlflowClient

from dlopt.driver.warmstart import child_runs, warm_trial
from dlopt.runtime import storage as ray_storage
from dlopt.runtime.steer import WarmTrial
from dlopt.spec.extend import extension_size, onto
from dlopt.spec.load import SpecError
from dlopt.spec.plan import Plan
from dlopt.tracking.startup import at_start
from dlopt.tracking.uris import redact_uri

log = logging.getLogger(__name__)


def latest_sweep(client, plan: Plan):
    """The newest parent run of a sweep of this experiment (`NAME-YYYYmmdd-HHMMSS`), or None."""
    exp = at_start(lambda: client.get_experiment_by_name(plan.tracking_experiment),
                   "experiment look-up")
    if exp is None:
        return None
    stamp = re.compile(re.escape(plan.experiment) + r"-\d{8}-\d{6}$")
    runs = at_start(lambda: client.search_runs(
        [exp.experiment_id], "tags.`dlopt.role` = 'sweep'", max_results=1000,
        order_by=["attributes.start_time DESC"]), "sweep look-up")
    return next((r for r in runs if stamp.match(r.data.tags.get("dlopt.sweep", ""))), None)


def extension_plan(plan: Plan, tracking_uri: str) -> tuple[Plan, list[WarmTrial]]:
    """The extension's plan on the latest sweep, and that sweep's trials for the sampler.

    Raises SpecError (exit 2, before Ray starts) when there is no sweep to extend or its
    searched fields differ from this spec's."""
    client = MlflowClient(tracking_uri)
    parent = latest_sweep(client, plan)
    if parent is None:
        raise SpecError([f"--extend: no sweep of {plan.experiment!r} in MLflow experiment "
                         f"{plan.tracking_experiment!r} at {redact_uri(tracking_uri)}; run it "
                         "first"])
    sweep_name = parent.data.tags["dlopt.sweep"]
    searched = ", ".join(plan.domains) or "none"
    earlier_domains = parent.data.params.get("domains")
    if earlier_domains is not None and earlier_domains != searched:
        raise SpecError([f"--extend: sweep {sweep_name} searched {earlier_domains}; this spec "
                         f"searches {searched} (extend it with the spec it ran)"])
    runs = child_runs(client, parent)
    plan = onto(plan, sweep_name, len(runs))
    warm = [t for t in (warm_trial(plan, r) for r in runs) if t is not None]
    if len(warm) < len(runs):
        log.warning("warning: %d of %d earlier trials of %s are outside this spec's search "
                    "space; the sampler does not learn them", len(runs) - len(warm), len(runs),
                    sweep_name)
    log.info("extending sweep %s (%d earlier trials) with %d more, in %s", sweep_name,
             len(runs), plan.extend, plan.tune_name)
    return plan, warm


def latest_extension_dir(storage: Union[Path, str], sweep_name: str) -> Union[Path, str, None]:
    """The newest extension directory of `sweep_name` Tune can restore, or None; in local
    storage or at a URI (read through pyarrow: dlopt.runtime.storage)."""
    found = ray_storage.restorable(storage, lambda d: extension_size(d, sweep_name))
    return ray_storage.child(storage, max(found, key=lambda d: d[-15:])) if found else None
