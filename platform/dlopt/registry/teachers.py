"""Distillation teachers: resolved on the driver, shipped to workers, rebuilt there.

Workers hold no MLflow credentials (docs/architecture.md, "One MLflow writer: the
driver"), so the driver does the registry work before Ray starts: `fetch` finds every
`Distill.teacher` URI in the spec (search domains included), resolves each alias to one
model version (pinned for the whole sweep), and reads the saved model files (safetensors +
spec JSON, a few hundred KB for the models here). An unknown URI is a spec problem, raised
as `SpecError` naming the field, before Ray starts. `fetch` returns them; the driver hands
them to every trial (dlopt.runtime.trial.make_trial_fn), the trial to its loop and workers,
the loop to the Distill stage's constructor, and dlopt.artifact.teachers rebuilds the
teacher there with `build_from_dir` (no pickle). Nothing is kept in module state: the
registered model's tags name the version the trial reported using (`registry_tags`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from dlopt.artifact.teachers import TeacherFiles
from dlopt.spec.fields import TEACHER_URI
from dlopt.spec.load import SpecError
from dlopt.spec.paths import join
from dlopt.tracking.uris import redact_uri


def resolve_version(client, uri: str):
    """models:/NAME@ALIAS or models:/NAME/VERSION -> the registry's ModelVersion (the one
    resolver: dlopt.driver.preflight checks with it, `fetch` pins with it)."""
    m = TEACHER_URI.match(uri)
    if m is None:
        raise ValueError(f"{uri!r} is not models:/NAME@ALIAS or models:/NAME/VERSION")
    if m["alias"]:
        return client.get_model_version_by_alias(m["name"], m["alias"])
    return client.get_model_version(m["name"], m["version"])


def find(spec_json: Any, path: str = "") -> list[tuple[str, str]]:
    """(field path, teacher URI) for every distill stage in the spec JSON, domains included."""
    found = []
    if isinstance(spec_json, dict):
        if spec_json.get("stage") == "distill" and isinstance(spec_json.get("teacher"), str):
            found.append((f"{path}.teacher" if path else "teacher", spec_json["teacher"]))
        items = spec_json.items()
    elif isinstance(spec_json, list):
        items = enumerate(spec_json)
    else:
        return found
    for k, v in items:
        found += find(v, join(path, f"[{k}]" if isinstance(k, int) else str(k)))
    return found


def fetch(spec_json: dict, tracking_uri: str) -> dict[str, dict]:
    """Driver, before Ray: every teacher URI -> pinned version + its model files
    (`TeacherFiles.to_payload()`, what crosses processes)."""
    pairs = find(spec_json)
    if not pairs:
        return {}
    import mlflow  # deferred on purpose: a spec without distillation never loads MLflow here
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri, registry_uri=tracking_uri)
    out, problems = {}, []
    for path, uri in pairs:
        if uri in out:
            continue
        try:
            version = resolve_version(client, uri)
        except (MlflowException, ValueError) as err:
            reason = str(err).splitlines()[0][:200]
            problems.append(f"{path}: teacher {uri} not found in the MLflow registry at "
                            f"{redact_uri(tracking_uri)} ({reason})")
            continue
        local = Path(mlflow.artifacts.download_artifacts(
            artifact_uri=f"models:/{version.name}/{version.version}", tracking_uri=tracking_uri))
        model_dir = local / "artifacts" / "model_dir"
        if not model_dir.is_dir():
            problems.append(f"{path}: teacher {uri} (version {version.version}) is not a dlopt "
                            "model (no artifacts/model_dir)")
            continue
        files = {p.name: p.read_bytes() for p in model_dir.iterdir() if p.is_file()}
        out[uri] = TeacherFiles(version.name, str(version.version), files).to_payload()
    if problems:
        raise SpecError(problems)
    return out


def registry_tags(spec, metrics: dict) -> dict[str, str]:
    """Tags for a registered distilled model: teacher URI and the version pinned by the
    driver, as the trial reported it (`distill_teacher_version`, dlopt.stages.distill)."""
    tags = {}
    for stage in spec.compression:
        if stage.stage == "distill":
            tags["dlopt.teacher"] = stage.teacher
            version = metrics.get("distill_teacher_version")
            if version is not None:
                tags["dlopt.teacher_version"] = str(int(version))
    return tags
