"""Secrets out of everything the driver writes or prints.

MLflow has no redaction hook, yet the command line and error messages that end up in tags,
params, artifacts and warnings may hold `--tracking-uri http://user:secret@host` or an
access token. Plain Python at import time (no Ray, no MLflow), so `dlopt evaluate` can
scrub an error message without loading either.
"""
from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Optional

_URI_CREDENTIALS = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)[^/@\s:]+(:[^/@\s]*)?@")
_SECRET_NAME = re.compile(r"TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL|API_KEY|ACCESS_KEY|AUTH",
                          re.IGNORECASE)


def secret_values(environ: Optional[dict] = None) -> list[str]:
    """Values of environment variables whose names say they hold a secret (longest first)."""
    env = os.environ if environ is None else environ
    values = {v for k, v in env.items() if _SECRET_NAME.search(k) and len(v) >= 6
              and v.lower() not in ("true", "false", "disabled", "enabled")}
    return sorted(values, key=len, reverse=True)


def scrub(text: str, secrets: Optional[list[str]] = None) -> str:
    """Drop URI credentials and the values of secret-named environment variables from text.
    `secrets`: `secret_values()` read once by a caller scrubbing many strings (reading the
    environment per string cost a 1,000-trial sweep's writer ~12 s of CPU)."""
    text = _URI_CREDENTIALS.sub(lambda m: m["scheme"], text)
    for value in secret_values() if secrets is None else secrets:
        text = text.replace(value, "***")
    return text


def scrub_value(value: Any, secrets: Optional[list[str]] = None) -> Any:
    """`scrub` for strings; any other value (a number, None) as it is."""
    return scrub(value, secrets) if isinstance(value, str) else value


class ScrubbingClient:
    """MlflowClient whose writes pass through `scrub`: one choke point for every tag, param,
    metric key and text artifact the driver writes (tracking, finalize, review, PBT log).

    Why hand-written: MLflow has no redaction hook; the command line and error messages that
    end up in tags may hold `--tracking-uri http://user:secret@host`.
    """

    _TEXT_SUFFIXES = {".json", ".csv", ".html", ".md", ".txt", ".yaml", ".yml", ".log"}

    def __init__(self, client):
        self._client = client

    def __getattr__(self, name):
        if name.startswith("__") or name == "_client":  # unpickling: no _client yet
            raise AttributeError(name)
        return getattr(self._client, name)

    def set_tag(self, run_id, key, value, *args, **kwargs):
        return self._client.set_tag(run_id, key, scrub_value(value), *args, **kwargs)

    def log_param(self, run_id, key, value, *args, **kwargs):
        return self._client.log_param(run_id, key, scrub_value(value), *args, **kwargs)

    def create_run(self, experiment_id, *args, tags=None, run_name=None, **kwargs):
        secrets = secret_values()
        tags = {k: scrub_value(v, secrets) for k, v in (tags or {}).items()}
        return self._client.create_run(experiment_id, *args, tags=tags,
                                       run_name=scrub_value(run_name, secrets), **kwargs)

    def log_batch(self, run_id, metrics=(), params=(), tags=(), *args, **kwargs):
        # deferred on purpose: importing this module must not load MLflow (`dlopt evaluate`)
        from mlflow.entities import Param, RunTag

        secrets = secret_values()
        params = [Param(p.key, scrub(p.value, secrets)) for p in params]
        tags = [RunTag(t.key, scrub(t.value, secrets)) for t in tags]
        return self._client.log_batch(run_id, list(metrics), params, tags, *args, **kwargs)

    def log_text(self, run_id, text, artifact_file):
        return self._client.log_text(run_id, scrub(text), artifact_file)

    def log_artifact(self, run_id, local_path, artifact_path=None):
        with tempfile.TemporaryDirectory() as d:
            return self._client.log_artifact(run_id, self._scrubbed(Path(local_path), Path(d)),
                                             artifact_path)

    def log_artifacts(self, run_id, local_dir, artifact_path=None):
        with tempfile.TemporaryDirectory() as d:
            return self._client.log_artifacts(run_id, self._scrubbed(Path(local_dir), Path(d)),
                                              artifact_path)

    def _scrubbed(self, src: Path, tmp: Path) -> str:
        """A copy of src with its text files scrubbed (binary files copied as they are)."""
        dst = tmp / src.name
        files = [src] if src.is_file() else [p for p in src.rglob("*") if p.is_file()]
        for f in files:
            out = dst if src.is_file() else dst / f.relative_to(src)
            out.parent.mkdir(parents=True, exist_ok=True)
            if f.suffix.lower() in self._TEXT_SUFFIXES:
                out.write_text(scrub(f.read_text(errors="replace")))
            else:
                shutil.copy2(f, out)
        if src.is_dir() and not files:
            dst.mkdir(parents=True, exist_ok=True)
        return str(dst)
