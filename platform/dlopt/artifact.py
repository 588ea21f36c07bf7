"""The saved model: safetensors weights + the resolved spec JSON, nothing pickled.

Loading rebuilds the architecture from the spec and loads tensors, so a registered
model never executes code stored in the artifact.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

WEIGHTS = "model.safetensors"
SPEC = "spec.json"
META = "meta.json"


def save_dense(model: torch.nn.Module, spec_json: dict, meta: dict, directory: Path) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(directory / WEIGHTS))
    (directory / SPEC).write_text(json.dumps(spec_json, indent=1))
    (directory / META).write_text(json.dumps({"format": "dense", **meta}, indent=1))
    return directory / WEIGHTS


def model_bytes(directory: Path) -> int:
    """Bytes of the saved weights on disk (spec and metadata JSON not counted)."""
    return sum(p.stat().st_size for p in Path(directory).iterdir()
               if p.is_file() and p.name not in (SPEC, META))


def dense_bytes(model: torch.nn.Module) -> int:
    """Bytes of the fp32 state dict's tensors (the uncompressed baseline).

    Pruning masks are bookkeeping, not weights: a model under torch's pruning
    reparametrization (weight_orig + weight_mask) counts each weight once."""
    return sum(t.numel() * 4 for k, t in model.state_dict().items()
               if t.is_floating_point() and not k.endswith("_mask"))


def build_from_dir(directory: Path) -> torch.nn.Module:
    """Rebuild a saved model (dense or compressed) ready for inference."""
    from dlopt import models
    from dlopt.spec import Experiment

    directory = Path(directory)
    spec = Experiment.model_validate(json.loads((directory / SPEC).read_text()))
    meta = json.loads((directory / META).read_text())
    if meta.get("format", "dense") != "dense":
        from dlopt.stages import compression

        return compression.load_compressed(directory, spec, meta)
    model = models.build(spec.model, tuple(meta["input_shape"]), meta["out_features"])
    model.load_state_dict(load_file(str(directory / WEIGHTS)))
    return model.eval()
