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
from dataclasses import asdict, dataclass, field, replace
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
    # GPUs the concurrency was computed for (None: not counted; trials take no GPU or
    # `dlopt plan` was not told, see trial_concurrency).
    cluster_gpus: Optional[float] = None
    # Configurations tried first, as Tune configs (non-scalar choices as table indices), and
    # the earlier sweep whose trials the sampler learns from first (fetched by the driver:
    # dlopt.driver.warmstart; docs/architecture.md, "Typed boundaries").
    start_points: list[dict] = field(default_factory=list)
    warm_start: Optional[str] = None
    # Sweep-level stops set in the spec (time_budget_s, stop_when, stop_on_plateau).
    stops: dict = field(default_factory=dict)
    extend: int = 0  # `--extend N` (dlopt.spec.extend): N trials added after `earlier_trials`
    earlier_trials: int = 0
    tune_dir: str = ""

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
        """`search.seed` (search algorithm, PBT); an extension's offset by the earlier trials."""
        seed = self.spec_json["search"].get("seed")
        return seed + self.earlier_trials if seed is not None and self.extend else seed

    @property
    def tune_name(self) -> str:
        """Tune's run directory (RunConfig.name): the sweep's, or an extension's own."""
        return self.tune_dir or self.sweep_name

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

    def on_cluster(self, cpus: float, gpus: float) -> "Plan":
        """This plan with its concurrency computed from a cluster's resources (`--address`:
        `ray.cluster_resources()` once connected, before the Tuner is built)."""
        concurrency, notes = trial_concurrency(
            self.resources_per_trial, self.trials, self.spec_json["search"]["max_concurrent_trials"],
            cpus, gpus, local=False)
        return replace(self, max_concurrent_trials=concurrency, cluster_cpus=float(cpus),
                       cluster_gpus=float(gpus), notes=[*self.notes, *notes])

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
            f"concurrency  {self.max_concurrent_trials} trial(s) at once on {self.cluster_cpus:g} CPUs"
            + (f", {self.cluster_gpus:g} GPUs" if self.cluster_gpus is not None else ""),
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
        if self.start_points:
            lines.append(f"start points {len(self.start_points)} configuration(s) tried first "
                         "(search.points_to_evaluate)")
        if self.warm_start:
            lines.append(f"warm start   the sampler first learns every trial of {self.warm_start!r} "
                         "(read from MLflow when the sweep starts)")
        if self.stops:
            lines.append("stops        " + describe_stops(self.stops))
        if self.extend:
            lines.append(describe_extension(self))
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


def describe_stops(stops: dict) -> str:
    """The sweep-level stops in one line (`dlopt plan`)."""
    parts = []
    if stops.get("time_budget_s") is not None:
        parts.append(f"after {stops['time_budget_s']:g} s")
    parts += [f"once a trial reaches {k} {v:g}" for k, v in (stops.get("stop_when") or {}).items()]
    if stops.get("stop_on_plateau") is not None:
        parts.append(f"when the top {stops['stop_on_plateau']} results plateau")
    return "the sweep stops " + " or ".join(parts)


def describe_extension(plan: Plan) -> str:
    """What `--extend N` does, in one line (`dlopt plan --extend N`; dlopt.spec.extend)."""
    where = (f"sweep {plan.sweep_name} ({plan.earlier_trials} earlier trials), Tune run directory "
             f"{plan.tune_dir}" if plan.tune_dir else f"the latest sweep of {plan.experiment!r} in "
             f"MLflow (found at the run's start), in a new Tune run dir SWEEP-x{plan.extend}-STAMP")
    learns = ("the sampler first learns every earlier trial" if plan.algorithm != "random"
              else "random search with the seed offset by the earlier trials")
    return (f"extend       {plan.extend} more trials for {where}; {learns}; same MLflow parent "
            "run, children numbered on; registration and the review cover all trials")


def start_configs(points: Optional[list[dict]], doms: dict[str, dict]) -> list[dict]:
    """`search.points_to_evaluate` as Tune configs: a non-scalar choice's value becomes its
    index in the plan's tables (dlopt.runtime.search.to_ray_space samples indices)."""
    tables = choice_tables(doms)
    return [{path: (next(i for i, v in enumerate(tables[path]) if v == value)
                    if path in tables else value) for path, value in point.items()}
            for point in points or []]


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
        res["GPU"] = r.num_workers * r.worker_gpus
    return res


def trial_concurrency(per_trial: dict[str, float], trials: int, wanted: Optional[int],
                      cpus: float, gpus: Optional[float], local: bool = True) -> tuple[int, list[str]]:
    """Trials at once, and notes saying why: as many as the CPUs and GPUs hold, or the
    user's `search.max_concurrent_trials`. Locally dlopt starts Ray with enough logical CPUs
    for the wanted number (dlopt.driver.sweep.local_cpus_needed) but GPUs cannot be invented,
    so the GPUs cap it; a cluster (`--address`) may autoscale, so a wanted number is kept
    there. gpus None: not counted (only CPUs bound it)."""
    fits = max(1, math.floor(cpus / (per_trial["CPU"] + 0.001)))  # + the trial driver's sliver
    gpu = per_trial.get("GPU", 0.0)
    gpu_fits = None if not gpu or gpus is None else math.floor(gpus / gpu + 1e-9)
    notes = []
    if gpu and gpus is None:
        notes.append(f"each trial takes {gpu:g} GPU(s); GPUs were not counted, so concurrency "
                     "counts CPUs only (`dlopt plan --gpus N`; `dlopt run` counts them)")
    if not local and gpu_fits == 0:  # an autoscaling cluster with no GPU node up yet
        gpu_fits = None
        notes.append(f"the cluster has {gpus:g} GPUs now, fewer than one trial's {gpu:g}: "
                     "concurrency counts CPUs until GPU nodes join (set "
                     "search.max_concurrent_trials)")
    if not wanted:
        concurrency = min(fits, max(1, gpu_fits) if gpu_fits is not None else fits, trials)
        if not local:
            notes.append(f"concurrency from the cluster's resources now ({cpus:g} CPUs, "
                         f"{gpus or 0:g} GPUs); an autoscaling cluster: set "
                         "search.max_concurrent_trials")
        return concurrency, notes
    concurrency = min(wanted, trials)
    if not local:
        now = min(fits, gpu_fits) if gpu_fits is not None else fits
        if wanted > now:
            notes.append(f"search.max_concurrent_trials: {wanted} trials at once; the cluster "
                         f"holds {now} now, more start as it grows")
        return concurrency, notes
    if wanted > fits:
        notes.append(f"{wanted} concurrent trials need {wanted * per_trial['CPU']:g} CPUs; a "
                     "local cluster is started with that many logical CPUs")
    if gpu_fits is not None and concurrency > gpu_fits:
        concurrency = max(1, gpu_fits)
        notes.append(f"search.max_concurrent_trials: {wanted} trials x {gpu:g} GPU(s) need "
                     f"{wanted * gpu:g} GPUs, this machine has {gpus:g}: {concurrency} at once")
    return concurrency, notes


def make_plan(spec: Experiment, cluster_cpus: Optional[float] = None,
              now: Optional[datetime] = None, cluster_gpus: Optional[float] = None) -> Plan:
    """cluster_cpus: default this machine's; cluster_gpus: None where not counted (`dlopt
    plan` imports no torch; `dlopt run` passes torch.cuda.device_count() where use_gpu)."""
    doms = domains(spec)
    search = spec.search
    grid_points = grid_size(doms, search.algorithm)
    trials = grid_points * search.num_samples
    per_trial = resources_per_trial(spec)
    cpus = float(cluster_cpus if cluster_cpus is not None else (os.cpu_count() or 1))
    gpus = None if cluster_gpus is None or "GPU" not in per_trial else float(cluster_gpus)
    concurrency, notes = trial_concurrency(per_trial, trials, search.max_concurrent_trials,
                                           cpus, gpus)
    if spec.resources.worker_gpus > 1:
        notes.append(f"each worker sees {spec.resources.worker_gpus:g} GPUs; dlopt's strategies "
                     "train on one device per rank (the first), the others are reserved for "
                     "the model's own use")
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
        cluster_gpus=gpus,
        start_points=start_configs(spec.model_dump(mode="json")["search"]["points_to_evaluate"],
                                   doms),
        warm_start=search.warm_start,
        stops={k: getattr(search, k) for k in ("time_budget_s", "stop_when", "stop_on_plateau")
               if getattr(search, k) is not None},
    )
