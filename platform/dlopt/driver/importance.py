"""What mattered in a sweep: hyperparameter importance and a parallel-coordinates view.

Importance is Optuna's PED-ANOVA (`optuna.importance.get_param_importances` with
`PedAnovaImportanceEvaluator`; no scikit-learn needed, unlike fANOVA) over the finished
healthy trials, rebuilt as an Optuna study from the review's rows: each trial's searched
values (`rows[i]["params"]`, as recorded) and its searched metric. The parallel-coordinates
plot is a matplotlib PNG and, for the browser, a plain HTML page with an inline SVG (no
plotly in the environment). Files go under the parent run's `review/` (dlopt.driver.publish).
"""
from __future__ import annotations

import html
import json
import math
from pathlib import Path
from typing import Optional

from dlopt.driver.plots import pyplot
from dlopt.driver.tables import fmt, sort_rows
from dlopt.spec.plan import Plan

MIN_TRIALS = 4  # fewer finished trials say nothing about importance


def _usable(plan: Plan, rows: list[dict], metric: str) -> list[dict]:
    return [r for r in rows if r["status"] == "ok" and isinstance(r["metrics"].get(metric), float)
            and math.isfinite(r["metrics"][metric]) and all(p in r["params"] for p in plan.domains)]


def _index(values: list, value) -> int:
    """A choice's value as its index (values may be lists or dicts; compared as JSON)."""
    text = json.dumps(value, sort_keys=True)
    return next(i for i, v in enumerate(values) if json.dumps(v, sort_keys=True) == text)


def _distribution(dom: dict):
    import optuna

    kind = dom["domain"]
    if kind in ("choice", "grid"):
        return optuna.distributions.CategoricalDistribution(list(range(len(dom["values"]))))
    if kind == "randint":
        return optuna.distributions.IntDistribution(dom["low"], dom["high"] - 1)
    return optuna.distributions.FloatDistribution(dom["low"], dom["high"],
                                                  log=kind == "loguniform")


def _coded(dom: dict, value):
    return _index(dom["values"], value) if dom["domain"] in ("choice", "grid") else value


def param_importances(plan: Plan, rows: list[dict]) -> dict[str, float]:
    """Searched path -> PED-ANOVA importance (normalized to sum 1), most important first;
    empty with fewer than MIN_TRIALS healthy trials or no domain."""
    import optuna

    metric, mode = plan.headline
    usable = _usable(plan, rows, metric)
    if not plan.domains or len(usable) < MIN_TRIALS:
        return {}
    study = optuna.create_study(direction="maximize" if mode == "max" else "minimize")
    dists = {p: _distribution(d) for p, d in plan.domains.items()}
    for r in usable:
        study.add_trial(optuna.trial.create_trial(
            params={p: _coded(d, r["params"][p]) for p, d in plan.domains.items()},
            distributions=dists, value=r["metrics"][metric]))
    evaluator = optuna.importance.PedAnovaImportanceEvaluator()
    found = optuna.importance.get_param_importances(study, evaluator=evaluator, normalize=True)
    return {p: float(found.get(p, 0.0)) for p in sorted(plan.domains, key=lambda p: -found.get(p, 0.0))}


def importance_png(importances: dict[str, float], path: Path) -> Optional[Path]:
    if not importances:
        return None
    plt = pyplot()
    names = list(importances)[::-1]
    fig, ax = plt.subplots(figsize=(6, 0.5 + 0.4 * len(names)))
    ax.barh(names, [importances[n] for n in names], color="#3b75af")
    ax.set_xlabel("importance (PED-ANOVA, share of the total)")
    ax.set_title("what mattered")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def _axes(plan: Plan, rows: list[dict], metric: str) -> tuple[list[str], list[list[float]]]:
    """Each usable row as positions in [0, 1] along the searched axes, then the metric."""
    axes = list(plan.domains) + [metric]
    values = [r["metrics"][metric] for r in rows]
    lo, hi = min(values), max(values)
    out = []
    for r in rows:
        line = []
        for p, dom in plan.domains.items():
            v = _coded(dom, r["params"][p])
            if dom["domain"] in ("choice", "grid"):
                low, high = 0, max(len(dom["values"]) - 1, 1)
            else:
                low, high = dom["low"], dom["high"]
            if dom["domain"] == "loguniform":
                v, low, high = math.log10(v), math.log10(low), math.log10(high)
            line.append((v - low) / ((high - low) or 1))
        line.append((r["metrics"][metric] - lo) / ((hi - lo) or 1))
        out.append(line)
    return axes, out


def parallel_png(plan: Plan, rows: list[dict], path: Path) -> Optional[Path]:
    """A line per healthy trial across the searched fields and the metric, coloured by the
    metric (best trial in black)."""
    metric, mode = plan.headline
    usable = sort_rows(_usable(plan, rows, metric), metric, mode)[::-1]  # best drawn last
    if not plan.domains or len(usable) < 2:
        return None
    plt = pyplot()
    axes, lines = _axes(plan, usable, metric)
    fig, ax = plt.subplots(figsize=(1.8 * len(axes) + 1, 4))
    cmap = plt.get_cmap("viridis" if mode == "max" else "viridis_r")
    for i, line in enumerate(lines):
        best = i == len(lines) - 1
        ax.plot(range(len(axes)), line, color="black" if best else cmap(line[-1]),
                lw=2.5 if best else 1, alpha=1 if best else 0.7)
    ax.set_xticks(range(len(axes)), [a.replace(".", ".\n") for a in axes], fontsize=8)
    ax.set_yticks([0, 1], ["low", "high"])
    for x in range(len(axes)):
        ax.axvline(x, color="grey", lw=0.5)
    ax.set_title(f"parallel coordinates ({metric}, {mode}; best in black)")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def parallel_html(plan: Plan, rows: list[dict], importances: dict[str, float],
                  path: Path) -> Optional[Path]:
    """The same view for the browser: an inline SVG and the importance table, no scripts."""
    metric, mode = plan.headline
    usable = sort_rows(_usable(plan, rows, metric), metric, mode)[::-1]
    if not plan.domains or len(usable) < 2:
        return None
    axes, lines = _axes(plan, usable, metric)
    w, h, pad = 180 * len(axes), 300, 40
    x = [pad + i * (w - 2 * pad) / max(len(axes) - 1, 1) for i in range(len(axes))]
    svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h + 40}">']
    svg += [f'<line x1="{xi:.0f}" y1="{pad}" x2="{xi:.0f}" y2="{h - pad}" stroke="#999"/>'
            f'<text x="{xi:.0f}" y="{h - 10}" font-size="11" text-anchor="middle">'
            f'{html.escape(a)}</text>' for xi, a in zip(x, axes)]
    for i, (r, line) in enumerate(zip(usable, lines)):
        best = i == len(lines) - 1
        pts = " ".join(f"{xi:.1f},{h - pad - v * (h - 2 * pad):.1f}" for xi, v in zip(x, line))
        shade = int(200 * (1 - line[-1])) if mode == "max" else int(200 * line[-1])
        colour = "black" if best else f"rgb({shade},{shade},255)"
        svg.append(f'<polyline points="{pts}" fill="none" stroke="{colour}" '
                   f'stroke-width="{3 if best else 1}"><title>{html.escape(r["name"])}: '
                   f'{metric} {fmt(r["metrics"][metric])}</title></polyline>')
    svg.append("</svg>")
    table = "".join(f"<tr><td>{html.escape(p)}</td><td>{v:.3f}</td></tr>"
                    for p, v in importances.items())
    path.write_text(f"<!doctype html><html><head><meta charset='utf-8'><title>{plan.sweep_name}: "
                    f"what mattered</title></head><body><h2>{html.escape(plan.sweep_name)}: "
                    f"what mattered ({metric}, {mode})</h2>\n" + "\n".join(svg)
                    + ("<h3>Importance (PED-ANOVA)</h3><table border='1'><tr><th>field</th>"
                       f"<th>importance</th></tr>{table}</table>" if importances else
                       f"<p>Importance needs at least {MIN_TRIALS} healthy trials.</p>")
                    + "</body></html>\n")
    return path


def write(plan: Plan, rows: list[dict], folder: Path) -> dict[str, float]:
    """importance.png, parallel_coordinates.png/.html into `folder`; returns the importances."""
    importances = param_importances(plan, rows)
    importance_png(importances, folder / "importance.png")
    parallel_png(plan, rows, folder / "parallel_coordinates.png")
    parallel_html(plan, rows, importances, folder / "parallel_coordinates.html")
    return importances
