"""Compression stages (prune, quantize, share, distill) and the compact artifact they produce.

`build(stage_spec, experiment, teachers)` makes the stage a spec entry names; the catalog
builds them in spec order. Each stage is wrapped so that, after its own `fit_end`, the model
is measured as it stands: validation metrics, sparsity, parameter count, CPU batch-1 latency
and the bytes of its compact artifact. Those entries go into `state.compression`
(a `CompressionResult`) twice: prefixed by the stage (`prune_sparsity`, ...) and unprefixed
(`compressed_val_accuracy`, `sparsity`, ...), where the last stage wins. The last stage's
`CompactArtifact` is what the loop saves and measures on disk. What a stage leaves for its
artifact it says in `output()` (a `StageOutput`).

`load_compressed` rebuilds a saved compact artifact: architecture from the spec,
tensors from safetensors, quantization re-applied with torchao and its int8 data and
scales overwritten with the stored ones, so the loaded model computes exactly what the
trial evaluated.
"""
from __future__ import annotations

import copy
import statistics
import time

import torch
from torch import nn

from typing import Optional

from dlopt.artifact import compact
from dlopt.artifact import files as artifact_mod
from dlopt.artifact.teachers import TeacherPayloads
from dlopt.ml import models, onnx_int8, shrink
from dlopt.ml.devices import model_device
from dlopt.stages import CompressionStage, DenseMeasures, Event, Stage, State, StageOutput
from dlopt.stages.distill import Distill
from dlopt.stages.pruning import PRUNABLE, Prune
from dlopt.stages.quantize import Quantize
from dlopt.stages.sharing import Share


# ------------------------------------------------------------------ measurements (pure)
def weight_sparsity(model: nn.Module, dense_weights: int | None = None) -> float:
    """Fraction of Linear/Conv weights that are exact zeros (int8 data when quantized) or were
    removed, counted against the dense model's `dense_weights` when given."""
    zeros = total = 0
    for m in model.modules():
        if isinstance(m, PRUNABLE):
            w = m.weight
            w = w.qdata if hasattr(w, "qdata") else w
            zeros += (w == 0).sum().item()
            total += w.numel()
    dense = max(dense_weights or total, total)
    return (zeros + dense - total) / max(dense, 1)


def layer_weights(model: nn.Module) -> int:
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, PRUNABLE))


def param_counts(model: nn.Module) -> tuple[int, int]:
    """(parameters, non-zero parameters)."""
    total = nonzero = 0
    for p in model.parameters():
        data = p.qdata if hasattr(p, "qdata") else p
        total += data.numel()
        nonzero += (data != 0).sum().item()
    return total, nonzero


@torch.no_grad()
def latency_ms(model: nn.Module, example: torch.Tensor, repeats: int = 30, warmup: int = 5
               ) -> float:
    """Median wall time of one batch-1 forward on CPU, in milliseconds, whatever device the
    model trained on: a model elsewhere is timed on a CPU copy. Why the CPU always: the number
    means the same for every trial (FSDP and pipeline finish with a CPU model, DDP with one on
    its GPU), it is what the served model runs on (dlopt.registry.serving; `onnx_latency_ms`
    is CPU too), and a GPU's batch-1 time measures launch overhead more than the model."""
    if model_device(model).type != "cpu":
        model = copy.deepcopy(model).to("cpu")
    was = model.training
    model.eval()
    x = example[:1].cpu()
    for _ in range(warmup):
        model(x)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        model(x)
        times.append((time.perf_counter() - t0) * 1000)
    model.train(was)
    return statistics.median(times)


# ------------------------------------------------------------------ stage wrapper
class Measured(Stage):
    """Runs a compression stage; after its fit_end, measures and records the model."""

    def __init__(self, inner: CompressionStage):
        self.inner = inner
        self.name = inner.name

    def run(self, event: str, state: State) -> None:
        if event == Event.SETUP and "dense_bytes" not in state.compression.metrics:
            # the fp32 baseline, measured before any stage reparametrizes the model
            state.add_compression_metrics({"dense_bytes": artifact_mod.dense_bytes(state.model)})
        self.inner.run(event, state)
        if event == Event.FIT_END:
            record(state, self.inner)

    def state_dict(self) -> dict:
        return self.inner.state_dict()

    def load_state_dict(self, data: dict) -> None:
        self.inner.load_state_dict(data)


def _example(state: State) -> torch.Tensor:
    return state.datasets.val.x[:1].to(model_device(state.model))


def dense_measures(state: State) -> DenseMeasures:
    """Parameters, FLOPs and Linear/Conv weights of the dense model, from a fresh CPU build of
    the spec's architecture: the trained model may be sharded at setup and shrunk by now.
    Measured once (state.dense) and added to the final report."""
    if state.dense is None:
        dense = models.build(state.spec.model, state.datasets.input_shape,
                             state.datasets.out_features)
        state.dense = DenseMeasures(
            param_count=param_counts(dense)[0],
            flops=shrink.flops(dense, state.datasets.val.x[:1].cpu()),
            weights=layer_weights(dense))
        state.add_compression_metrics({"dense_param_count": state.dense.param_count,
                                       "dense_flops": state.dense.flops})
    return state.dense


@torch.no_grad()
def _onnx_latency_ms(sess, x1) -> float:
    for _ in range(5):
        onnx_int8.run(sess, x1)
    times = []
    for _ in range(30):
        t0 = time.perf_counter()
        onnx_int8.run(sess, x1)
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


@torch.no_grad()
def onnx_entries(state: State, onnx: bytes) -> dict:
    """How the ONNX Runtime int8 model's validation predictions agree with the PyTorch model's."""
    val, model = state.datasets.val, state.model
    was = model.training
    model.eval()
    device = model_device(model)
    ours = torch.cat([model(val.x[i:i + 1024].to(device)).float().cpu()
                      for i in range(0, len(val.x), 1024)])
    model.train(was)
    sess = onnx_int8.session(onnx)
    theirs = torch.from_numpy(onnx_int8.run(sess, val.x))
    latency = _onnx_latency_ms(sess, val.x[:1].float().cpu().numpy())
    out = {"onnx_bytes": len(onnx), "onnx_latency_ms": latency,
           "onnx_max_abs_diff": (ours - theirs).abs().max().item() if len(ours) else 0.0}
    if state.datasets.task == "classification":
        out["onnx_agreement"] = (ours.argmax(1) == theirs.argmax(1)).float().mean().item()
        out["onnx_val_accuracy"] = (theirs.argmax(1) == val.y.cpu()).float().mean().item()
    return out


def artifact_of(state: State, output: StageOutput) -> compact.CompactArtifact:
    """The model as it stands, packed with what this stage and the ones before it left."""
    previous = state.compression.artifact
    quantization = output.quantization or (previous.quantization if previous else None)
    extra_meta = dict(previous.extra_meta) if previous else {}
    files = dict(previous.files) if previous else {}
    if output.widths:
        extra_meta["widths"] = dict(output.widths)
    if output.shapes:
        extra_meta["shapes"] = dict(output.shapes)
    if output.onnx is not None:
        files[onnx_int8.FILE] = output.onnx
        extra_meta["onnx"] = {"file": onnx_int8.FILE, **output.onnx_meta}
    return compact.CompactArtifact(state.model, quantization, extra_meta, files)


def measured_entries(state: State, output: StageOutput) -> dict:
    """Validation metrics, sparsity, sizes, FLOPs and latency of the model as it stands."""
    model = state.model
    total, nonzero = param_counts(model)
    entries = {f"compressed_{k}": v for k, v in state.evaluate(model).items()}
    entries.update({"sparsity": weight_sparsity(model, dense_measures(state).weights),
                    "param_count": total, "nonzero_params": nonzero,
                    "flops": shrink.flops(model, _example(state))})
    if output.onnx is not None:
        entries.update(onnx_entries(state, output.onnx))
    entries["latency_ms"] = latency_ms(model, state.datasets.val.x)  # any device: on a CPU copy
    return entries


def record(state: State, stage: CompressionStage) -> None:
    output = stage.output()
    dense_measures(state)
    art = artifact_of(state, output)
    nbytes = art.nbytes()
    entries = measured_entries(state, output)
    # the loop adds model_bytes/compression_ratio from disk
    state.compression = state.compression.with_artifact(art).with_metrics(entries)
    per_stage = {k.removeprefix("compressed_"): v for k, v in entries.items()}
    per_stage.update({"model_bytes": nbytes, "compression_ratio":
                      state.compression.metrics.get("dense_bytes", nbytes) / nbytes})
    state.add_compression_metrics({f"{stage.name}_{k}": v for k, v in per_stage.items()})


# The compression-stage catalog (docs/architecture.md, "Catalogs"): the spec's `stage`
# name -> the stage's class, built with (stage_spec, experiment).
STAGES = {
    "prune": Prune,
    "quantize": Quantize,
    "share": Share,
    "distill": Distill,
}


def build(stage_spec, experiment, teachers: Optional[TeacherPayloads] = None) -> Stage:
    """The measured stage a `compression` entry of the spec names (its `stage` field);
    Distill alone also takes the teachers the driver resolved."""
    if stage_spec.stage == "distill":
        return Measured(Distill(stage_spec, experiment, teachers))
    return Measured(STAGES[stage_spec.stage](stage_spec, experiment))
