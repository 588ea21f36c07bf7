"""Driver step after the sweep: log a trial's saved model and register it.

Registration happens on the driver once the sweep is over, never inside a trial
(docs/architecture.md, "Registration after the sweep").
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Optional

from dlopt.artifact.files import build_from_dir

PIP_REQUIREMENTS = ["torch", "torchao", "safetensors", "pydantic", "dlopt"]
ONNX_REQUIREMENTS = ["onnx==1.23.2", "onnxruntime==1.31.1"]  # a quantized model serves with ORT


def local_copy(checkpoint_path: str) -> Path:
    """The checkpoint as a local directory (storage may be a remote URI)."""
    if "://" not in checkpoint_path:
        return Path(checkpoint_path)
    import pyarrow.fs  # deferred on purpose: only remote storage needs it

    fs, path = pyarrow.fs.FileSystem.from_uri(checkpoint_path)
    local = Path(tempfile.mkdtemp(prefix="dlopt-ckpt-"))
    pyarrow.fs.copy_files(path, str(local), source_filesystem=fs)
    return local


# The trial run a version was registered from; a retried registration looks for it first.
SOURCE_TAG = "dlopt.source_run"


def existing_version(client, name: str, source_run: str) -> Optional[str]:
    """The version of `name` registered from `source_run`, if an earlier attempt made one.

    A registration is retried when the store is unreachable (dlopt.tracking.retry); when the
    server took the request but the reply was lost, the retry must find that version instead
    of adding a second one. The tag is set in the same request that creates the version."""
    found = client.search_model_versions(f"name = '{name}' and tags.`{SOURCE_TAG}` = '{source_run}'")
    return str(min(int(v.version) for v in found)) if found else None


def register(tracker, trial_run_id: str, checkpoint_path: str, name: str, alias: Optional[str],
             tags: dict[str, str]) -> str:
    """Log the model under the trial's run, create a version of `name`, set `alias`."""
    import mlflow  # deferred on purpose: MLflow is heavy to import (`import dlopt` stays cheap)
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracker.uri)
    done = existing_version(client, name, trial_run_id)
    if done is not None:  # an earlier attempt made it; its reply was lost (retry_transient)
        if alias:
            client.set_registered_model_alias(name, alias, done)
        return done
    source = local_copy(checkpoint_path)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp) / "model_dir"
        shutil.copytree(source, model_dir, ignore=shutil.ignore_patterns("checkpoint.pt", ".*"))
        with mlflow.start_run(run_id=trial_run_id, nested=True):
            info = mlflow.pyfunc.log_model(
                name="model",
                python_model=str(Path(__file__).with_name("pyfunc_entry.py")),
                artifacts={"model_dir": str(model_dir)},
                pip_requirements=PIP_REQUIREMENTS + (
                    ONNX_REQUIREMENTS if any(model_dir.glob("*.onnx")) else []),
            )
    version = mlflow.register_model(info.model_uri, name, tags={**tags, SOURCE_TAG: trial_run_id},
                                    await_registration_for=60)
    if alias:
        client.set_registered_model_alias(name, alias, version.version)
    return version.version


def load_model(uri: str):
    """`models:/NAME@ALIAS` (or any MLflow model URI) -> a ready torch.nn.Module, nothing unpickled."""
    import mlflow  # deferred on purpose, as in `register`

    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri))
    return build_from_dir(local / "artifacts" / "model_dir")

