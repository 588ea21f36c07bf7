"""The sweep as the steps after the fit see it: one object instead of a bundle of arguments.

`dlopt.driver.sweep.run` makes it once the parent run is open; finalize, the Pareto front
and the review read the plan (what ran), the tracker (where it is recorded) and the storage
from it, and turn a trial's config into its spec the one way (`Plan.trial_spec`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from dlopt.spec import Experiment
from dlopt.spec.plan import Plan

if TYPE_CHECKING:
    from dlopt.tracking.store import Tracker


@dataclass(frozen=True)
class Sweep:
    plan: Plan  # what runs: names, search settings, domains (never re-read from the spec)
    tracker: "Tracker"  # the MLflow experiment, the parent run and the trials' child runs
    storage_path: str  # Ray's storage, as resolved by `run`
    started: float  # time.perf_counter() when `run` began (SweepResult.wall_seconds)

    def trial_spec(self, trial) -> Experiment:
        """The spec a finished trial (a TrialSummary) ran: the sweep's spec with the values
        Tune sampled for it."""
        return self.plan.trial_spec(self.plan.searched(trial.config))
