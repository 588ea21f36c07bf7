"""Spec -> Plan: everything a sweep will do, decided before anything starts.

`dlopt plan` stops here (SkyPilot-style dry run). Pure Python: no ray, no torch;
`dlopt.runtime.search` turns the plan's plain data into Ray Tune objects. The plan is
frozen: it is what the sweep runs (search settings, names, each trial's spec through
`Plan.trial_spec`), and nothing downstream re-reads the spec to decide otherwise
(docs/architecture.md, "Layers").
"""
from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any, Optional

from dlopt.spec.checks import search_warnings
from dlopt.spec.experiment import Experiment, resolve
from dlopt.spec.fields import _points
from dlopt.spec.paths import domains
from dlopt.spec.tune import checked, is_domain_dict


@dataclass(frozen=True)
class Plan:
    """Everything a sweep will do, decided before it starts; frozen, so what `dlopt plan`
    shows is what runs (--resume makes a new plan under the resumed sweep's name)."""

    experiment: str
    sweep_name: str
    spec_json: dict
    domains: dict[str, dict]
    algorithm: str
    scheduler: str
    metric: str
    mode: str
    objectives: Optional[dict[str, str]]
    num_samples: int
    grid_points: int
    trials: int
    workers_per_trial: int
    resources_per_trial: dict[str, float]
    max_concurrent_trials: int
    cluster_cpus: float
    epochs: Any
    tracking_experiment: str
    register_as: Optional[str]
    notes: list[str] = field(default_factory=list)
    scheduler_detail: str = ""
    pbt_mutations: Optional[dict] = None
    # Settings the scheduler/algorithm receive, defaults filled in (Search.setting).
    search_settings: dict = field(default_factory=dict)
    sampler_detail: str = ""

    def to_dict(self) -> dict:
        """The plan as JSON (`dlopt plan --json`, `plan.json` on the parent run); written
        out only, never read back."""
        return asdict(self)

    @property
    def headline(self) -> tuple[str, str]:
        """(metric, mode) that ranks trials for people: the first objective of a
        multi-objective search, else the searched metric."""
        if self.objectives:
            return next(iter(self.objectives.items()))
        return self.metric, self.mode

    # --- what the executor reads instead of the spec
    @property
    def seed(self) -> Optional[int]:
        """`search.seed`: seeds the search algorithm (and PBT's choices)."""
        return self.spec_json["search"].get("seed")

    @property
    def alias(self) -> Optional[str]:
        """`tracking.alias`: what the registered best model is called by (single objective)."""
        return self.spec_json["tracking"].get("alias")

    def setting(self, name: str):
        """A search setting the scheduler or algorithm receives, its default filled in
        (None where the chosen ones do not use it)."""
        return self.search_settings.get(name)

    @property
    def max_epochs(self) -> int:
        """The most epochs any trial runs (the schedulers' `max_t`)."""
        return int(max(epoch_points(self.epochs)))

    @property
    def tables(self) -> dict[str, list]:
        """Index tables of the non-scalar choices: Optuna and HyperOpt sample only scalar
        categories, so a choice of lists or dicts (e.g. compression pipelines) is sampled
        as an index into its table (dlopt.runtime.search.to_ray_space)."""
        return choice_tables(self.domains)

    # --- config -> trial spec
    def assignment(self, config: dict) -> dict[str, Any]:
        """Tune config -> {spec path: value}; non-scalar choices travel as indices into
        `tables`, mapped back here."""
        tables = self.tables
        return {path: (tables[path][value] if path in tables else value)
                for path, value in config.items()}

    def searched(self, config: dict) -> dict:
        """The part of a trial's config Tune sampled from the plan's domains."""
        return {k: v for k, v in (config or {}).items() if k in self.domains}

    def trial_spec(self, config: dict) -> Experiment:
        """The concrete spec of one trial: the sweep's spec with the trial's sampled values.

        The one place a Tune config becomes a spec (trial, callback, finalize, review, front)."""
        return resolve(self.spec_json, self.assignment(config))

    def trial_epochs(self, config: dict) -> int:
        """The epochs the trial with this config runs (its own value where `epochs` is searched)."""
        value = self.assignment(config).get("epochs", self.epochs)
        return value if isinstance(value, int) else self.max_epochs

    def describe(self) -> str:
        lines = [
            f"experiment   {self.experiment}  (sweep {self.sweep_name})",
            f"search       {self.algorithm}, scheduler {self.scheduler}, "
            + (f"objectives {self.objectives}" if self.objectives
               else f"metric {self.metric} ({self.mode})"),
            f"scheduler    {self.scheduler_detail}",
            f"sampler      {self.sampler_detail}",
            f"trials       {self.trials}"
            + (f" = {self.grid_points} grid points x {self.num_samples} samples"
               if self.grid_points > 1 else f" ({self.num_samples} samples)"),
            f"epochs       {self.epochs}",
            "per trial    " + ", ".join(f"{k} {v:g}" for k, v in self.resources_per_trial.items())
            + f" ({self.workers_per_trial} worker{'s' if self.workers_per_trial > 1 else ''})",
            f"concurrency  {self.max_concurrent_trials} trial(s) at once on {self.cluster_cpus:g} CPUs",
            f"tracking     MLflow experiment {self.tracking_experiment!r}"
            + (f", registers {self.register_as!r}" if self.register_as else ""),
        ]
        if self.domains:
            lines.append("domains")
            for path, dom in self.domains.items():
                lines.append(f"  {path:<28} {_describe_domain(dom)}")
        else:
            lines.append("domains      none (a single configuration)")
        for path, dom in (self.pbt_mutations or {}).items():
            shown = _describe_domain(dom) if isinstance(dom, dict) else f"steps through {dom}"
            lines.append(f"  {path:<28} PBT mutation {shown}")
        lines += [f"note         {n}" for n in self.notes]
        return "\n".join(lines)


def is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, (bool, int, float, str))


def choice_tables(doms: dict[str, dict]) -> dict[str, list]:
    """spec path -> values, for each choice/grid domain with a non-scalar value."""
    return {path: dom["values"] for path, dom in doms.items()
            if dom["domain"] in ("choice", "grid") and not all(is_scalar(v) for v in dom["values"])}


def epoch_points(epochs: Any) -> list:
    """Every value `epochs` can take at its bounds: an int, or a domain as JSON."""
    return checked(epochs).points() if is_domain_dict(epochs) else [epochs]


def _describe_domain(dom: dict) -> str:
    kind = dom["domain"]
    if kind in ("choice", "grid"):
        shown = [_short(v) for v in dom["values"]]
        return f"{kind}({', '.join(shown)})"
    return f"{kind}({dom['low']:g}, {dom['high']:g})"


def _short(value) -> str:
    text = str(value)
    return text if len(text) <= 40 else text[:37] + "..."


def scheduler_detail(spec: Experiment) -> str:
    """What the scheduler will do, in one line (`dlopt plan`)."""
    s = spec.search
    if s.scheduler == "asha":
        eta = s.setting("reduction_factor")
        return (f"asha: stops trials at epochs {s.setting('grace_period')} x {eta:g}^k "
                f"unless in the top 1/{eta:g} on {s.metric}")
    if s.scheduler == "hyperband":
        return (f"hyperband: brackets of epochs up to {max(_points(spec.epochs))}, reduction "
                f"factor {s.setting('reduction_factor'):g}")
    if s.scheduler == "median":
        return (f"median: after {s.setting('grace_period')} epoch(s), stops trials below the "
                f"median {s.metric} (once 3 other trials have reached that epoch)")
    if s.scheduler == "pbt":
        return (f"pbt: every {s.setting('perturbation_interval')} epochs the bottom quarter "
                f"clones a top trial's checkpoint and perturbs {', '.join(s.pbt_mutations or {})}")
    return "fifo: every trial runs all its epochs"


def sampler_detail(spec: Experiment) -> str:
    """How much of the budget the search algorithm models, in one line (`dlopt plan`)."""
    s = spec.search
    n = s.num_samples
    if s.algorithm in ("grid", "random"):
        return f"{s.algorithm}: every trial sampled independently"
    population = s.setting("population_size")
    if population is not None:
        generations = math.ceil(n / population)
        return (f"NSGA-II (Optuna): population {population}; the first generation is random "
                f"(trials 1-{min(population, n)}), then {max(generations - 1, 0)} bred "
                f"generation(s) up to {n} trials")
    warmup = s.setting("warmup_trials")
    name = {"bayesian": "TPE (Optuna)", "bayesian_gp": "GP (Optuna)",
            "hyperopt": "TPE (HyperOpt)"}[s.algorithm]
    return (f"{name}: the first {min(warmup, n)} trial(s) random (warm-up), then "
            f"{max(n - warmup, 0)} of {n} modelled on the trials finished so far")


def grid_size(doms: dict[str, dict], algorithm: str) -> int:
    """Grid points Tune expands: tune.grid axes, plus choices when the algorithm is `grid`."""
    size = 1
    for dom in doms.values():
        if dom["domain"] == "grid" or (algorithm == "grid" and dom["domain"] == "choice"):
            size *= len(dom["values"])
    return size


def resources_per_trial(spec: Experiment) -> dict[str, float]:
    r = spec.resources
    res = {"CPU": r.num_workers * r.cpus_per_worker}
    if r.use_gpu:
        res["GPU"] = float(r.num_workers)
    return res


def make_plan(spec: Experiment, cluster_cpus: Optional[float] = None, now: Optional[datetime] = None) -> Plan:
    doms = domains(spec)
    search = spec.search
    grid_points = grid_size(doms, search.algorithm)
    trials = grid_points * search.num_samples
    per_trial = resources_per_trial(spec)
    cpus = float(cluster_cpus if cluster_cpus is not None else (os.cpu_count() or 1))
    fits = max(1, math.floor(cpus / (per_trial["CPU"] + 0.001)))  # + the trial driver's sliver
    concurrency = min(search.max_concurrent_trials or fits, trials)
    notes = []
    if search.max_concurrent_trials and search.max_concurrent_trials > fits:
        notes.append(f"{search.max_concurrent_trials} concurrent trials need "
                     f"{search.max_concurrent_trials * per_trial['CPU']:g} CPUs; a local cluster "
                     "is started with that many logical CPUs")
    notes += [f"warning: {w}" for w in search_warnings(search)]
    if not doms and trials > 1:
        notes.append("no search domains: every trial runs the same configuration (seeded repeats)")
    stamp = (now or datetime.now(timezone.utc)).strftime("%Y%m%d-%H%M%S")
    epochs = spec.epochs if isinstance(spec.epochs, int) else spec.model_dump(mode="json")["epochs"]
    return Plan(
        experiment=spec.name,
        sweep_name=f"{spec.name}-{stamp}",
        spec_json=spec.model_dump(mode="json"),
        domains=doms,
        algorithm=search.algorithm,
        scheduler=search.scheduler,
        metric=search.metric,
        mode=search.mode,
        objectives=search.objectives,
        num_samples=search.num_samples,
        grid_points=grid_points,
        trials=trials,
        workers_per_trial=spec.resources.num_workers,
        resources_per_trial=per_trial,
        max_concurrent_trials=concurrency,
        cluster_cpus=cpus,
        epochs=epochs,
        tracking_experiment=spec.tracking.experiment or spec.name,
        register_as=spec.tracking.register_as,
        notes=notes,
        scheduler_detail=scheduler_detail(spec),
        pbt_mutations=spec.model_dump(mode="json")["search"]["pbt_mutations"],
        search_settings={k: search.setting(k) for k in search.used_settings()
                         if k != "pbt_mutations"},
        sampler_detail=sampler_detail(spec),
    )
