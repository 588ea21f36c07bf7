"""Riding out an MLflow outage: which errors are worth retrying, and for how long.

A server restarting or a busy SQLite file should delay tracking writes, not fail a sweep
whose training is done; a refusal (bad key, bad value) should be reported at once. The
write queue (dlopt.tracking.store) retries per Tune event; after the Tune loop the driver
writes directly (registration, test report, review) through `retry_transient`. No Ray,
no MLflow.
"""
from __future__ import annotations

import os
import time

from dlopt.tracking.scrub import scrub

# Substrings of errors that mean "try again later": the server is down or restarting, a
# request timed out, or SQLite was busy. Anything else is a real refusal and is reported.
_TRANSIENT = ("failed with exception", "timeout", "timed out", "connection", "max retries",
              "database is locked", "temporarily unavailable", "502", "503", "504",
              "remote end closed", "bad gateway", "service unavailable")
# Each write is tried once per Tune event while the server is away; at the end of the sweep
# the driver waits `drain_timeout_s()` (bounded retry) before failing with the count of
# unwritten ones: $DLOPT_TRACKING_RETRY_S, else this default.
RETRY_ENV = "DLOPT_TRACKING_RETRY_S"
DEFAULT_DRAIN_TIMEOUT_S = 300.0


def drain_timeout_s() -> float:
    """How long the driver retries an unreachable store, read when it is needed (a caller
    or test that sets $DLOPT_TRACKING_RETRY_S after import is heard)."""
    return float(os.environ.get(RETRY_ENV, DEFAULT_DRAIN_TIMEOUT_S))


class TrackingUnavailable(RuntimeError):
    """The MLflow store stayed unreachable past the bounded retry; writes were not made."""


def is_transient(err: BaseException) -> bool:
    """True for errors that mean "try again later" (see _TRANSIENT)."""
    text = f"{type(err).__name__} {err}".lower()
    return isinstance(err, (ConnectionError, TimeoutError)) or any(t in text for t in _TRANSIENT)


def retry_transient(fn, timeout_s: float, what: str = "MLflow call"):
    """Call fn(); on a transient store error (server down, SQLite locked) retry with backoff
    until timeout_s, then raise TrackingUnavailable. Used after the Tune loop, when the driver
    writes directly (registration, test report, review) instead of through the write queue."""
    deadline = time.monotonic() + timeout_s
    delay = 0.5
    while True:
        try:
            return fn()
        except Exception as err:  # only transient errors are retried (re-raised below)
            if not is_transient(err):
                raise
            if time.monotonic() >= deadline:
                raise TrackingUnavailable(f"{what}: MLflow stayed unreachable for "
                                          f"{timeout_s:.0f} s ({scrub(str(err))[:200]})") from None
            time.sleep(delay)
            delay = min(delay * 2, 5.0)


class RetryingClient:
    """Wraps the (scrubbing) client so every call retries transient errors, bounded.

    Retried calls must be idempotent: tags, aliases and artifacts (same path) are; a metric
    is once its timestamp is fixed (below); a model version is looked up before it is created
    (dlopt.registry.register.existing_version)."""

    def __init__(self, client, timeout_s: float):
        self._client, self._timeout_s = client, timeout_s

    def __getattr__(self, name):
        if name.startswith("__") or name in ("_client", "_timeout_s"):
            raise AttributeError(name)
        attr = getattr(self._client, name)
        if not callable(attr):
            return attr
        if name == "log_metric":
            # A retry after a lost reply must send the same row: MLflow keeps one per key,
            # value, timestamp and step, so the timestamp is fixed before the first try.
            def log_metric(run_id, key, value, timestamp=None, step=None, **kw):
                at = timestamp if timestamp is not None else int(time.time() * 1000)
                return retry_transient(lambda: attr(run_id, key, value, at, step or 0, **kw),
                                       self._timeout_s, "MLflow log_metric")
            return log_metric
        return lambda *a, **kw: retry_transient(lambda: attr(*a, **kw), self._timeout_s,
                                                f"MLflow {name}")
