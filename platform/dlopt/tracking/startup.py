"""The sweep's start-up calls to MLflow, retried like its writes.

Opening the experiment and finding or creating the parent run happen before the write queue
exists; a server slow to answer its first requests (busy, or still starting) or a store
briefly away must delay the sweep's start, not fail it. Each call here retries transient
errors with the writes' policy and bound (dlopt.tracking.retry: `retry_transient`,
`drain_timeout_s`; docs/architecture.md, "One MLflow writer: the driver"), and each is
idempotent as a unit: a create whose reply was lost is found by the next try, not made twice.
"""
from __future__ import annotations

from typing import Callable, Optional, TypeVar

from dlopt.tracking.retry import drain_timeout_s, retry_transient

T = TypeVar("T")


def at_start(fn: Callable[[], T], what: str) -> T:
    """fn(), retried through transient store errors for up to `drain_timeout_s()`."""
    return retry_transient(fn, drain_timeout_s(), f"MLflow {what} at the sweep's start")


def parent_filter(sweep_name: str) -> str:
    return f"tags.`dlopt.sweep` = '{sweep_name}' and tags.`dlopt.role` = 'sweep'"


def find_parent(client, experiment_id: str, sweep_name: str):
    """The sweep's parent run (a Run), or None; retried."""
    found = at_start(lambda: client.search_runs([experiment_id], parent_filter(sweep_name)),
                     "parent run look-up")
    return found[0] if found else None


def create_parent(client, experiment_id: str, sweep_name: str, tags: dict[str, str]):
    """A new parent run (a Run); a retry first looks for the one a lost reply may have made."""
    tried: list[bool] = []

    def attempt():
        found: Optional[object] = None
        if tried:
            hits = client.search_runs([experiment_id], parent_filter(sweep_name))
            found = hits[0] if hits else None
        tried.append(True)
        return found or client.create_run(experiment_id, run_name=sweep_name, tags=tags)

    return at_start(attempt, "parent run creation")
