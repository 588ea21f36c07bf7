"""The saved model: safetensors weights + the resolved spec JSON, nothing pickled.

Loading rebuilds the architecture from the spec and loads tensors, so a registered
model never executes code stored in the artifact.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from dlopt.artifact import compact
from dlopt.ml import models, residual, shrink
from dlopt.ml.quantization import apply as apply_quantization
from dlopt.ml.transform import InputTransform, WithInputTransform
from dlopt.spec import Experiment

WEIGHTS = "model.safetensors"
SPEC = "spec.json"
META = "meta.json"
EXAMPLE = "input_example.npy"  # a few raw training rows: the registered model's input example


def save_dense(model: torch.nn.Module, spec_json: dict, meta: dict, directory: Path) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(directory / WEIGHTS))
    (directory / SPEC).write_text(json.dumps(spec_json, indent=1))
    (directory / META).write_text(json.dumps({"format": "dense", **meta}, indent=1))
    return directory / WEIGHTS


def model_bytes(directory: Path) -> int:
    """Bytes of the saved PyTorch weights on disk (spec and metadata JSON not counted, nor the
    int8 ONNX model served beside them: the report has that as `onnx_bytes`)."""
    return sum(p.stat().st_size for p in Path(directory).iterdir()
               if p.is_file() and p.name not in (SPEC, META, EXAMPLE) and p.suffix != ".onnx")


def save_example(rows: np.ndarray, directory: Path) -> None:
    np.save(Path(directory) / EXAMPLE, np.ascontiguousarray(rows), allow_pickle=False)


def load_example(directory: Path) -> Optional[np.ndarray]:
    path = Path(directory) / EXAMPLE
    return np.load(path, allow_pickle=False) if path.exists() else None


def dense_bytes(model: torch.nn.Module) -> int:
    """Bytes of the fp32 state dict's tensors (the uncompressed baseline).

    Pruning masks are bookkeeping, not weights: a model under torch's pruning
    reparametrization (weight_orig + weight_mask) counts each weight once."""
    return sum(t.numel() * 4 for k, t in model.state_dict().items()
               if t.is_floating_point() and not k.endswith("_mask"))


def build_from_dir(directory: Path) -> torch.nn.Module:
    """Rebuild a saved model (dense or compressed) ready for inference."""
    directory = Path(directory)
    spec = Experiment.model_validate(json.loads((directory / SPEC).read_text()))
    meta = json.loads((directory / META).read_text())
    if meta.get("format", "dense") != "dense":
        return load_compressed(directory, spec, meta)
    model = build_shaped(spec, meta)
    model.load_state_dict(load_file(str(directory / WEIGHTS)))
    return model.eval()


def build_shaped(spec, meta: dict) -> torch.nn.Module:
    """The spec's architecture with the layer widths structured pruning left (meta `widths`
    for chain models, `shapes` for graph models: dlopt.ml.residual)."""
    model = models.build(spec.model, tuple(meta["input_shape"]), meta["out_features"])
    if meta.get("shapes"):
        return residual.fit(model, meta["shapes"])
    return shrink.resize(model, meta["widths"]) if meta.get("widths") else model


def build_inference_model(directory: Path) -> torch.nn.Module:
    """The saved model behind its saved input transform: takes the raw arrays the data source
    gives (what `dlopt.load_model`, the pyfunc and the test report use). Models saved before
    the transform was recorded come back as `build_from_dir` returns them."""
    model = build_from_dir(directory)
    meta = json.loads((Path(directory) / META).read_text())
    if not meta.get("input_transform"):
        return model
    return WithInputTransform(InputTransform.from_json(meta["input_transform"]), model).eval()


def load_compressed(directory: Path, spec, meta: dict) -> torch.nn.Module:
    """Rebuild a compact artifact (see dlopt.artifact.compact) into a ready nn.Module."""
    directory = Path(directory)
    if meta.get("format") != compact.FORMAT:
        raise ValueError(f"{directory}: unknown model format {meta.get('format')!r}")
    model = build_shaped(spec, meta)
    state, int8, _ = compact.read(directory / compact.WEIGHTS)
    model.load_state_dict(state)
    quantization = meta.get("quantization")
    if quantization:
        act_scales = {key.removesuffix(".weight"): parts["act_scale"]
                      for key, parts in int8.items() if "act_scale" in parts}
        apply_quantization(model, quantization, act_scales)
        weights = dict(model.state_dict(keep_vars=True))
        with torch.no_grad():
            for key, parts in int8.items():
                w = weights[key]
                w.qdata.copy_(parts["qdata"])
                w.scale.copy_(parts["scale"])
    return model.eval()
