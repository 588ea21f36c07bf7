"""Driver step after the sweep: log a trial's saved model and register it.

Registration happens on the driver once the sweep is over, never inside a trial
(docs/architecture.md, "Registration after the sweep").
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Optional

from dlopt.artifact.files import build_inference_model, load_example
from dlopt.runtime import storage

# What the logged model imports, pinned to this environment's versions (local labels such
# as +cpu dropped: `torch==2.13.0` accepts the CPU build). dlopt itself is not on an index:
# its code travels with the model (`code_paths`, see `staged_code`).
REQUIRED = ("torch", "torchao", "safetensors", "pydantic", "numpy")
ONNX_REQUIRED = ("onnx", "onnxruntime")  # a quantized model serves with ONNX Runtime


def pip_requirements(onnx: bool = False) -> list[str]:
    from importlib.metadata import version

    names = REQUIRED + (ONNX_REQUIRED if onnx else ())
    return [f"{name}=={version(name).split('+')[0]}" for name in names]


def staged_code(into: Path) -> Path:
    """A copy of the dlopt package to log as the model's `code_paths`: what loads the model
    where dlopt is not installed. Without `__main__.py` files and caches: MLflow drops every
    module named like a file of the code path from sys.modules when it loads the model, and
    `__main__` must stay."""
    target = into / "dlopt"
    shutil.copytree(Path(__file__).resolve().parents[1], target,
                    ignore=shutil.ignore_patterns("__pycache__", "__main__.py", "*.pyc"))
    return target


def signature_and_example(model_dir: Path):
    """The model's MLflow signature (outputs: labels or values; `params.output`), its input
    example (raw training rows saved with it) and its declared input (MLmodel metadata
    `dlopt.input`: row shape, training dtype, the dtypes it accepts), or (None, None, declared)
    for a model saved without an example.

    The signature has no input schema on purpose: MLflow enforces a tensor schema's dtype
    exactly, so float32 rows would be refused by a float64 model; the pyfunc enforces the
    declared input instead, casting every numeric dtype (dlopt.registry.serving.InputContract)."""
    from types import SimpleNamespace

    from mlflow.models import ModelSignature, infer_signature

    from dlopt.registry.serving import DEFAULT_PARAMS, DloptModel

    wrapper = DloptModel()
    wrapper.load_context(SimpleNamespace(artifacts={"model_dir": str(model_dir)}))
    declared = {"dlopt.input": wrapper.contract.describe()}
    example = load_example(model_dir)
    if example is None:
        return None, None, declared
    params = DEFAULT_PARAMS if wrapper.task == "classification" else None
    inferred = infer_signature(example, wrapper.predict(None, example), params=params)
    return ModelSignature(outputs=inferred.outputs, params=inferred.params), example, declared


def local_copy(checkpoint_path: str) -> Path:
    """The checkpoint as a local directory (storage may be a URI such as s3://...; copied
    through pyarrow: dlopt.runtime.storage.local_copy)."""
    return storage.local_copy(checkpoint_path)


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
    """Log the model under the trial's run, create a version of `name`, set `alias`.

    Every registry write goes through the Tracker's client (`tracker.client`): secrets are
    scrubbed from it and, after the Tune loop (`Tracker.direct_writes`), each call retries
    through a store outage, bounded (docs/architecture.md, "Registration after the sweep")."""
    client = tracker.client
    done = existing_version(client, name, trial_run_id)
    if done is not None:  # an earlier attempt made it; its reply was lost (retry_transient)
        if alias:
            client.set_registered_model_alias(name, alias, done)
        return done
    model = log_model(tracker.uri, trial_run_id, checkpoint_path)
    version = create_version(client, model, name, {**tags, SOURCE_TAG: trial_run_id})
    if alias:
        client.set_registered_model_alias(name, alias, version)
    return version


def log_model(tracking_uri: str, trial_run_id: str, checkpoint_path: str):
    """Log the checkpoint as an MLflow pyfunc model under the trial's run; its ModelInfo.

    MLflow's fluent API (the only one that logs a model) writes to the global tracking
    URI: set to the store's for this call only (dlopt.tracking.scope.tracking_uri_set)."""
    import mlflow  # deferred on purpose: MLflow is heavy to import (`import dlopt` stays cheap)

    from dlopt.tracking.scope import tracking_uri_set

    source = local_copy(checkpoint_path)
    with tempfile.TemporaryDirectory() as tmp, tracking_uri_set(tracking_uri):
        model_dir = Path(tmp) / "model_dir"
        shutil.copytree(source, model_dir, ignore=shutil.ignore_patterns("checkpoint.pt", ".*"))
        signature, example, declared = signature_and_example(model_dir)
        with mlflow.start_run(run_id=trial_run_id, nested=True):
            return mlflow.pyfunc.log_model(
                name="model",
                python_model=str(Path(__file__).with_name("pyfunc_entry.py")),
                artifacts={"model_dir": str(model_dir)},
                code_paths=[str(staged_code(Path(tmp) / "code"))],
                pip_requirements=pip_requirements(onnx=any(model_dir.glob("*.onnx"))),
                signature=signature,
                input_example=example,
                metadata=declared,
            )


def create_version(client, model, name: str, tags: dict[str, str]) -> str:
    """A new version of the registered model `name` (created when missing) from the logged
    `model` (its `models:/<model_id>` URI), as `mlflow.register_model` makes one, but through
    `client`; its version number."""
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import ALREADY_EXISTS, RESOURCE_ALREADY_EXISTS, ErrorCode

    try:
        client.create_registered_model(name)
    except MlflowException as err:
        if err.error_code not in (ErrorCode.Name(RESOURCE_ALREADY_EXISTS),
                                  ErrorCode.Name(ALREADY_EXISTS)):
            raise
    version = client.create_model_version(name, model.model_uri, tags=tags,
                                          await_creation_for=60, model_id=model.model_id)
    return version.version


def load_model(uri: str):
    """`models:/NAME@ALIAS` (or any MLflow model URI) -> a ready torch.nn.Module, nothing
    unpickled, that takes the raw arrays the data source gives (its input transform inside)."""
    import mlflow  # deferred on purpose, as in `register`

    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri))
    return build_inference_model(local / "artifacts" / "model_dir")

