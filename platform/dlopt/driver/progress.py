"""The terminal view of a running sweep: bounded in size whatever the number of trials.

It shows counts by status (running, paused by PBT, pending, done, early-stopped by a
scheduler, diverged, error), the best trial so far, the running trials and the top few
(docs/architecture.md, "Logging and the terminal"). On a TTY it is redrawn in place (rich's
Live display); otherwise (CI, `ray job logs`, a pipe) it prints a two-line status every
`every_s` seconds and one line per failed trial, so a 1,000-trial sweep prints a few hundred
lines, not a table per event. Each Tune event costs O(1): the view keeps running counts, the
best value and a top-k list; only a redraw (throttled) walks the running trials.

It writes to the stream its caller gives (the CLI passes stdout); dlopt logs nothing here.
"""
from __future__ import annotations

import bisect
import sys
import time
from typing import Optional

from ray.tune import Callback

from dlopt.spec.plan import Plan
from dlopt.spec.report import DIVERGED, EPOCH
from dlopt.tracking.names import trial_run_name

TOP = 5            # best finished trials shown
SHOWN_RUNNING = 6  # running trials shown (more are counted)
MAX_ERROR_LINES = 20  # line mode: one line per failed trial up to this many, then counts only


class _Row:
    __slots__ = ("name", "status", "epoch", "epochs", "value", "trial", "diverged")

    def __init__(self, name, trial, epochs: int):
        self.name, self.trial, self.status, self.epoch, self.value = name, trial, "RUNNING", 0, None
        self.epochs = epochs  # this trial's own (`epochs` may be searched)
        self.diverged = False


class ProgressCallback(Callback):
    """A Tune callback drawing the bounded view (live on a TTY, a few lines a minute else)."""

    def __init__(self, plan: Plan, every_s: Optional[float] = None, stream=None,
                 live: Optional[bool] = None):
        self.plan = plan
        self.stream = stream or sys.stdout
        self.live = _isatty(self.stream) if live is None else live
        self.every_s = every_s if every_s is not None else (0.5 if self.live else 30.0)
        self.metric, self.mode = plan.headline
        self.rows: dict[str, _Row] = {}
        self.running: dict[str, _Row] = {}
        self.counts = {"DONE": 0, "STOPPED": 0, "DIVERGED": 0, "ERROR": 0}
        self.best: Optional[_Row] = None
        self.top: list[tuple[float, int, _Row]] = []  # (sort key, order, row), best first
        self.errors_printed = 0
        self.last_draw = 0.0
        self._display = None  # rich.live.Live, started on the first draw (TTY only)

    def __getstate__(self):  # pickled into tuner.pkl with the RunConfig: no stream, no display
        return {**self.__dict__, "stream": None, "_display": None, "rows": {}, "running": {}}

    # --- bookkeeping, O(1) per event
    def _key(self, value: float) -> float:
        return -value if self.mode == "max" else value

    def _row(self, trial) -> _Row:
        row = self.rows.get(trial.trial_id)
        if row is None:
            config = dict(trial.config)
            # an extension's trials are numbered after the sweep's earlier ones
            number = self.plan.earlier_trials + len(self.rows) + 1
            name = trial_run_name(number, self.plan.assignment(config))
            row = self.rows[trial.trial_id] = _Row(name, trial, self.plan.trial_epochs(config))
        return row

    def _finish(self, trial, status: str) -> _Row:
        row = self._row(trial)
        if row.status in self.counts:  # already counted (a repeated event)
            return row
        if status == "DONE" and row.epoch < row.epochs:
            status = "STOPPED"  # ended by the scheduler (ASHA, median) before its last epoch
        if row.diverged and status != "ERROR":
            status = "DIVERGED"
        row.status = status
        self.counts[status] += 1
        self.running.pop(trial.trial_id, None)
        if row.value is not None and status in ("DONE", "STOPPED"):
            entry = (self._key(row.value), len(self.rows), row)
            bisect.insort(self.top, entry, key=lambda e: e[:2])
            del self.top[TOP:]
        return row

    def on_trial_start(self, iteration, trials, trial, **info):
        row = self._row(trial)
        row.trial = trial
        if row.status == "RUNNING":
            self.running[trial.trial_id] = row
        self._draw()

    def on_trial_result(self, iteration, trials, trial, result, **info):
        row = self._row(trial)
        row.epoch = int(result.get(EPOCH, row.epoch))
        if result.get(DIVERGED):
            row.diverged = True
        value = result.get(self.metric)
        if isinstance(value, (int, float)) and value == value:  # not NaN
            row.value = value
            if self.best is None or self._key(value) < self._key(self.best.value):
                self.best = row
        self._draw()

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._finish(trial, "DONE")
        self._draw()

    def on_trial_error(self, iteration, trials, trial, **info):
        row = self._finish(trial, "ERROR")
        if not self.live and self.errors_printed < MAX_ERROR_LINES:
            self.errors_printed += 1
            self._print([f"   {row.name}  ERROR at epoch {row.epoch}"
                         + ("  (further errors are counted only)"
                            if self.errors_printed == MAX_ERROR_LINES else "")])
        self._draw()

    def on_experiment_end(self, trials, **info):
        self._draw(force=True, final=True)
        if self._display is not None:
            self._display.stop()
            self._display = None

    # --- drawing (throttled; walks only the running trials and the top list)
    def status_line(self) -> str:
        seen = len(self.rows)
        paused = sum(getattr(r.trial, "status", "") == "PAUSED" for r in self.running.values())
        c = self.counts
        finished = sum(c.values())
        parts = [f"{len(self.running) - paused} running"]
        if paused:
            parts.append(f"{paused} paused")
        parts.append(f"{max(self.plan.trials - seen, 0)} pending")
        parts.append(f"{c['DONE']} done")
        for key, label in (("STOPPED", "early-stopped"), ("DIVERGED", "diverged"), ("ERROR", "error")):
            if c[key]:
                parts.append(f"{c[key]} {label}")
        return f"-- {self.plan.sweep_name}: {finished}/{self.plan.trials} trials finished ({', '.join(parts)})"

    def best_line(self) -> str:
        if self.best is None:
            return f"   best {self.metric}: -"
        return f"   best {self.metric} {self.best.value:.4g}: {self.best.name}"

    def lines(self, final: bool = False) -> list[str]:
        """The whole view: status, best, running trials, top finished trials (bounded)."""
        out = [self.status_line(), self.best_line()]
        if not final:
            running = list(self.running.values())
            for r in running[:SHOWN_RUNNING]:
                state = "PAUSED" if getattr(r.trial, "status", "") == "PAUSED" else r.status
                out.append(self._line(r, state))
            if len(running) > SHOWN_RUNNING:
                out.append(f"   ... and {len(running) - SHOWN_RUNNING} more running")
        if self.top:
            out.append(f"   top {len(self.top)} by {self.metric}:")
            out += [self._line(r, r.status) for _, _, r in self.top]
        return out

    def _line(self, r: _Row, status: str) -> str:
        value = "-" if r.value is None else f"{r.value:.4g}"
        return (f"   {r.name[:60]:<40}  {status:<8} epoch {r.epoch:>3}/{r.epochs}  "
                f"{self.metric} {value}")

    def _draw(self, force: bool = False, final: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.last_draw < self.every_s:
            return
        self.last_draw = now
        if self.live:
            from rich.text import Text

            if self._display is None:
                self._display = _start_live(self.stream)
            self._display.update(Text("\n".join(self.lines(final))), refresh=True)
        else:
            self._print(self.lines(final) if final else [self.status_line(), self.best_line()])

    def _print(self, lines: list[str]) -> None:
        print("\n".join(lines), file=self.stream, flush=True)


def _isatty(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _start_live(stream):
    from rich.console import Console
    from rich.live import Live

    display = Live(console=Console(file=stream), auto_refresh=False, transient=False,
                   redirect_stdout=False, redirect_stderr=False)
    display.start()
    return display
