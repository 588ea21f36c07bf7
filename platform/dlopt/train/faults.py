"""Test-only fault injection: a training process SIGKILLs itself once, at a chosen epoch.

Set `DLOPT_FAULT_KILL_AT_EPOCH=EPOCH:MARKER` in the environment of `dlopt run`
(dlopt.driver.sweep passes `DLOPT_FAULT_*` variables on to Ray workers). The first training
process (any rank, any trial) that has reported epoch EPOCH (or a later one) with its
checkpoint creates MARKER exclusively and kills itself with SIGKILL - no cleanup, no
exception, exactly like an OOM kill or a lost node. The marker makes it happen once per
sweep, so the restarted worker group runs on.
A process that later resumes from a checkpoint appends the epoch it resumed from to
MARKER + ".resumed", so a test can tell a resume from a restart at epoch 0.
Unset (the normal case), these functions do nothing.
"""
from __future__ import annotations

import json
import os
import signal
import time

from dlopt.spec.report import EPOCH, FINAL

ENV = "DLOPT_FAULT_KILL_AT_EPOCH"


def _config():
    raw = os.environ.get(ENV)
    if not raw:
        return None
    epoch, _, marker = raw.partition(":")
    return int(epoch), marker


DELAY_ENV = "DLOPT_FAULT_EPOCH_DELAY_S"


def slow_epoch() -> None:
    """`DLOPT_FAULT_EPOCH_DELAY_S=S` (test-only): each epoch takes S seconds longer, so a
    test can act while a fast trial is still mid-way (e.g. kill the driver at epoch 2)."""
    delay = float(os.environ.get(DELAY_ENV, "0") or 0)
    if delay > 0:
        time.sleep(delay)


def after_report(metrics: dict, where: str) -> None:
    """Called after each report with a checkpoint; kills this process once, at the first
    report of epoch EPOCH or later (reports may skip epochs: dlopt.train.cadence)."""
    cfg = _config()
    if cfg is None or metrics.get(FINAL) or int(metrics.get(EPOCH, 0)) < cfg[0]:
        return
    try:
        fd = os.open(cfg[1], os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return  # already injected once in this sweep
    with os.fdopen(fd, "w") as f:
        json.dump({"pid": os.getpid(), "epoch": int(metrics[EPOCH]), "where": where,
                   "time": time.time()}, f)
    os.kill(os.getpid(), signal.SIGKILL)


def resumed(resume: dict | None) -> None:
    cfg = _config()
    if cfg is None or resume is None:
        return
    with open(cfg[1] + ".resumed", "a") as f:
        f.write(f"{resume['epoch']}\n")
