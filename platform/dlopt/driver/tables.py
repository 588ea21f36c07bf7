"""The sweep's results as tables: pure functions of plain rows, no Ray, no MLflow.

A row is one trial (`trial_rows`): its run name, status, swept values and numeric metrics.
From rows come the results table (best first), its CSV and standalone HTML forms, markdown
tables for the run description, and the compression table and per-trial report. The review
(dlopt.driver.publish) writes them to MLflow; unit tests build them from hand-made trials.
"""
from __future__ import annotations

import html
import json
import math
from typing import Any, Optional, Sequence

from dlopt.spec.report import EPOCH, NOT_METRICS

# Columns a person compares first; any other numeric metric follows in the CSV/HTML tables.
KEY_METRICS = ("val_accuracy", "val_loss", "train_loss", "test_accuracy",
               "compressed_val_accuracy", "model_bytes", "dense_bytes", "compression_ratio",
               "sparsity", "latency_ms", "val_mse", "val_r2")
COMPRESSION_METRICS = ("compressed_val_accuracy", "val_accuracy", "model_bytes", "dense_bytes",
                       "compression_ratio", "sparsity", "latency_ms", "param_count",
                       "dense_param_count", "flops", "dense_flops", "onnx_bytes",
                       "onnx_val_accuracy", "onnx_agreement", "onnx_latency_ms")


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
    """One row per trial: name, status, the swept values, every numeric metric, epochs, ids.

    `trials` are `finalize.TrialSummary`; `names` maps trial id -> run name;
    `assignments` maps trial id -> {spec path: value} (the swept values). Report keys that are
    not metrics (dlopt.spec.report.NOT_METRICS) stay out of `metrics`; the last epoch a trial
    reported is the row's `epoch`.
    """
    rows = []
    for t in trials:
        metrics = {k: float(v) for k, v in (t.metrics or {}).items()
                   if _number(v) is not None and k not in NOT_METRICS}
        rows.append({"name": names.get(t.trial_id, t.trial_id), "trial_id": t.trial_id,
                     "status": t.status, "run_id": t.run_id,
                     "params": dict(assignments.get(t.trial_id, {})), "metrics": metrics,
                     "epoch": _number((t.metrics or {}).get(EPOCH)), "checkpoint": t.checkpoint_path})
    return rows


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
            line += [r.get("epoch"), r["trial_id"], r["run_id"]]
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


def compression_report(row: dict, stages: list) -> dict:
    """A child's compression report: the stages it ran and what they achieved."""
    m = row["metrics"]
    report = {k: m[k] for k in COMPRESSION_METRICS if k in m}
    report["stages"] = stages
    if "model_bytes" in m and "dense_bytes" in m and m["model_bytes"]:
        report["bytes_saved"] = m["dense_bytes"] - m["model_bytes"]
    if "compressed_val_accuracy" in m and "val_accuracy" in m:
        report["accuracy_change"] = m["compressed_val_accuracy"] - m["val_accuracy"]
    layers = layer_table(m)
    if layers:
        report["layers"] = layers
    return report


def layer_table(m: dict) -> list[dict]:
    """Prune(allocation="sensitivity")'s per-layer rows: sparsity chosen, weights kept."""
    names = [k[len("prune_sparsity."):] for k in m if k.startswith("prune_sparsity.")]
    return [{"layer": n, "sparsity": m[f"prune_sparsity.{n}"],
             "params": m.get(f"prune_params.{n}"), "kept": m.get(f"prune_kept.{n}")}
            for n in names]
