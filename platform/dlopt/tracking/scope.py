"""What the tracking layer changes in the driver's process for a sweep, and how it is put back.

`dlopt.run()` leaves the caller's process as it found it (docs/architecture.md, "Logging
and the terminal"); the driver's sweep environment (dlopt.driver.environment) enters
`store_settings` once it knows the store. Each piece restores itself on exit, on failure
too: MLflow's HTTP variables, MLflow's global tracking URI (and the MLFLOW_TRACKING_URI
variable `mlflow.set_tracking_uri` exports with it), the SQLite WAL listener.
"""
from __future__ import annotations

import contextlib
import os
from typing import Iterator, Optional

from dlopt.runtime import ray_compat
from dlopt.tracking.sqlite import use_wal, wal_restored

# MLflow's own retry loop would block the Tune event loop for minutes (7 retries,
# exponential backoff); fail fast and let the Tracker's queue retry instead
# (docs/architecture.md, "One MLflow writer: the driver"). A value the caller set is kept.
HTTP_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
URI_ENV = "MLFLOW_TRACKING_URI"


@contextlib.contextmanager
def variables_restored(keys) -> Iterator[None]:
    """The environment variables `keys` as they were before the block, after it."""
    saved: dict[str, Optional[str]] = {k: os.environ.get(k) for k in keys}
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextlib.contextmanager
def tracking_uri_restored() -> Iterator[None]:
    """MLflow's global tracking URI, whatever the block sets, as it was before: the explicit
    one (or none) and $MLFLOW_TRACKING_URI, which `mlflow.set_tracking_uri` also sets."""
    import mlflow

    saved = ray_compat.explicit_tracking_uri()
    with variables_restored([URI_ENV]):
        try:
            yield
        finally:
            mlflow.set_tracking_uri(saved)


@contextlib.contextmanager
def tracking_uri_set(uri: str) -> Iterator[None]:
    """MLflow's fluent API (`mlflow.start_run`, `log_model`) writes to `uri` in the block."""
    import mlflow

    with tracking_uri_restored():
        mlflow.set_tracking_uri(uri)
        yield


@contextlib.contextmanager
def store_settings(tracking_uri: str) -> Iterator[None]:
    """The driver's settings for writing to `tracking_uri` while the block runs: MLflow's
    HTTP client fails fast (a server store), the global URI is the sweep's, and a local
    SQLite file is opened in WAL mode (dlopt.tracking.sqlite). All restored after."""
    with variables_restored(HTTP_ENV), tracking_uri_set(tracking_uri), wal_restored():
        if tracking_uri.startswith(("http://", "https://")):
            for key, value in HTTP_ENV.items():
                os.environ.setdefault(key, value)
        use_wal(tracking_uri)  # before any connection: WAL, no fsync per write
        yield
