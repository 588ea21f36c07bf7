"""Terminal output: a live table of trials (status, epoch, metric) and the final summary."""
from __future__ import annotations

import sys
import time

from ray.tune import Callback

from dlopt.tracking.store import trial_run_name


class ProgressCallback(Callback):
    def __init__(self, plan, tables, every_s: float = 5.0, stream=None):
        self.plan = plan
        self.tables = tables
        self.every_s = every_s
        self.stream = stream or sys.stdout
        self.rows: dict[str, dict] = {}
        self.last_print = 0.0
        self.metric = next(iter(plan.objectives)) if plan.objectives else plan.metric

    def _row(self, trial):
        if trial.trial_id not in self.rows:
            from dlopt.spec.plan import assignment

            name = trial_run_name(len(self.rows) + 1, assignment(dict(trial.config), self.tables))
            self.rows[trial.trial_id] = {"name": name, "status": "RUNNING", "epoch": 0, "value": None}
        return self.rows[trial.trial_id]

    def _print(self, force=False):
        now = time.monotonic()
        if not force and now - self.last_print < self.every_s:
            return
        self.last_print = now
        done = sum(r["status"] != "RUNNING" for r in self.rows.values())
        lines = [f"-- {self.plan.sweep_name}: {done}/{self.plan.trials} trials done"]
        width = min(60, max((len(r["name"]) for r in self.rows.values()), default=10))
        for r in self.rows.values():
            value = "-" if r["value"] is None else f"{r['value']:.4g}"
            lines.append(f"   {r['name'][:width]:<{width}}  {r['status']:<8} epoch {r['epoch']:>3}/"
                         f"{self.plan.epochs}  {self.metric} {value}")
        print("\n".join(lines), file=self.stream, flush=True)

    def on_trial_start(self, iteration, trials, trial, **info):
        self._row(trial)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        row = self._row(trial)
        row["epoch"] = int(result.get("epoch", row["epoch"]))
        if self.metric in result:
            row["value"] = result[self.metric]
        self._print()

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._row(trial)["status"] = "DONE"
        self._print(force=True)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._row(trial)["status"] = "ERROR"
        self._print(force=True)


class _Stderr:
    """sys.stderr looked up at each write (pytest and others swap it)."""

    def write(self, text):
        return sys.stderr.write(text)

    def flush(self):
        sys.stderr.flush()


class _Discard:
    """Where MLflow's event prints go when the driver is quiet; `enabled` as MLflow's stream has."""

    enabled = False

    def write(self, text):
        return len(text)

    def flush(self):
        pass


def silence_mlflow_events() -> None:
    """Drop MLflow's event prints ("Successfully registered model ...", "Created version ...")
    while its logger's warnings and errors still reach stderr.

    Why by hand: `mlflow.utils.logging_utils.disable_logging()` silences both, and MLflow's
    own context managers call `enable_logging()` again on exit. Its `eprint` looks the stream
    up at each call, so pointing that name at a sink (and the logger at stderr) holds.
    """
    import logging

    from mlflow.utils import logging_utils

    old = logging_utils.MLFLOW_LOGGING_STREAM
    for handler in logging.getLogger("mlflow").handlers:
        if getattr(handler, "stream", None) is old:
            handler.setStream(_Stderr())
    logging_utils.MLFLOW_LOGGING_STREAM = _Discard()


# Ray messages that tell a dlopt user nothing they can act on. The raylet pushes them to every
# driver through its error channel, which Ray prints whatever `log_to_driver` says.
RAY_NOISE = ("PYTHON worker processes have been started on node",)


def drop_ray_noise(data: dict) -> dict | None:
    """A Ray driver message (`{"lines": [...], ...}`) without the noisy lines; None if empty."""
    lines = [line for line in data.get("lines", []) if not any(n in line for n in RAY_NOISE)]
    return {**data, "lines": lines} if lines else None


def hide_ray_noise() -> None:
    """Filter the raylet's pushed messages on this driver (others, e.g. out-of-memory kills,
    still print). Why by hand: Ray has no switch for them; its listener thread looks up
    `ray._private.worker.print_to_stdstream` at each message, so a wrapper there holds."""
    import ray._private.worker as ray_worker

    original = ray_worker.print_to_stdstream
    if getattr(original, "dlopt_filtered", False):
        return

    def filtered(data, ignore_prefix):
        kept = drop_ray_noise(data)
        if kept is not None:
            original(kept, ignore_prefix)

    filtered.dlopt_filtered = True
    ray_worker.print_to_stdstream = filtered
