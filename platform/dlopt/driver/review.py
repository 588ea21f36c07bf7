"""The sweep as a person reads it in the MLflow UI: description, tables and plots on the runs.

Runs on the driver after the sweep (DESIGN rule 5: the driver is the only MLflow writer),
called once from `finalize.finalize`. It writes:

- the parent run's description (`mlflow.note.content`, rendered as markdown by the UI):
  the experiment, the search, the best trial and its metrics, the registered model versions
  with links, and the command that reproduces the sweep;
- artifacts on the parent under `review/`: `results.csv` / `results.html` (every trial),
  `learning_curves.png` (every trial, one figure), and for sweeps with compression stages
  `compression.csv` / `compression.png` (accuracy against model bytes);
- on each child: `compression_report.json` and the checkpoint reference tag (the resolved
  `spec.json` is already logged by the tracking callback).

The builders of text and tables are pure functions of plain rows (unit-tested without Ray or
MLflow); `publish` is the thin part that reads metric histories and writes to MLflow.
Multi-objective sweeps add a Pareto plot: a builder appended to `PLOTS` (same signature as
`learning_curves_png`) is written next to the others and shown in the description.
"""
from __future__ import annotations

import getpass
import html
import json
import math
import shlex
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Optional, Sequence
from urllib.parse import quote

ARTIFACT_DIR = "review"
# Columns a person compares first; any other numeric metric follows in the CSV/HTML tables.
KEY_METRICS = ("val_accuracy", "val_loss", "train_loss", "test_accuracy",
               "compressed_val_accuracy", "model_bytes", "dense_bytes", "compression_ratio",
               "sparsity", "latency_ms", "val_mse", "val_r2")
COMPRESSION_METRICS = ("compressed_val_accuracy", "val_accuracy", "model_bytes", "dense_bytes",
                       "compression_ratio", "sparsity", "latency_ms", "params")
CURVE_METRICS = ("train_loss", "val_loss", "val_accuracy")
# Rows shown in the description; the full table is the results.html artifact.
MAX_DESCRIPTION_ROWS = 20


# ------------------------------------------------------------------ source and command
def _dlopt_args(argv: Sequence[str]) -> Optional[list[str]]:
    """The arguments after the program when argv is a `dlopt ...` call (console script or -m)."""
    if not argv:
        return None
    prog = Path(argv[0])
    if prog.name == "dlopt" or (prog.name == "__main__.py" and prog.parent.name in ("dlopt", "cli")):
        return list(argv[1:])
    return None


def source_tags(argv: Sequence[str] = (), commit: Optional[str] = None,
                find_commit: bool = True) -> dict[str, str]:
    """MLflow's system tags for the run's source: the experiment file, its git commit, the command.

    `dlopt run FILE ...` names FILE; from the Python API (`dlopt.run(experiment)` in a script)
    the source is the script, as MLflow itself records it. The commit is the one checked out
    where the source file lives (else the working directory).
    """
    argv = list(argv or sys.argv)
    args = _dlopt_args(argv)
    source, command = None, None
    if args and args[0] in ("run", "submit"):
        from dlopt.cli.main import build_parser

        parsed, _ = build_parser().parse_known_args(args)
        source = parsed.spec
        command = " ".join(shlex.quote(a) for a in ["dlopt", *args])
    elif argv and argv[0] and argv[0] != "-c":
        source = argv[0]
        command = " ".join(shlex.quote(a) for a in ["python", *argv])
    tags = {"mlflow.source.type": "LOCAL", "mlflow.user": getpass.getuser()}
    if source:
        tags["mlflow.source.name"] = source
    if command:
        tags["dlopt.command"] = command[:5000]
    if commit is None and find_commit:
        from dlopt.tracking.store import git_commit

        folder = Path(source).resolve().parent if source and Path(source).exists() else None
        commit = (git_commit(folder) if folder else None) or git_commit()
    if commit:
        tags["mlflow.source.git.commit"] = commit
    return tags


# ------------------------------------------------------------------ rows (pure)
def fmt(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return "" if value is None else str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        if value.is_integer() and abs(value) >= 1000:
            return f"{int(value):,}"  # byte counts: 19,520 rather than 1.952e+04
        if value != 0 and (abs(value) >= 1e5 or abs(value) < 1e-3):
            return f"{value:.3g}"
        return f"{value:.4g}"
    if isinstance(value, int) and abs(value) >= 10000:
        return f"{value:,}"
    if isinstance(value, (list, dict)):
        text = json.dumps(value)
        return text if len(text) <= 40 else text[:37] + "..."
    return str(value)


def _number(value: Any) -> Optional[float]:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def trial_rows(trials, names: dict[str, str], assignments: dict[str, dict]) -> list[dict]:
    """One row per trial: name, status, the swept values, every numeric metric, ids.

    `trials` are `finalize.TrialSummary`; `names` maps trial id -> run name;
    `assignments` maps trial id -> {spec path: value} (the swept values).
    """
    rows = []
    for t in trials:
        metrics = {k: float(v) for k, v in (t.metrics or {}).items()
                   if _number(v) is not None and k not in _NOT_METRICS}
        rows.append({"name": names.get(t.trial_id, t.trial_id), "trial_id": t.trial_id,
                     "status": t.status, "run_id": t.run_id,
                     "params": dict(assignments.get(t.trial_id, {})), "metrics": metrics,
                     "checkpoint": t.checkpoint_path})
    return rows


_NOT_METRICS = {"training_iteration", "time_this_iter_s", "time_total_s", "timestamp", "pid",
                "done", "time_since_restore", "iterations_since_restore", "final", "diverged",
                "date", "hostname", "node_ip", "trial_id", "experiment_tag"}


def metric_columns(rows: list[dict], first: Sequence[str] = ()) -> list[str]:
    present = {k for r in rows for k in r["metrics"]}
    ordered = [m for m in (*first, *KEY_METRICS) if m in present]
    ordered = list(dict.fromkeys(ordered))
    return ordered + sorted(present - set(ordered))


def sort_rows(rows: list[dict], metric: str, mode: str) -> list[dict]:
    """Best first: healthy trials by the metric, then the rest (diverged, errored) by name."""
    def key(r):
        v = r["metrics"].get(metric)
        ok = r["status"] == "ok" and v is not None and math.isfinite(v)
        return (0 if ok else 1, (-v if mode == "max" else v) if ok else 0.0, r["name"])
    return sorted(rows, key=key)


def table(rows: list[dict], metric: str, mode: str, short: bool = False) -> tuple[list[str], list[list]]:
    """Header and cells of the results table; `short` keeps the key metrics only."""
    params = list(dict.fromkeys(p for r in rows for p in r["params"]))
    metrics = metric_columns(rows, (metric,))
    if short:
        metrics = [m for m in metrics if m in (metric, *KEY_METRICS)][:6]
    header = ["trial", "status", *params, *metrics] + ([] if short else ["epochs", "trial_id", "run_id"])
    cells = []
    for r in sort_rows(rows, metric, mode):
        line = [r["name"], r["status"], *[r["params"].get(p) for p in params],
                *[r["metrics"].get(m) for m in metrics]]
        if not short:
            line += [r["metrics"].get("epoch"), r["trial_id"], r["run_id"]]
        cells.append(line)
    return header, cells


def results_csv(rows: list[dict], metric: str, mode: str) -> str:
    import csv
    import io

    header, cells = table(rows, metric, mode)
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(header)
    for line in cells:
        writer.writerow(["" if v is None else (json.dumps(v) if isinstance(v, (list, dict)) else v)
                         for v in line])
    return out.getvalue()


def results_html(rows: list[dict], metric: str, mode: str, title: str) -> str:
    """A standalone HTML page (the UI shows .html artifacts in a frame)."""
    header, cells = table(rows, metric, mode)
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "\n".join("<tr>" + "".join(f"<td>{html.escape(fmt(v))}</td>" for v in line) + "</tr>"
                     for line in cells)
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>"
        "body{font-family:sans-serif;font-size:13px;margin:12px}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}"
        "td:first-child,th:first-child{text-align:left}th{background:#f3f3f3}"
        "tr:nth-child(2) td{font-weight:bold}"
        f"</style></head><body><h3>{html.escape(title)}</h3>"
        f"<p>best first by {html.escape(metric)} ({mode})</p>"
        f"<table><tr>{head}</tr>\n{body}</table></body></html>\n")


def markdown_table(header: Sequence[str], cells: Sequence[Sequence[Any]]) -> str:
    def cell(v):
        return fmt(v).replace("|", "\\|").replace("\n", " ")
    lines = ["| " + " | ".join(cell(h) for h in header) + " |",
             "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in line) + " |" for line in cells]
    return "\n".join(lines)


def compression_rows(rows: list[dict]) -> tuple[list[str], list[list]]:
    """Accuracy against bytes: one line per trial that saved a model."""
    keep = [r for r in rows if "model_bytes" in r["metrics"]]
    cols = [m for m in COMPRESSION_METRICS if any(m in r["metrics"] for r in keep)]
    keep.sort(key=lambda r: (r["metrics"]["model_bytes"], r["name"]))
    return ["trial", "status", *cols], [[r["name"], r["status"], *[r["metrics"].get(c) for c in cols]]
                                        for r in keep]


# ------------------------------------------------------------------ plots (matplotlib Agg)
def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # no display on the driver; set before pyplot is imported
    import matplotlib.pyplot as plt

    return plt


def learning_curves_png(rows: list[dict], histories: dict[str, dict[str, list]], path: Path,
                        metric: str, mode: str, best_id: Optional[str] = None) -> Optional[Path]:
    """Every trial's curves in one figure: a panel per metric, a line per trial, best in bold.

    `histories[trial_id][metric]` is a list of (epoch, value).
    """
    metrics = [m for m in dict.fromkeys((*CURVE_METRICS, metric))
               if any(histories.get(r["trial_id"], {}).get(m) for r in rows)]
    if not metrics:
        return None
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.6), squeeze=False)
    for ax, m in zip(axes[0], metrics):
        for r in sort_rows(rows, metric, mode):
            points = sorted(histories.get(r["trial_id"], {}).get(m) or [])
            if not points:
                continue
            best = r["trial_id"] == best_id
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", markersize=3,
                    linewidth=2.6 if best else 1.2, alpha=1.0 if best else 0.75,
                    linestyle="-" if r["status"] == "ok" else ":",
                    label=r["name"] + ("  (best)" if best else ""))
        ax.set_title(m)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(3, max(1, len(labels))), fontsize=8,
               frameon=False)
    legend_rows = math.ceil(len(labels) / 3)
    fig.tight_layout(rect=(0, min(0.45, 0.07 * legend_rows + 0.02), 1, 1))
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def compression_png(rows: list[dict], histories, path: Path, metric: str, mode: str,
                    best_id: Optional[str] = None) -> Optional[Path]:
    """Accuracy after compression against saved model bytes (dense model in grey)."""
    keep = [r for r in rows if "model_bytes" in r["metrics"]
            and "compressed_val_accuracy" in r["metrics"]]
    if not keep:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for r in keep:
        m = r["metrics"]
        x, y = m["model_bytes"], m["compressed_val_accuracy"]
        if "dense_bytes" in m and "val_accuracy" in m:
            ax.plot([m["dense_bytes"], x], [m["val_accuracy"], y], color="0.75", linewidth=0.8,
                    zorder=1)
            ax.scatter([m["dense_bytes"]], [m["val_accuracy"]], color="0.6", s=18, zorder=2)
        ax.scatter([x], [y], s=60 if r["trial_id"] == best_id else 30, zorder=3,
                   edgecolors="black" if r["trial_id"] == best_id else "none")
        ax.annotate(r["name"].split(" ")[0], (x, y), textcoords="offset points", xytext=(4, 4),
                    fontsize=7)
    ax.set_xscale("log")
    ax.set_title("accuracy against model bytes")
    ax.set_xlabel("model bytes (saved artifact; grey: dense)")
    ax.set_ylabel("accuracy (after compression; grey: dense)")
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


# A plot builder: (rows, histories, path, metric, mode, best_id) -> written path or None.
# The multi-objective helper appends its Pareto plot here (file name -> builder).
PLOTS: dict[str, Callable[..., Optional[Path]]] = {
    "learning_curves.png": learning_curves_png,
    "compression.png": compression_png,
}


# ------------------------------------------------------------------ description (pure)
# The UI opens experiments in its GenAI view unless asked for the model-training one.
UI_QUERY = "?workflowType=machine_learning"


def ui_links(experiment_id: str) -> dict[str, Callable[..., str]]:
    """Hash routes of the MLflow UI, relative so they work wherever the UI serves this store."""
    return {
        "run": lambda run_id: f"#/experiments/{experiment_id}/runs/{run_id}{UI_QUERY}",
        "model": lambda name, version: f"#/models/{quote(name)}/versions/{version}",
        "artifact": lambda run_id, path: f"get-artifact?path={quote(path, safe='')}&run_uuid={run_id}",
    }


def _objective(plan: dict) -> tuple[str, str]:
    if plan.get("objectives"):
        return next(iter(plan["objectives"].items()))
    return plan["metric"], plan["mode"]


def description(*, plan: dict, rows: list[dict], best_id: Optional[str], registered: list[dict],
                experiment_id: str, parent_run_id: str, command: Optional[str],
                commit: Optional[str], source: Optional[str], artifacts: Sequence[str],
                compression: bool = False) -> str:
    """The parent run's markdown description. `plan` is `Plan.to_dict()`.

    The UI shows the first lines before "Show more": the outcome comes first (trials ok, the
    best trial, the registered model), then the trials table, the plots, the search and how to
    reproduce it.
    """
    link = ui_links(experiment_id)
    metric, mode = _objective(plan)
    ok = sum(r["status"] == "ok" for r in rows)
    by_id = {r["trial_id"]: r for r in rows}
    best = by_id.get(best_id) if best_id else None
    swept = ", ".join(f"`{p}`" for p in plan.get("domains") or {}) or "no domains"
    objective = (", ".join(f"{k} ({v})" for k, v in plan["objectives"].items())
                 if plan.get("objectives") else f"{metric} ({mode})")
    out = [f"## {plan['experiment']}: sweep `{plan['sweep_name']}`", "",
           f"**{ok}/{len(rows)} trials ok**; {plan['algorithm']} search over {swept}, objective "
           f"{objective}; MLflow experiment `{plan['tracking_experiment']}`"
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
    for reg in registered:
        uri = f"models:/{reg['name']}@{reg['alias']}" if reg.get("alias") else \
            f"models:/{reg['name']}/{reg['version']}"
        src = by_id.get(reg.get("trial_id"), {}).get("name", "the best trial")
        out.append(f"**Registered:** [{reg['name']} version {reg['version']}]"
                   f"({link['model'](reg['name'], reg['version'])})"
                   + (f" as `@{reg['alias']}`" if reg.get("alias") else "")
                   + f", from {src}: `dlopt.load_model(\"{uri}\")`")
        out.append("")

    out.append("### Trials (best first)")
    header, cells = table(rows, metric, mode, short=True)
    for line, r in zip(cells, sort_rows(rows, metric, mode)):  # each name links to its run
        if r["run_id"]:
            line[0] = f"[{r['name']}]({link['run'](r['run_id'])})"
    out.append(_markdown_table_links(header, cells[:MAX_DESCRIPTION_ROWS]))
    if len(cells) > MAX_DESCRIPTION_ROWS:
        out.append(f"\n... and {len(cells) - MAX_DESCRIPTION_ROWS} more: see "
                   f"`{ARTIFACT_DIR}/results.html`.")
    out.append("")

    for png in (a for a in artifacts if a.endswith(".png")):  # inline, via the UI's artifact route
        out.append(f"### {Path(png).stem.replace('_', ' ').capitalize()}")
        out.append(f"![{Path(png).stem}]({link['artifact'](parent_run_id, png)})")
        out.append("")

    out.append("### Search")
    out.append(f"{plan['algorithm']} search, scheduler {plan['scheduler']}; {plan['trials']} "
               f"trials of {fmt(plan['epochs'])} epochs, {plan['workers_per_trial']} worker(s) "
               f"each, {plan['max_concurrent_trials']} at once.")
    if plan.get("domains"):
        out.append("")
        out.append(markdown_table(["field", "domain"],
                                  [[p, _domain_text(d)] for p, d in plan["domains"].items()]))
    if compression:
        stages = [s.get("stage", "?") for s in plan["spec_json"].get("compression") or []]
        out.append("")
        out.append("Compression stages: " + " -> ".join(f"`{s}`" for s in stages) + ".")
    out.append("")

    if artifacts:
        out.append("### Artifacts")
        out.append(f"On this run, folder `{ARTIFACT_DIR}`: "
                   + ", ".join(f"`{Path(a).name}`" for a in artifacts)
                   + "; and `spec.json`, `plan.json`. On each trial's run: its resolved "
                   "`spec.json`, `compression_report.json`, and the `dlopt.model_checkpoint` tag.")
        out.append("")

    out.append("### Reproduce")
    lines = []
    if commit:
        lines.append(f"git checkout {commit}")
    lines.append(command or f"dlopt run SPEC  # spec: {source or 'spec.json on this run'}")
    out.append("```\n" + "\n".join(lines) + "\n```")
    return "\n".join(out) + "\n"


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


def compression_report(row: dict, stages: list) -> dict:
    """A child's compression report: the stages it ran and what they achieved."""
    m = row["metrics"]
    report = {k: m[k] for k in COMPRESSION_METRICS if k in m}
    report["stages"] = stages
    if "model_bytes" in m and "dense_bytes" in m and m["model_bytes"]:
        report["bytes_saved"] = m["dense_bytes"] - m["model_bytes"]
    if "compressed_val_accuracy" in m and "val_accuracy" in m:
        report["accuracy_change"] = m["compressed_val_accuracy"] - m["val_accuracy"]
    return report


# ------------------------------------------------------------------ I/O: read MLflow, write MLflow
def histories_from_mlflow(client, rows: list[dict], metrics: Sequence[str]) -> dict[str, dict[str, list]]:
    """Per-epoch metric histories of every child run (logged once per epoch by the tracker)."""
    out: dict[str, dict[str, list]] = {}
    for r in rows:
        if not r["run_id"]:
            continue
        out[r["trial_id"]] = {m: [(h.step, h.value) for h in client.get_metric_history(r["run_id"], m)
                                  if math.isfinite(h.value)] for m in metrics}
    return out


def publish(tracker, plan, spec, trials, best, registered: list[dict], tables: dict,
            space) -> dict:
    """Write the review of a finished sweep to MLflow; returns what it wrote (for tests)."""
    from dlopt.spec import resolve
    from dlopt.spec.plan import assignment

    client = tracker.client
    parent_id = tracker.parent_id
    plan_dict = plan.to_dict()
    metric, mode = plan.metric, plan.mode
    if plan.objectives:
        metric, mode = next(iter(plan.objectives.items()))
    names = {t.trial_id: client.get_run(t.run_id).info.run_name for t in trials if t.run_id}
    assignments = {t.trial_id: assignment(
        {k: v for k, v in (t.config or {}).items() if k in space}, tables) for t in trials}
    rows = trial_rows(trials, names, assignments)
    best_id = best.trial_id if best else None
    parent = client.get_run(parent_id)
    tags = parent.data.tags
    compression = bool(plan.spec_json.get("compression"))

    written = []
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp) / ARTIFACT_DIR
        d.mkdir()
        (d / "results.csv").write_text(results_csv(rows, metric, mode))
        (d / "results.html").write_text(results_html(rows, metric, mode, plan.sweep_name))
        if compression:
            header, cells = compression_rows(rows)
            (d / "compression.csv").write_text(
                ",".join(header) + "\n" + "\n".join(",".join("" if v is None else str(v) for v in c)
                                                    for c in cells) + "\n")
        histories = histories_from_mlflow(client, rows, tuple(dict.fromkeys((*CURVE_METRICS, metric))))
        for name, build in PLOTS.items():
            if name == "compression.png" and not compression:
                continue
            build(rows, histories, d / name, metric, mode, best_id)
        written = sorted(f"{ARTIFACT_DIR}/{p.name}" for p in d.iterdir())
        client.log_artifacts(parent_id, str(d), ARTIFACT_DIR)

    for r in rows:  # each child: its compression report and checkpoint reference
        if not r["run_id"]:
            continue
        stages = resolve(plan.spec_json, assignments.get(r["trial_id"], {})).model_dump(
            mode="json")["compression"]  # as the trial ran them (its spec.json)
        tracker.log_json(r["run_id"], compression_report(r, stages), "compression_report.json")
        if r["checkpoint"]:
            client.set_tag(r["run_id"], "dlopt.model_checkpoint", r["checkpoint"])

    text = description(plan=plan_dict, rows=rows, best_id=best_id, registered=registered,
                       experiment_id=tracker.experiment_id, parent_run_id=parent_id,
                       command=tags.get("dlopt.command"), commit=tags.get("mlflow.source.git.commit"),
                       source=tags.get("mlflow.source.name"), artifacts=written,
                       compression=compression)
    client.set_tag(parent_id, "mlflow.note.content", text)
    return {"rows": rows, "artifacts": written, "description": text}


def publish_safely(*args, **kwargs) -> Optional[dict]:
    """`publish`, but a failure to draw or upload the review never fails a finished sweep:
    the trials and the registered model are already in MLflow. The error is printed and tagged."""
    try:
        return publish(*args, **kwargs)
    except Exception as err:  # noqa: BLE001 (reported, not hidden)
        tracker = args[0] if args else kwargs.get("tracker")
        from dlopt.tracking.store import scrub

        print(f"warning: the sweep review could not be written to MLflow: {scrub(repr(err))}",
              file=sys.stderr)
        try:
            tracker.client.set_tag(tracker.parent_id, "dlopt.review_error", repr(err)[:5000])
        except Exception:  # noqa: BLE001 (the tracking store itself is down)
            pass
        return None


def run_name(tracking_uri: str, run_id: Optional[str]) -> Optional[str]:
    """A run's name for the terminal summary (None when the store cannot be read)."""
    if not run_id:
        return None
    try:
        from mlflow.tracking import MlflowClient

        return MlflowClient(tracking_uri).get_run(run_id).info.run_name
    except Exception:  # noqa: BLE001 (the summary falls back to the trial id)
        return None
