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


def default_tracking_uri() -> str:
    """$MLFLOW_TRACKING_URI, else a SQLite store in the working directory."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / 'mlflow.db'}"


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
    request = urllib.request.Request(redact_uri(tracking_uri).rstrip("/") + "/health")
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
