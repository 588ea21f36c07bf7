"""Distillation teachers on the worker: the model files the driver shipped, rebuilt here.

The driver (dlopt.registry.teachers) resolves each `Distill.teacher` URI to one registry
version and ships its files in the trial config; `install` keeps them and `load` rebuilds the
teacher with `build_from_dir` (no pickle). Outside Ray, with nothing installed, `load` reads
the teacher from the registry with the process's own MLflow settings.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

from dlopt.spec.fields import TEACHER_URI

_installed: dict[str, dict] = {}  # uri -> {"name", "version", "files": {name: bytes}}


def resolve_version(client, uri: str):
    """models:/NAME@ALIAS or models:/NAME/VERSION -> the registry's ModelVersion."""
    m = TEACHER_URI.match(uri)
    if m is None:
        raise ValueError(f"{uri!r} is not models:/NAME@ALIAS or models:/NAME/VERSION")
    if m["alias"]:
        return client.get_model_version_by_alias(m["name"], m["alias"])
    return client.get_model_version(m["name"], m["version"])


def install(payloads: dict[str, dict]) -> None:
    """Worker: make the driver-fetched teachers available to `load`."""
    _installed.update(payloads or {})


def version_of(uri: str):
    info = _installed.get(uri)
    return info["version"] if info else None


def load(uri: str, device: str = "cpu"):
    """-> (teacher module in eval mode without gradients, {"name", "version"})."""
    # torch loads here, not when the driver imports this module to pin teacher versions
    from dlopt.artifact.files import build_from_dir

    if uri in _installed:
        info = _installed[uri]
        with tempfile.TemporaryDirectory(prefix="dlopt-teacher-") as d:
            for name, data in info["files"].items():
                (Path(d) / name).write_bytes(data)
            model = build_from_dir(Path(d))
        meta = {"name": info["name"], "version": info["version"]}
    else:
        # MLflow only outside Ray (a unit test or a script calling the loop): deferred so a
        # worker never imports it.
        import mlflow
        from mlflow.tracking import MlflowClient

        version = resolve_version(MlflowClient(), uri)
        local = Path(mlflow.artifacts.download_artifacts(
            artifact_uri=f"models:/{version.name}/{version.version}"))
        model = build_from_dir(local / "artifacts" / "model_dir")
        meta = {"name": version.name, "version": str(version.version)}
    model.to(device).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model, meta


