"""A run's small text artifacts (spec.json, compression_report.json) written without a
`get_run` per file.

Why: `MlflowClient.log_artifact` finds a run's artifact location by fetching the whole run
(its params, metrics, tags and inputs) the first time it sees the run, and dlopt writes one
spec.json per trial: 12 ms a trial on SQLite, a seventh of the MLflow writer's time in a
1,000-trial sweep (py-spy on benchmarks/sweep_scale.py). `create_run` already returns the
location, so the Tracker remembers it and writes through MLflow's artifact repository for
that URI, as the client itself would.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

from dlopt.tracking.scrub import scrub


class RunArtifacts:
    """Artifact locations of the runs this process created; writes text artifacts to them."""

    def __init__(self, tracking_uri: str) -> None:
        self.tracking_uri = tracking_uri
        self.locations: dict[str, str] = {}  # run id -> artifact URI

    def remember(self, run) -> str:
        """Note a created (or found) run's artifact location; returns its run id."""
        self.locations[run.info.run_id] = run.info.artifact_uri
        return run.info.run_id

    def write_text(self, client, run_id: str, name: str, text: str) -> None:
        """Write `text` as the run's artifact `name` (scrubbed of secrets, as every write)."""
        from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

        with tempfile.TemporaryDirectory() as d:
            path = Path(d) / name
            path.write_text(scrub(text))
            location = self.locations.get(run_id)
            if location is None:  # a run of an earlier process (--resume): the client finds it
                client.log_artifact(run_id, str(path))
            else:
                repository = get_artifact_repository(location, tracking_uri=self.tracking_uri)
                repository.log_artifact(str(path))
