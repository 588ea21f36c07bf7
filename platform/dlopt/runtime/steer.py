"""What a model-based searcher learns besides plain results, and when the whole sweep stops.

- Diverged trials (`diverged` in the report, or a non-finite metric) reach the sampler as
  the worst finite value seen so far (or their own value where it is worse), so it steers
  away from them; before any finite value exists, as a failed trial (Optuna's FAIL state),
  never as nan or a raw 1e15. Ray's searchers pass nan on (OptunaSearch logs Optuna's refusal
  and leaves the trial RUNNING, unlearned) and Ray has no hook for this, hence the wrapper.
- An earlier sweep's trials (`Search.warm_start`, `WarmTrial`s read from MLflow on the
  driver) go to the sampler through Ray's public `Searcher.add_evaluated_point` before the
  first suggestion.
- The sweep-level stops (`Search.time_budget_s`, `stop_when`, `stop_on_plateau`): one Tune
  stopper (`sweep_stopper`).
docs/architecture.md, "Report protocol" and "Typed boundaries".
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Optional, Sequence

from ray.tune.search import Searcher
from ray.tune.stopper import ExperimentPlateauStopper, Stopper

from dlopt.spec.plan import Plan
from dlopt.spec.report import DIVERGED


@dataclass(frozen=True)
class WarmTrial:
    """One trial of an earlier sweep as the sampler learns it (dlopt.driver.warmstart).

    config: a Tune config over this plan's domains; value: the searched metric's last value
    (None: the trial reported none); diverged: its training blew up."""

    config: dict
    value: Optional[float]
    diverged: bool = False


def worse(a: float, b: float, mode: str) -> float:
    return min(a, b) if mode == "max" else max(a, b)


def steered_value(value, diverged: bool, mode: str, worst: Optional[float]) -> Optional[float]:
    """The value the sampler learns: a healthy one as it is; a diverged or non-finite one as
    the worse of its own finite value and the worst healthy value seen; None (tell the
    sampler the trial failed) when neither exists, or when a trial that did not diverge
    reported no value (it errored)."""
    finite = isinstance(value, (int, float)) and math.isfinite(value)
    if finite and not diverged:
        return float(value)
    if not diverged and value is None:  # no value and not diverged: it failed (an error)
        return None
    if worst is None:
        return float(value) if finite else None
    return worse(float(value), worst, mode) if finite else worst


class Steered(Searcher):
    """A searcher whose sampler learns diverged trials as bad, not nan, and first the
    earlier sweep's trials; everything else passes through (as ConcurrencyLimiter does)."""

    def __init__(self, searcher, goals: dict[str, str], warm: Sequence[WarmTrial] = ()):
        self.searcher, self.goals, self.warm = searcher, goals, list(warm)
        self.worst: dict[str, float] = {}
        self.warm_told = False
        super().__init__(metric=searcher.metric, mode=searcher.mode)

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        ok = self.searcher.set_search_properties(metric, mode, config, **spec)
        self._metric, self._mode = self.searcher.metric, self.searcher.mode
        if ok and not self.warm_told:
            self._tell_warm()
        return ok

    def _tell_warm(self) -> None:
        self.warm_told = True
        if not self.warm:  # nothing to tell (multi-objective sweeps take no warm start)
            return
        (name, mode), = self.goals.items()  # warm start: one metric (dlopt.spec.start_points)
        for t in (t for t in self.warm if not t.diverged):
            self._seen({name: t.value})
        for t in self.warm:
            value = steered_value(t.value, t.diverged, mode, self.worst.get(name))
            self.searcher.add_evaluated_point(t.config, value, error=value is None)

    def _seen(self, result: dict) -> None:
        for name, mode in self.goals.items():
            v = result.get(name)
            if isinstance(v, (int, float)) and math.isfinite(v):
                self.worst[name] = worse(v, self.worst.get(name, v), mode)

    def _steer(self, result: dict) -> Optional[dict]:
        """The result the sampler sees; None: a failure (no value to learn)."""
        diverged = bool(result.get(DIVERGED))
        values = {n: result[n] for n in self.goals if n in result}
        if not diverged and all(isinstance(v, (int, float)) and math.isfinite(v)
                                for v in values.values()):
            self._seen(result)
            return result
        out = dict(result)
        for name, mode in self.goals.items():
            if name in values:
                out[name] = steered_value(values[name], True, mode, self.worst.get(name))
        return None if any(out.get(n, 0) is None for n in self.goals) else out

    def suggest(self, trial_id: str):
        return self.searcher.suggest(trial_id)

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        seen = self._steer(result)
        if seen is not None:
            self.searcher.on_trial_result(trial_id, seen)

    def on_trial_complete(self, trial_id: str, result=None, error: bool = False) -> None:
        seen = self._steer(result) if result and not error else result
        if seen is None and result:  # nothing finite to learn: a failed trial
            seen, error = {k: v for k, v in result.items() if k not in self.goals}, True
        self.searcher.on_trial_complete(trial_id, result=seen, error=error)

    def add_evaluated_point(self, *args, **kwargs):
        return self.searcher.add_evaluated_point(*args, **kwargs)

    def set_max_concurrency(self, max_concurrent: int) -> bool:
        return self.searcher.set_max_concurrency(max_concurrent)

    def on_pause(self, trial_id: str):
        self.searcher.on_pause(trial_id)

    def on_unpause(self, trial_id: str):
        self.searcher.on_unpause(trial_id)

    # Tune saves a wrapper's own state (get_state) and the searcher inside it
    # (save_to_dir) separately, walking `.searcher` (SearchGenerator.save_to_dir).
    def get_state(self) -> dict:
        return copy.deepcopy({k: v for k, v in self.__dict__.items() if k != "searcher"})

    def set_state(self, state: dict) -> None:
        self.__dict__.update(state)

    def save(self, checkpoint_path: str):
        self.searcher.save(checkpoint_path)

    def restore(self, checkpoint_path: str):
        self.searcher.restore(checkpoint_path)


def steered(searcher, goals: dict[str, str], warm: Sequence[WarmTrial] = ()):
    """`searcher` wrapped so its sampler learns diverged trials as bad and `warm` first."""
    return Steered(searcher, goals, warm)


# ------------------------------------------------------------------ sweep-level stops
class SweepStop(Stopper):
    """Ends the whole sweep once a healthy result reaches a goal (`stop_when`), or the
    top results plateau (Ray's ExperimentPlateauStopper); no trial is stopped alone.
    The time budget is TuneConfig.time_budget_s."""

    def __init__(self, goals: dict[str, float], modes: dict[str, str],
                 plateau: Optional[int]):
        self.goals, self.modes = goals, modes
        self.reached: Optional[str] = None
        metric, mode = next(iter(modes.items()))
        self.plateau = (ExperimentPlateauStopper(metric, top=plateau, mode=mode)
                        if plateau else None)

    def __call__(self, trial_id: str, result: dict) -> bool:
        if result.get(DIVERGED):
            return False
        for name, goal in self.goals.items():
            v = result.get(name)
            if isinstance(v, (int, float)) and (v >= goal if self.modes[name] == "max"
                                                else v <= goal):
                self.reached = self.reached or f"{name} {v:.4g} reached the goal {goal:g}"
        if self.plateau is not None and all(n in result for n in self.modes):
            self.plateau(trial_id, result)
        return False

    def stop_all(self) -> bool:
        return self.reached is not None or (self.plateau is not None
                                            and self.plateau.stop_all())


def sweep_stopper(plan: Plan):
    """The Tune stopper of `stop_when` / `stop_on_plateau`, or None where the spec sets neither."""
    goals = plan.stops.get("stop_when") or {}
    plateau = plan.stops.get("stop_on_plateau")
    if not goals and not plateau:
        return None
    return SweepStop(goals, dict(plan.objectives or {plan.metric: plan.mode}), plateau)
