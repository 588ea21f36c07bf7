"""Test-only fault injection: a training process SIGKILLs itself once, at a chosen epoch.

The production loop never reads the environment for this: it takes an optional `Faults`
hook (None: no faults). The Ray entry point (dlopt.runtime.trial) reads the variables once
with `Faults.from_env()` and hands the hook down, as JSON, to the trial's loop and workers.

Set `DLOPT_FAULT_KILL_AT_EPOCH=EPOCH:MARKER` in the environment of `dlopt run`
(dlopt.driver.sweep passes `DLOPT_FAULT_*` variables on to Ray workers). The first training
process (any rank, any trial) that has reported epoch EPOCH (or a later one) with its
checkpoint creates MARKER exclusively and kills itself with SIGKILL - no cleanup, no
exception, exactly like an OOM kill or a lost node. The marker makes it happen once per
sweep, so the restarted worker group runs on.
A process that later resumes from a checkpoint appends the epoch it resumed from to
MARKER + ".resumed", so a test can tell a resume from a restart at epoch 0.
`DLOPT_FAULT_EPOCH_DELAY_S=S`: each epoch takes S seconds longer, so a test can act while a
fast trial is still mid-way (e.g. kill the driver at epoch 2).
"""
from __future__ import annotations

import dataclasses
import json
import os
import signal
import time
from dataclasses import dataclass
from typing import Mapping, Optional

from dlopt.spec.report import EPOCH, FINAL

ENV = "DLOPT_FAULT_KILL_AT_EPOCH"
DELAY_ENV = "DLOPT_FAULT_EPOCH_DELAY_S"


@dataclass(frozen=True)
class Faults:
    """What to inject: a SIGKILL at `kill_at_epoch` (once per `marker` file), slower epochs."""

    kill_at_epoch: Optional[int] = None
    marker: Optional[str] = None
    epoch_delay_s: float = 0.0

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> Optional["Faults"]:
        """The hook the test variables ask for, or None where none is set (the normal case)."""
        raw = environ.get(ENV)
        delay = float(environ.get(DELAY_ENV, "0") or 0)
        if not raw and delay <= 0:
            return None
        epoch, _, marker = (raw or "").partition(":")
        return cls(int(epoch) if raw else None, marker or None, delay)

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: Optional[dict]) -> Optional["Faults"]:
        return None if not data else cls(**data)

    def slow_epoch(self) -> None:
        if self.epoch_delay_s > 0:
            time.sleep(self.epoch_delay_s)

    def after_report(self, metrics: dict, where: str) -> None:
        """Called after each report with a checkpoint; kills this process once, at the first
        report of epoch EPOCH or later (reports may skip epochs: dlopt.train.cadence)."""
        if (self.kill_at_epoch is None or metrics.get(FINAL)
                or int(metrics.get(EPOCH, 0)) < self.kill_at_epoch):
            return
        try:
            fd = os.open(self.marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return  # already injected once in this sweep
        with os.fdopen(fd, "w") as f:
            json.dump({"pid": os.getpid(), "epoch": int(metrics[EPOCH]), "where": where,
                       "time": time.time()}, f)
        os.kill(os.getpid(), signal.SIGKILL)

    def resumed(self, epoch: int) -> None:
        """Record that this process resumed from a checkpoint of `epoch`."""
        if self.kill_at_epoch is None:
            return
        with open(self.marker + ".resumed", "a") as f:
            f.write(f"{epoch}\n")
