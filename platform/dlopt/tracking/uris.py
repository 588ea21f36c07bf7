"""Where the MLflow store is, and what may be said about it.

The tracking URI may carry credentials (`http://user:password@host`): `redact_uri` is what
goes into messages and tags. `check_reachable` runs before Ray starts, so a sweep against
a server that is down fails in seconds, not after the cluster is up. No Ray, no MLflow.
"""
from __future__ import annotations

import base64
import os
import subprocess
import urllib.error
import urllib.request
from pathlib import Path
from typing import Optional
from urllib.parse import unquote, urlsplit, urlunsplit

from dlopt.tracking.scrub import scrub

# Set by Ray's job supervisor for a job's entrypoint (`ray job submit`, `dlopt submit`): the
# job's runtime_env, whose working_dir is a temporary copy Ray deletes after the job.
RAY_JOB_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"


class LocationError(ValueError):
    """A default location dlopt would write to cannot be written (raised before Ray starts)."""


def in_ray_job() -> bool:
    """This process is a Ray job's entrypoint (its working directory is Ray's temporary copy)."""
    return RAY_JOB_ENV in os.environ


def durable_home() -> Path:
    """Where a Ray job keeps the default MLflow store: ~/dlopt (mlflow.db, mlruns/)."""
    return Path.home() / "dlopt"


def default_tracking_uri() -> str:
    """$MLFLOW_TRACKING_URI, else a SQLite store: in the working directory, or in
    `durable_home()` inside a Ray job (whose working directory Ray deletes). Absolute."""
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return absolute_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
    base = durable_home() if in_ray_job() else Path.cwd()
    return f"sqlite:///{base / 'mlflow.db'}"


def default_storage() -> Path:
    """Ray's storage: ./ray_results, or inside a Ray job ~/ray_results (Tune's own default)."""
    return Path.home() / "ray_results" if in_ray_job() else Path.cwd() / "ray_results"


def sqlite_path(uri: str) -> Optional[Path]:
    """The database file of a `sqlite:///PATH[?query]` URI, as written (relative to the
    working directory unless PATH starts with a slash: `sqlite:////abs/mlflow.db`); None for
    any other URI and for an in-memory database. dlopt's one parser of SQLite URIs (the
    WAL listener, preflight and `dlopt ui` call it too)."""
    if not uri.startswith("sqlite:///"):
        return None
    path = uri[len("sqlite:///"):].split("?", 1)[0]
    return Path(path) if path and path != ":memory:" else None


def absolute_tracking_uri(uri: str) -> str:
    """A SQLite URI with its path made absolute (resolved once, against today's working
    directory; a `?query` kept); any other URI as given."""
    db = sqlite_path(uri)
    if db is None:
        return uri
    query = uri.partition("?")[2]
    return f"sqlite:///{db.expanduser().resolve()}" + (f"?{query}" if query else "")


def artifact_root(tracking_uri: str) -> Optional[Path]:
    """Where MLflow puts the artifacts of a local SQLite store: `mlruns/` beside the database.

    MLflow's own default for a client-side store is `./mlruns` under whatever the working
    directory is when the store is opened; dlopt fixes it beside the database instead, so
    models live with their runs wherever the sweep was started (and never in a Ray job's
    temporary directory)."""
    db = sqlite_path(absolute_tracking_uri(tracking_uri))
    return db.parent / "mlruns" if db is not None else None


def check_writable(tracking_uri: str, storage) -> None:
    """Inside a Ray job, the default locations must be writable (the job's own directory is
    temporary, so there is no fallback); one line naming the flags that choose others."""
    dirs = []
    db = sqlite_path(tracking_uri)
    if db is not None:
        dirs.append(db.parent)
    if "://" not in str(storage):
        dirs.append(Path(storage))
    for d in dirs:
        try:
            d.mkdir(parents=True, exist_ok=True)
            probe = d / f".dlopt-write-{os.getpid()}"
            probe.write_text("")
            probe.unlink()
        except OSError as err:
            raise LocationError(
                f"cannot write {d} ({err.strerror or err}); inside a Ray job dlopt keeps the "
                "MLflow store and Ray storage outside the job's temporary directory: pass "
                "--tracking-uri URI and --storage PATH_OR_URI") from None


def git_commit(cwd: Optional[Path] = None) -> Optional[str]:
    """HEAD of the repository at `cwd`, or None outside git (provenance is best effort)."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True,
                             timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def redact_uri(uri: str) -> str:
    """Drop credentials from a URI (user:password@host) before it is written anywhere."""
    parts = urlsplit(uri)
    if parts.username or parts.password:
        host = parts.hostname or ""
        if parts.port:
            host += f":{parts.port}"
        return urlunsplit(parts._replace(netloc=host))
    return uri


class TrackingUnreachable(ConnectionError):
    """The MLflow server a sweep would write to does not answer (raised before Ray starts)."""


def check_reachable(tracking_uri: str, timeout_s: float = 5.0) -> None:
    """Fail fast (before Ray starts) when an MLflow server cannot be reached."""
    if not tracking_uri.startswith(("http://", "https://")):
        return
    # urllib cannot take user:password@ in the host; send it as basic auth, as requests does
    parts = urlsplit(tracking_uri)
    # http(s) only (checked above)
    request = urllib.request.Request(redact_uri(tracking_uri).rstrip("/") + "/health")  # noqa: S310
    if parts.username is not None:
        pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
        request.add_header("Authorization", "Basic " + base64.b64encode(pair).decode())
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as resp:  # noqa: S310 (user's URI)
            if resp.status >= 500:
                raise ConnectionError(f"HTTP {resp.status}")
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as err:
        raise TrackingUnreachable(f"MLflow tracking server {redact_uri(tracking_uri)} is not "
                                  f"reachable ({scrub(str(err))}); start it or pass --tracking-uri"
                                  ) from None
