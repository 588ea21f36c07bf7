"""The review's plots (matplotlib, Agg backend: the driver has no display).

Each builder takes (rows, histories, path, metric, mode, best_id), draws from plain rows
(dlopt.driver.tables) and per-epoch histories, and returns the written path, or None when
there is nothing to draw. `PLOTS` is what dlopt.driver.publish writes on the parent run.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Callable, Optional

from dlopt.driver.tables import sort_rows

CURVE_METRICS = ("train_loss", "val_loss", "val_accuracy")


def pyplot():
    import matplotlib

    matplotlib.use("Agg")  # no display on the driver; set before pyplot is imported
    import matplotlib.pyplot as plt

    return plt


def learning_curves_png(rows: list[dict], histories: dict[str, dict[str, list]], path: Path,
                        metric: str, mode: str, best_id: Optional[str] = None) -> Optional[Path]:
    """The curves of the trials in `histories` (publish passes the best 20) in one figure: a
    panel per metric, a line per trial, best in bold.

    `histories[trial_id][metric]` is a list of (epoch, value).
    """
    metrics = [m for m in dict.fromkeys((*CURVE_METRICS, metric))
               if any(histories.get(r["trial_id"], {}).get(m) for r in rows)]
    if not metrics:
        return None
    plt = pyplot()
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
    plt = pyplot()
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


# file name -> builder; publish skips compression.png for sweeps without compression stages.
# (A multi-objective sweep's Pareto plot is drawn by dlopt.driver.front, under pareto/.)
PLOTS: dict[str, Callable[..., Optional[Path]]] = {
    "learning_curves.png": learning_curves_png,
    "compression.png": compression_png,
}
