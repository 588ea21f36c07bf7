"""When a trial reports to Tune: every epoch, or often enough but never a drag on training.

Why: a report (metrics + checkpoint) blocks the loop for a round trip through the Tune
controller plus a checkpoint write: ~20 ms in-trial, ~100 ms through a TorchTrainer on
2 cores. On small models an epoch takes ~10 ms, so reporting every epoch made the
platform 3-12x slower than the bare loop (BENCHMARKS.md). With `report_every="auto"` a
trial reports an epoch only once the training time since the last report is at least
`1 / budget` times what that report cost, so reporting takes at most ~5% of the loop.
Epochs of 0.4 s and longer are therefore still reported one by one.

What is never skipped: the first epoch after (re)start (it measures the cost), epochs a
trial scheduler compares trials at (ASHA/HyperBand rungs, PBT perturbation steps), an
epoch that stops the loop (early stopping, divergence), and the last epoch. Epochs that
are not reported are not lost: the next report carries them (`spec.report.HISTORY`) and
the MLflow writer logs each at its own step with its own end time (`spec.report.END_TIME`;
docs/architecture.md, "Report protocol"), so the per-epoch history in MLflow is the same
either way. Ray Tune has no such option (a function trainable's report is synchronous),
hence this module.

Pure Python (no torch, no Ray): unit-tested alone.
"""
from __future__ import annotations

import math
from typing import Optional, Union

BUDGET = 0.05  # reporting may take this fraction of the loop's time


def scheduler_epochs(search, max_epochs: int) -> Optional[set[int]]:
    """Epochs a trial scheduler decides at, which must be reported as they happen.

    None means every epoch (HyperBand brackets start at many points; the median rule and
    FIFO need none: they judge whatever result arrives)."""
    if search.scheduler == "asha":  # Ray's ASHA rungs: grace * rf^k up to max_t
        epochs, t = set(), float(search.setting("grace_period"))
        while t <= max_epochs:
            epochs.add(int(math.ceil(t)))
            t *= search.setting("reduction_factor")
        return epochs
    if search.scheduler == "pbt":  # synchronous PBT pauses every trial at these epochs
        step = search.setting("perturbation_interval")
        return set(range(step, max_epochs + 1, step))
    if search.scheduler == "hyperband":
        return None
    return set()


class Cadence:
    """Decides, at each epoch's end, whether the loop reports this epoch.

    `every`: "auto" (adaptive, see the module note) or N (every N-th epoch, plus the
    epochs that are never skipped); N=1 is the classic report-every-epoch.
    """

    def __init__(self, every: Union[str, int], last_epoch: int,
                 forced: Optional[set[int]] = frozenset(), budget: float = BUDGET):
        self.every, self.last_epoch, self.budget = every, last_epoch, budget
        self.forced = forced  # None: every epoch
        self.cost_s: Optional[float] = None  # how long the last report blocked
        self.since_s = 0.0  # loop time since the last report ended
        self.since_epochs = 0

    def due(self, epoch: int, elapsed_s: float, stopping: bool = False) -> bool:
        """`epoch` is 1-based; `elapsed_s` the loop time this epoch took so far."""
        self.since_s += elapsed_s
        self.since_epochs += 1
        if self.forced is None or epoch in self.forced or stopping or epoch >= self.last_epoch:
            return True
        if self.every != "auto":
            return self.since_epochs >= int(self.every)
        if self.cost_s is None:
            return True  # first report since (re)start: measures what a report costs
        return self.since_s * self.budget >= self.cost_s

    def reported(self, cost_s: float) -> None:
        self.cost_s, self.since_s, self.since_epochs = cost_s, 0.0, 0
