"""The Quantize stage: applies dlopt.ml.quantization at its place in training (see there).

At fit_end the fp32 model (pruned, shrunk, QAT-converted) is also exported to ONNX and
quantized by ONNX Runtime (dlopt.ml.onnx_int8): "static" calibrates QDQ ranges on the same
training batches as torchao's static scales, "dynamic" and "qat" quantize dynamically. That
ONNX model is what serving runs (dlopt.registry.serving); the torchao int8 weights stay the
PyTorch model `dlopt.load_model` returns. A weighted layer ONNX Runtime left in float is an
error, never a silently fp32 layer in a model called int8.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from dlopt.ml import onnx_int8
from dlopt.ml.devices import model_device
from dlopt.ml.quantization import (
    apply,
    calibrate,
    is_qat_prepared,
    qat_convert,
    qat_prepare,
    set_fake_quant,
)
from dlopt.stages import CompressionStage, State, StageOutput
from dlopt.stages.pruning.masks import make_permanent


class Quantize(CompressionStage):
    name = "quantize"

    def __init__(self, spec, experiment):
        self.spec = spec
        self.epochs = experiment.epochs
        self.fake_quant = False
        self.quantization: dict | None = None
        self._model: nn.Module | None = None
        self.onnx: bytes | None = None  # the ONNX Runtime int8 model (see fit_end)
        self.onnx_meta: dict = {}

    def _qat_on_at(self) -> int:
        """0-based epoch from which fake quantization is on."""
        return max(self.epochs - self.spec.qat_epochs, 0)

    def setup(self, state: State) -> None:
        self._model = state.model
        if self.spec.method == "qat":
            if not is_qat_prepared(state.model):  # FSDP prepared it before sharding
                qat_prepare(state.model)
            self._set(state, self._qat_on_at() == 0)

    def _set(self, state: State, on: bool) -> None:
        set_fake_quant(state.model, on)
        self.fake_quant = on

    def epoch_end(self, state: State) -> None:
        if self.spec.method == "qat" and not self.fake_quant and state.epoch + 1 >= self._qat_on_at():
            self._set(state, True)

    def _calibration(self, state: State) -> list[torch.Tensor]:
        """Calibration batches on the device the final model is on (FSDP and pipeline gather
        it to the CPU while the trial trains on its own device)."""
        x, device = state.datasets.train.x, model_device(state.model)
        bs = state.spec.data.batch_size
        g = torch.Generator().manual_seed(state.spec.seed)
        order = torch.randperm(len(x), generator=g)
        return [x[order[i * bs:(i + 1) * bs]].to(device)
                for i in range(min(self.spec.calibration_batches, -(-len(x) // bs)))]

    def _onnx(self, state: State, model: nn.Module, batches: list[torch.Tensor]) -> None:
        """Export the fp32 model and quantize it with ONNX Runtime (see the module doc)."""
        fp32 = copy.deepcopy(model).float().cpu().eval()
        method = "static" if self.spec.method == "static" else "dynamic"
        int8 = onnx_int8.quantize(onnx_int8.export(fp32, state.datasets.val.x[:1]), method,
                                  [b.cpu() for b in batches])
        left = onnx_int8.unquantized_layers(int8)
        if left:
            raise ValueError(f"ONNX Runtime left {', '.join(left)} in float; int8 refused")
        self.onnx = int8
        self.onnx_meta = {"method": method, "ops": onnx_int8.op_counts(int8),
                          "runtime": "onnxruntime"}

    def fit_end(self, state: State) -> None:
        model = state.model
        make_permanent(model)
        method = self.spec.method
        batches = self._calibration(state) if method == "static" else []
        if method == "qat":
            qat_convert(model)
            self._onnx(state, model, batches)
            quantization = {"method": "dynamic", "act_mapping": "asymmetric", "trained": "qat"}
            apply(model, quantization)
        elif method == "static":
            self._onnx(state, model, batches)
            quantization = {"method": "static", "calibration_batches": len(batches)}
            apply(model, quantization, calibrate(model, batches))
        else:
            self._onnx(state, model, batches)
            quantization = {"method": "dynamic", "act_mapping": "symmetric"}
            apply(model, quantization)
        # torchao quantizes the PyTorch weights' Linear layers only; say which stay float there
        # (model.onnx, the model served, has them int8 too: checked in _onnx).
        float_layers = sorted({type(m).__name__ for m in model.modules()
                               if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d))})
        if float_layers:
            quantization["pytorch_float_layers"] = float_layers
        self.quantization = quantization

    def output(self) -> StageOutput:
        return StageOutput(quantization=self.quantization, onnx=self.onnx,
                           onnx_meta=self.onnx_meta)

    def state_dict(self) -> dict:
        return {"fake_quant": self.fake_quant}

    def load_state_dict(self, data: dict) -> None:
        # The loop restores stage state after setup built the fake-quant modules.
        if self.spec.method == "qat" and self._model is not None:
            set_fake_quant(self._model, bool(data.get("fake_quant", False)))
        self.fake_quant = bool(data.get("fake_quant", False))
