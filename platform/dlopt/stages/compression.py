"""Compression stages (prune, quantize, distill) and the compact artifact they produce.

`STAGES` maps a spec stage name to a builder `(stage_spec, experiment) -> Stage`; the
catalog builds them in spec order. Each stage is wrapped so that, after its own
`fit_end`, the model is measured as it stands: validation metrics, sparsity, parameter
count, CPU batch-1 latency and the bytes of its compact artifact. Those entries go to
the final report twice: prefixed by the stage (`prune_sparsity`, ...) and unprefixed
(`compressed_val_accuracy`, `sparsity`, ...), where the last stage wins. The last
stage's `CompactArtifact` is what the loop saves and measures on disk.

`load_compressed` rebuilds a saved compact artifact: architecture from the spec,
tensors from safetensors, quantization re-applied with torchao and its int8 data and
scales overwritten with the stored ones, so the loaded model computes exactly what the
trial evaluated.
"""
from __future__ import annotations

import statistics
import time

import torch
from torch import nn

from dlopt.artifact import compact
from dlopt.artifact import files as artifact_mod
from dlopt.stages import Event, Stage, State
from dlopt.stages.distill import Distill
from dlopt.stages.prune import Prune
from dlopt.stages.pruning import PRUNABLE
from dlopt.stages.quantize import Quantize


# ------------------------------------------------------------------ measurements (pure)
def weight_sparsity(model: nn.Module) -> float:
    """Fraction of exact zeros in Linear/Conv weights (int8 data when quantized)."""
    zeros = total = 0
    for m in model.modules():
        if isinstance(m, PRUNABLE):
            w = m.weight
            w = w.qdata if hasattr(w, "qdata") else w
            zeros += (w == 0).sum().item()
            total += w.numel()
    return zeros / max(total, 1)


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
    """Median wall time of one batch-1 forward on CPU, in milliseconds."""
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

    def __init__(self, inner: Stage):
        self.inner = inner
        self.name = inner.name

    def run(self, event: str, state: State) -> None:
        if event == Event.SETUP and "dense_bytes" not in state.report:
            # the fp32 baseline, measured before any stage reparametrizes the model
            state.report["dense_bytes"] = artifact_mod.dense_bytes(state.model)
        self.inner.run(event, state)
        if event == Event.FIT_END:
            record(state, self.inner)

    def state_dict(self) -> dict:
        return self.inner.state_dict()

    def load_state_dict(self, data: dict) -> None:
        self.inner.load_state_dict(data)


def record(state: State, stage: Stage) -> None:
    model = state.model
    on_cpu = next(model.parameters()).device.type == "cpu"
    quantization = getattr(stage, "quantization", None) or \
        getattr(state.artifact, "quantization", None)
    art = compact.CompactArtifact(model, quantization)
    state.artifact = art
    nbytes = art.nbytes()
    total, nonzero = param_counts(model)
    entries = {f"compressed_{k}": v for k, v in state.evaluate(model).items()}
    entries.update({"sparsity": weight_sparsity(model), "param_count": total,
                    "nonzero_params": nonzero})
    if on_cpu:
        entries["latency_ms"] = latency_ms(model, state.datasets.val.x)
    state.report.update(entries)  # the loop adds model_bytes/compression_ratio from disk
    per_stage = {k.removeprefix("compressed_"): v for k, v in entries.items()}
    per_stage.update({"model_bytes": nbytes,
                      "compression_ratio": state.report.get("dense_bytes", nbytes) / nbytes})
    state.report.update({f"{stage.name}_{k}": v for k, v in per_stage.items()})


STAGES = {
    "prune": lambda stage_spec, spec: Measured(Prune(stage_spec, spec)),
    "quantize": lambda stage_spec, spec: Measured(Quantize(stage_spec, spec)),
    "distill": lambda stage_spec, spec: Measured(Distill(stage_spec, spec)),
}
