"""After the sweep, on the driver: collect trials, select the best, register its model.

Each step is a function; `finalize` runs them in order. Registration happens here,
never inside a trial (docs/architecture.md, "Registration after the sweep"); then the
chosen model's test-split report and the review (dlopt.driver.publish).
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from dlopt.driver import plots, publish
from dlopt.driver.context import Sweep
from dlopt.registry import teachers
from dlopt.registry.versions import RegisteredModel
from dlopt.runtime.storage import full_uri
from dlopt.spec.report import CHECKPOINT_PATH, DIVERGED
from dlopt.tracking.names import numeric_metrics
from dlopt.tracking.retry import drain_timeout_s, retry_transient
from dlopt.tracking.scrub import scrub

log = logging.getLogger(__name__)


@dataclass
class TrialSummary:
    trial_id: str
    run_id: Optional[str]
    config: dict
    metrics: dict
    status: str  # ok | diverged | error
    checkpoint_path: Optional[str]


def pick_best(trials: list[TrialSummary], metric: str, mode: str) -> Optional[TrialSummary]:
    healthy = [t for t in trials if t.status == "ok" and isinstance(t.metrics.get(metric), (int, float))
               and math.isfinite(t.metrics[metric])]
    if not healthy:
        return None
    key = (lambda t: t.metrics[metric]) if mode == "max" else (lambda t: -t.metrics[metric])
    return max(healthy, key=key)


def collect(grid, tracker, plan=None, storage: Optional[str] = None) -> list[TrialSummary]:
    """Every trial of the sweep: Tune's results, and for an extension (`plan.extend`) first
    the earlier trials of the sweep as MLflow recorded them (`earlier`). `storage`: Ray's
    storage, for a checkpoint's URI when it is remote (dlopt.runtime.storage.full_uri)."""
    trials = []
    for result in grid:
        trial_id = (result.metrics or {}).get("trial_id") or Path(result.path).name
        history = result.metrics_dataframe
        # a diverged trial's last report carries `diverged` (the loop stops right after it);
        # the history may be missing for a trial restored by --resume
        diverged = bool((result.metrics or {}).get(DIVERGED)) or bool(
            history is not None and DIVERGED in history
            and (history[DIVERGED].fillna(0) > 0).any())
        ok = result.error is None and not diverged
        trials.append(TrialSummary(
            trial_id=trial_id, run_id=tracker.run_id_of(trial_id), config=result.config or {},
            metrics=dict(result.metrics or {}),
            status="ok" if ok else ("diverged" if diverged else "error"),
            # a TorchTrainer trial reports its checkpoint's path; an in-trial run's final
            # checkpoint is Tune's own (dlopt.runtime.worker.fit_in_trial)
            checkpoint_path=full_uri(storage or "", (result.metrics or {}).get(CHECKPOINT_PATH)
                                     or (result.checkpoint.path if result.checkpoint else None))))
    for t in trials:
        if t.status == "diverged" and t.run_id:
            tracker.client.set_tag(t.run_id, "dlopt.status", "diverged")
    if plan is not None and plan.extend:
        trials = earlier(tracker, plan, {t.trial_id for t in trials}) + trials
    return trials


def earlier(tracker, plan, known: set[str]) -> list[TrialSummary]:
    """The sweep's child runs outside this fit's ResultGrid (an extension's earlier trials),
    from MLflow: config from the params, metrics their last values, the model from the
    `dlopt.model_checkpoint` tag; ok when FINISHED, diverged when tagged so, else error (a
    killed sweep's unfinished trial). docs/architecture.md, "Extending a sweep"."""
    from dlopt.driver.warmstart import searched_config

    client = tracker.client
    runs = client.search_runs([tracker.experiment_id],
                              f"tags.`mlflow.parentRunId` = '{tracker.parent_id}'",
                              max_results=10000, order_by=["attributes.start_time ASC"])
    out = []
    for run in runs:
        tags = run.data.tags
        trial_id = tags.get("dlopt.trial_id")
        if not trial_id or trial_id in known:
            continue
        status = ("diverged" if tags.get("dlopt.status") == "diverged"
                  else "ok" if run.info.status == "FINISHED" else "error")
        out.append(TrialSummary(
            trial_id=trial_id, run_id=run.info.run_id,
            config=searched_config(plan, run.data.params) or {},
            metrics=dict(run.data.metrics), status=status,
            checkpoint_path=tags.get("dlopt.model_checkpoint")))
    return out


# Loaded after the sweep (or in the background while it runs, `preload`): registration
# imports torch, ~40% of the driver's import time, which would otherwise delay the first trial.
HEAVY_MODULES = ("dlopt.registry.register", "dlopt.driver.front", "dlopt.registry.evaluation")


def preload() -> None:
    """Import what finalize needs (torch, matplotlib) on a background thread while the sweep
    runs; an import that fails here is retried, and raises, where finalize imports it."""
    import importlib
    import threading

    def load():
        try:
            for name in HEAVY_MODULES:
                importlib.import_module(name)
            plots.pyplot()
        except Exception:  # noqa: BLE001 (finalize's own import reports it)
            return

    threading.Thread(target=load, name="dlopt-preload", daemon=True).start()


def stop_reason(plan, results: list[dict], fit_seconds: float) -> str:
    """Why the sweep ended, in one line (CLI summary, the parent's description and its
    `dlopt.stop_reason` tag): every trial ran, or which sweep-level stop ended it
    (dlopt.runtime.steer.sweep_stopper, TuneConfig.time_budget_s); for `--extend`, of the
    extension's trials."""
    reason = fit_stop_reason(plan, results, fit_seconds)
    return f"extension: {reason}" if plan.extend else reason


def fit_stop_reason(plan, results: list[dict], fit_seconds: float) -> str:
    if not plan.stops:
        return f"all {plan.trials} trials ran"
    results = [r for r in results if r]  # a trial a stop left pending reported nothing
    ran = f"{len(results)} of {plan.trials} trials"
    healthy = [r for r in results if not r.get(DIVERGED)]
    for name, goal in (plan.stops.get("stop_when") or {}).items():
        mode = (plan.objectives or {plan.metric: plan.mode})[name]
        hits = [r[name] for r in healthy if isinstance(r.get(name), (int, float))
                and (r[name] >= goal if mode == "max" else r[name] <= goal)]
        if hits:
            return (f"stop_when: {name} reached {goal:g} ({max(hits) if mode == 'max' else min(hits):.4g}); "
                    f"{ran} ran")
    budget = plan.stops.get("time_budget_s")
    if len(results) >= plan.trials:
        return f"all {plan.trials} trials ran"
    if budget is not None and fit_seconds >= budget:
        return f"time_budget_s: {budget:g} s spent; {ran} ran"
    if plan.stops.get("stop_on_plateau") is not None:
        return f"stop_on_plateau: the top {plan.stops['stop_on_plateau']} results plateaued; {ran} ran"
    return f"stopped early; {ran} ran"


def finalize(grid, sweep: Sweep, stopped: str = "") -> tuple[list[TrialSummary],
                                                            Optional[TrialSummary],
                                                            list[RegisteredModel]]:
    """Collect, select, register, report on the test split, review: in that order.
    `stopped`: why the sweep ended (stop_reason), tagged on the parent for the review."""
    from dlopt.driver.front import register_front

    plan, tracker = sweep.plan, sweep.tracker
    metric, mode = plan.headline
    trials = collect(grid, tracker, plan, sweep.storage_path)
    if stopped:
        tracker.client.set_tag(tracker.parent_id, "dlopt.stop_reason", stopped)
    best = pick_best(trials, metric, mode)
    if best is not None:
        tracker.client.set_tag(tracker.parent_id, "dlopt.best_trial", best.trial_id)
        for k, v in numeric_metrics(best.metrics).items():
            tracker.client.log_metric(tracker.parent_id, f"best_{k}", v)
    if plan.objectives:
        # Multi-objective: no single best; every Pareto-optimal model is registered, with
        # aliases most-accurate / smallest / fastest, plus the front's plot and CSV.
        registered = register_front(sweep, trials)
    else:
        registered = register_best(sweep, best)
    # after selection, never before
    registered = final_test_report(tracker, best, registered, trials)
    publish.publish_safely(sweep, trials, best, registered)
    return trials, best, registered


def register_best(sweep: Sweep, best: Optional[TrialSummary]) -> list[RegisteredModel]:
    """The best trial's saved model as a version of `tracking.register_as`, with its alias."""
    from dlopt.registry import register as register_mod

    plan, tracker = sweep.plan, sweep.tracker
    if best is None or not (plan.register_as and best.checkpoint_path and best.run_id):
        return []
    best_spec = sweep.trial_spec(best)
    version_tags = {"dlopt.spec_hash": best_spec.spec_hash(), "dlopt.source_run": best.run_id,
                    "dlopt.sweep": plan.sweep_name,
                    **{f"metric.{k}": f"{v:.6g}" for k, v in
                       numeric_metrics(best.metrics).items()}}
    # distilled: the teacher URI and its pinned version
    version_tags.update(teachers.registry_tags(best_spec, best.metrics))
    version = retry_transient(
        lambda: register_mod.register(tracker, best.run_id, best.checkpoint_path,
                                      plan.register_as, plan.alias, version_tags),
        drain_timeout_s(), "registering the best model")
    tracker.client.set_tag(tracker.parent_id, "dlopt.registered", f"{plan.register_as} v{version}")
    return [RegisteredModel(name=plan.register_as, version=version, alias=plan.alias,
                            run_id=best.run_id, trial_id=best.trial_id,
                            aliases=(plan.alias,) if plan.alias else ())]


def final_test_report(tracker, best, registered: list[RegisteredModel],
                      trials) -> list[RegisteredModel]:
    """After selection only: the chosen model(s) on the withheld test split
    (dlopt.registry.evaluation); returns `registered` with the test metrics measured. A
    failure here is logged, not raised: the sweep and its registered model stand."""
    # deferred on purpose: evaluation loads torch (~1.5 s on the driver), needed only now
    from dlopt.registry.evaluation import final_report

    try:
        return final_report(tracker, best, registered, trials)
    except Exception as err:  # noqa: BLE001 (any failure is reported on the parent run)
        # an MLflow error quotes the request URL, credentials included: scrubbed
        log.warning("warning: the test-split report failed: %s", scrub(repr(err)))
        tracker.client.set_tag(tracker.parent_id, "dlopt.test_report", f"failed: {err!r}"[:5000])
        return registered
