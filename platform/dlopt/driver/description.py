"""The parent run's description: the sweep as a person reads it first in the MLflow UI.

Pure text from plain rows (dlopt.driver.tables), the `Plan` and the `RegisteredModel`s: the outcome (trials
ok, the best trial, the registered models), the trials table, the plots, the search and the
command that reproduces the sweep. The UI renders it as markdown (`mlflow.note.content`);
links are the UI's own routes, relative so they work wherever the UI serves the store.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional, Sequence
from urllib.parse import quote

from dlopt.driver.tables import KEY_METRICS, fmt, markdown_table, sort_rows, table
from dlopt.registry.versions import RegisteredModel
from dlopt.spec.plan import Plan

# Where the review's files go on the parent run.
ARTIFACT_DIR = "review"
# Rows shown in the description; the full table is the results.html artifact.
MAX_DESCRIPTION_ROWS = 20
# The UI opens experiments in its GenAI view unless asked for the model-training one.
UI_QUERY = "?workflowType=machine_learning"


def ui_links(experiment_id: str) -> dict[str, Callable[..., str]]:
    """Hash routes of the MLflow UI, relative so they work wherever the UI serves this store."""
    return {
        "run": lambda run_id: f"#/experiments/{experiment_id}/runs/{run_id}{UI_QUERY}",
        "model": lambda name, version: f"#/models/{quote(name)}/versions/{version}",
        "artifact": lambda run_id, path: f"get-artifact?path={quote(path, safe='')}&run_uuid={run_id}",
    }


def description(*, plan: Plan, rows: list[dict], best_id: Optional[str],
                registered: list[RegisteredModel], experiment_id: str, parent_run_id: str,
                command: Optional[str], commit: Optional[str], source: Optional[str],
                artifacts: Sequence[str], compression: bool = False,
                stopped: Optional[str] = None,
                importances: Optional[dict[str, float]] = None) -> str:
    """The parent run's markdown description.

    The UI shows the first lines before "Show more": the outcome comes first (trials ok, the
    best trial, the registered model), then the trials table, the plots, the search and how to
    reproduce it.
    """
    link = ui_links(experiment_id)
    by_id = {r["trial_id"]: r for r in rows}
    out = _outcome(plan, rows, by_id.get(best_id) if best_id else None, source, link)
    if stopped:  # why the sweep ended (dlopt.driver.finalize.stop_reason)
        out += [f"**Stopped:** {stopped}.", ""]
    for reg in registered:
        out += [_registered_line(reg, by_id, link), ""]
    out += _trials(plan, rows, link)
    for png in (a for a in artifacts if a.endswith(".png")):  # inline, via the UI's artifact route
        out.append(f"### {Path(png).stem.replace('_', ' ').capitalize()}")
        out.append(f"![{Path(png).stem}]({link['artifact'](parent_run_id, png)})")
        out.append("")
    out += _mattered(importances, parent_run_id, artifacts, link)
    out += _search(plan, compression)
    if artifacts:
        out.append("### Artifacts")
        out.append(f"On this run, folder `{ARTIFACT_DIR}`: "
                   + ", ".join(f"`{Path(a).name}`" for a in artifacts)
                   + "; and `spec.json`, `plan.json`. On each trial's run: its resolved "
                   "`spec.json`, `compression_report.json`, and the `dlopt.model_checkpoint` tag.")
        out.append("")
    out.append("### Reproduce")
    lines = [f"git checkout {commit}"] if commit else []
    lines.append(command or f"dlopt run SPEC  # spec: {source or 'spec.json on this run'}")
    out.append("```\n" + "\n".join(lines) + "\n```")
    return "\n".join(out) + "\n"


def _outcome(plan: Plan, rows: list[dict], best: Optional[dict], source: Optional[str],
             link) -> list[str]:
    """The first lines: trials ok, the search, and the best trial."""
    metric, mode = plan.headline
    ok = sum(r["status"] == "ok" for r in rows)
    swept = ", ".join(f"`{p}`" for p in plan.domains or {}) or "no domains"
    objective = (", ".join(f"{k} ({v})" for k, v in plan.objectives.items())
                 if plan.objectives else f"{metric} ({mode})")
    out = [f"## {plan.experiment}: sweep `{plan.sweep_name}`", "",
           f"**{ok}/{len(rows)} trials ok**; {plan.algorithm} search over {swept}, objective "
           f"{objective}; MLflow experiment `{plan.tracking_experiment}`"
           + (f"; spec `{source}`" if source else "") + ".", ""]
    if best is None:
        out.append("**Best trial:** none. No healthy trial finished: see the trials below and "
                   "their runs for errors.")
    else:
        name = f"[{best['name']}]({link['run'](best['run_id'])})" if best["run_id"] else best["name"]
        others = [m for m in KEY_METRICS if m in best["metrics"] and m != metric][:5]
        out.append(f"**Best trial:** {name}: **{metric} = {fmt(best['metrics'].get(metric))}**"
                   + "".join(f"; {m} {fmt(best['metrics'][m])}" for m in others))
    out.append("")
    return out


def _registered_line(reg: RegisteredModel, by_id: dict[str, dict], link) -> str:
    src = by_id.get(reg.trial_id, {}).get("name", "the best trial")
    return (f"**Registered:** [{reg.name} version {reg.version}]"
            f"({link['model'](reg.name, reg.version)})"
            + (f" as `@{reg.alias}`" if reg.alias else "")
            + f", from {src}: `dlopt.load_model(\"{reg.uri}\")`")


def _trials(plan: Plan, rows: list[dict], link) -> list[str]:
    """The trials table, best first, each name linked to its run; bounded in length."""
    metric, mode = plan.headline
    out = ["### Trials (best first)"]
    header, cells = table(rows, metric, mode, short=True)
    for line, r in zip(cells, sort_rows(rows, metric, mode)):  # each name links to its run
        if r["run_id"]:
            line[0] = f"[{r['name']}]({link['run'](r['run_id'])})"
    out.append(_markdown_table_links(header, cells[:MAX_DESCRIPTION_ROWS]))
    if len(cells) > MAX_DESCRIPTION_ROWS:
        out.append(f"\n... and {len(cells) - MAX_DESCRIPTION_ROWS} more: see "
                   f"`{ARTIFACT_DIR}/results.html`.")
    out.append("")
    return out


def _mattered(importances: Optional[dict[str, float]], parent_run_id: str,
              artifacts: Sequence[str], link) -> list[str]:
    """The searched fields by importance (dlopt.driver.importance), most important first."""
    if not importances:
        return []
    page = f"{ARTIFACT_DIR}/parallel_coordinates.html"
    out = ["### What mattered",
           "Importance (Optuna PED-ANOVA over the healthy trials): "
           + ", ".join(f"`{p}` {v:.2f}" for p, v in importances.items()) + "."]
    if page in artifacts:
        out.append(f"Parallel coordinates in the browser: [{Path(page).name}]"
                   f"({link['artifact'](parent_run_id, page)}).")
    return out + [""]


def _search(plan: Plan, compression: bool) -> list[str]:
    """The search as it ran: algorithm, scheduler, budget, domains, compression stages."""
    out = ["### Search",
           f"{plan.algorithm} search, scheduler {plan.scheduler}; {plan.trials} "
           f"trials of {fmt(plan.epochs)} epochs, {plan.workers_per_trial} worker(s) "
           f"each, {plan.max_concurrent_trials} at once."]
    if plan.domains:
        out.append("")
        out.append(markdown_table(["field", "domain"],
                                  [[p, _domain_text(d)] for p, d in plan.domains.items()]))
    if compression:
        stages = [s.get("stage", "?") for s in plan.spec_json.get("compression") or []]
        out.append("")
        out.append("Compression stages: " + " -> ".join(f"`{s}`" for s in stages) + ".")
    out.append("")
    return out


def _markdown_table_links(header, cells) -> str:
    """Like markdown_table, but the first cell already holds a markdown link."""
    rendered = [[line[0], *[fmt(v) for v in line[1:]]] for line in cells]
    lines = ["| " + " | ".join(str(h) for h in header) + " |",
             "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c).replace("\n", " ") for c in line) + " |" for line in rendered]
    return "\n".join(lines)


def _domain_text(dom: dict) -> str:
    kind = dom.get("domain", "?")
    if "values" in dom:
        return f"{kind}(" + ", ".join(fmt(v) for v in dom["values"]) + ")"
    return f"{kind}({fmt(dom.get('low'))}, {fmt(dom.get('high'))})"
