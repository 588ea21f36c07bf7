"""Multi-objective sweeps, on the driver after the sweep: the Pareto front goes to MLflow.

`register_front` (called by dlopt.driver.finalize when `Search.objectives` is set):
1. ranks every finished, healthy trial by non-dominated sorting (dlopt.driver.pareto);
2. writes `pareto/trials.csv` (every trial: objectives, rank, status, swept values) and
   `pareto/pareto.png` (objective pairs, the front joined and labelled) on the parent run;
3. registers each Pareto-optimal trial's saved (compressed) model as a version of
   `Tracking.register_as`, tagged with its objective values and Pareto rank, and points the
   aliases `most-accurate`, `smallest` and `fastest` at the front's extremes.
Registering happens here, never inside a trial (docs/architecture.md, "Registration after
the sweep").
"""
from __future__ import annotations

import csv
import io
import math
import tempfile
from pathlib import Path
from typing import Optional

from dlopt.driver import pareto
from dlopt.driver.context import Sweep
from dlopt.registry import register as register_mod
from dlopt.registry.versions import RegisteredModel
from dlopt.tracking.names import numeric_metrics
from dlopt.tracking.retry import drain_timeout_s, retry_transient

ARTIFACT_DIR = "pareto"
# alias -> (metric, mode): the front's best model on that one metric.
ALIASES = {"most-accurate": (None, "max"), "smallest": ("model_bytes", "min"),
           "fastest": ("latency_ms", "min")}


def accuracy_objective(objectives: dict[str, str]) -> Optional[str]:
    """The objective `most-accurate` refers to: an accuracy metric maximized, else the first max."""
    maxed = [k for k, m in objectives.items() if m == "max"]
    for k in maxed:
        if "accuracy" in k:
            return k
    return maxed[0] if maxed else None


def alias_targets(points: list[dict], front: list[int], objectives: dict[str, str]) -> dict[str, int]:
    """alias -> index (into points) of the front member it names. An alias whose metric is
    missing on some front member is left out (e.g. `fastest` when no latency was measured)."""
    out = {}
    for alias, (metric, mode) in ALIASES.items():
        metric = metric or accuracy_objective(objectives)
        if metric is None or not front:
            continue
        values = [points[i].get(metric) for i in front]
        if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in values):
            continue
        out[alias] = pareto.extremes(points, front, {metric: mode})[metric]
    return out


def trials_csv(trials, ranks: list[Optional[int]], objectives: dict[str, str]) -> str:
    params = sorted({k for t in trials for k in (t.config or {})})
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["trial_id", "run_id", "status", "pareto_rank", *objectives, *params])
    for t, r in zip(trials, ranks):
        w.writerow([t.trial_id, t.run_id or "", t.status, "" if r is None else r,
                    *[t.metrics.get(k, "") for k in objectives],
                    *[(t.config or {}).get(p, "") for p in params]])
    return buf.getvalue()


def pareto_png(trials, ranks: list[Optional[int]], objectives: dict[str, str], path: Path) -> Path:
    """One panel per pair of objectives; every trial a dot, the front in red and joined."""
    import itertools

    import matplotlib  # deferred on purpose: loaded only when there is a front to draw

    matplotlib.use("Agg")  # the driver has no display
    import matplotlib.pyplot as plt

    names = list(objectives)
    pairs = list(itertools.combinations(names, 2))
    fig, axes = plt.subplots(1, len(pairs), figsize=(5.2 * len(pairs), 4.2), squeeze=False)
    for ax, (a, b) in zip(axes[0], pairs):
        keep = [(t, r) for t, r in zip(trials, ranks) if r is not None]
        rest = [(t.metrics[a], t.metrics[b]) for t, r in keep if r != 1]
        best = sorted((t.metrics[a], t.metrics[b], t.trial_id) for t, r in keep if r == 1)
        if rest:
            ax.scatter(*zip(*rest), color="0.6", s=22, label="dominated")
        if best:
            ax.plot([p[0] for p in best], [p[1] for p in best], color="tab:red", marker="o",
                    linewidth=1, label="Pareto-optimal (all objectives)")
            for x, y, tid in best:
                ax.annotate(tid.split("_")[-1], (x, y), textcoords="offset points",
                            xytext=(4, 4), fontsize=7)
        ax.set_xlabel(f"{a} ({objectives[a]})")
        ax.set_ylabel(f"{b} ({objectives[b]})")
        if "bytes" in a:
            ax.set_xscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def register_front(sweep: Sweep, trials) -> list[RegisteredModel]:
    """Rank, plot and register the Pareto front; returns one entry per registered version,
    the one `most-accurate` names first."""
    objectives = sweep.plan.objectives
    points, front = rank_and_record(sweep.tracker, trials, objectives)
    name = sweep.plan.register_as
    if not name:
        return []
    versions = {i: register_member(sweep, trials[i], name) for i in front
                if trials[i].checkpoint_path and trials[i].run_id}
    aliases: dict[int, list[str]] = {i: [] for i in versions}
    for alias, i in alias_targets(points, [i for i in front if i in versions], objectives).items():
        sweep.tracker.client.set_registered_model_alias(name, alias, versions[i])
        aliases[i].append(alias)
    registered = [RegisteredModel(name=name, version=version, alias=(aliases[i] or [None])[0],
                                  run_id=trials[i].run_id, trial_id=trials[i].trial_id,
                                  aliases=tuple(aliases[i]), pareto_rank=1,
                                  objectives={k: trials[i].metrics[k] for k in objectives})
                  for i, version in versions.items()]
    registered.sort(key=lambda e: "most-accurate" not in e.aliases)  # the chosen model first
    if registered:
        sweep.tracker.client.set_tag(sweep.tracker.parent_id, "dlopt.registered", f"{name} " + ", ".join(
            f"v{e.version}" + (f" ({'/'.join(e.aliases)})" if e.aliases else "")
            for e in registered))
    return registered


def rank_and_record(tracker, trials, objectives: dict[str, str]) -> tuple[list[dict], list[int]]:
    """Pareto ranks of the healthy trials, written as `pareto/` artifacts and rank tags;
    returns each trial's objective values ({} for an unhealthy one) and the front's indices."""
    client, parent_id = tracker.client, tracker.parent_id
    points = [t.metrics if t.status == "ok" else {} for t in trials]
    ranks = pareto.ranks(points, objectives)
    front = [i for i, r in enumerate(ranks) if r == 1]
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        (d / "trials.csv").write_text(trials_csv(trials, ranks, objectives))
        if front:
            pareto_png(trials, ranks, objectives, d / "pareto.png")
        client.log_artifacts(parent_id, str(d), ARTIFACT_DIR)
    for t, r in zip(trials, ranks):
        if t.run_id and r is not None:
            client.set_tag(t.run_id, "dlopt.pareto_rank", str(r))
    client.set_tag(parent_id, "dlopt.pareto_front", ",".join(trials[i].trial_id for i in front))
    return points, front


def register_member(sweep: Sweep, t, name: str) -> str:
    """One Pareto-optimal trial's saved model as a version of `name` (no alias yet)."""
    objectives = sweep.plan.objectives
    tags = {"dlopt.spec_hash": sweep.trial_spec(t).spec_hash(), "dlopt.source_run": t.run_id,
            "dlopt.sweep": sweep.plan.sweep_name, "dlopt.trial_id": t.trial_id,
            "dlopt.pareto_rank": "1", "dlopt.objectives": ",".join(
                f"{k}:{m}" for k, m in objectives.items()),
            **{f"metric.{k}": f"{v:.6g}" for k, v in numeric_metrics(t.metrics).items()},
            **{f"objective.{k}": f"{t.metrics[k]:.6g}" for k in objectives}}
    return retry_transient(
        lambda: register_mod.register(sweep.tracker, t.run_id, t.checkpoint_path, name, None, tags),
        drain_timeout_s(), "registering a Pareto-optimal model")
