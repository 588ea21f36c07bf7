"""Int8 for CPU inference: export to ONNX (torch.onnx) and quantize with ONNX Runtime.

torchao's int8 tensors have no fast CPU kernel here (BENCHMARKS.md: 27x slower than fp32 at
batch 1), so the model that is served is an ONNX graph quantized by ONNX Runtime, whose
MatMulInteger/ConvInteger and QDQ kernels are faster than fp32 on a CPU:
- "dynamic": `quantize_dynamic`, int8 weights, activations quantized per batch at run time
  (Gemm/MatMul -> MatMulInteger, Conv -> ConvInteger);
- "static": `quantize_static` in QDQ format, per-channel int8 weights, uint8 activations whose
  ranges come from training batches read by a `CalibrationDataReader`; ONNX Runtime fuses
  the QDQ pairs into QLinear kernels for Linear and Conv layers alike.

`unquantized_layers` lists every Conv/Gemm/MatMul left in float: the Quantize stage refuses
to ship such a model rather than call it int8 (no silent skipping).

The exporter is torch's TorchScript-based one (`dynamo=False`): it needs no onnxscript and
exports the catalog's models in under a second; its deprecation warning is silenced here only.
"""
from __future__ import annotations

import io
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

OPSET = 17
INPUT, OUTPUT = "x", "y"
FILE = "model.onnx"
# float ops that carry weights: each must read a dequantized (int8) weight after quantization
WEIGHTED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


def export(model: nn.Module, example: torch.Tensor) -> bytes:
    """The fp32 model as ONNX bytes, batch dimension dynamic."""
    model = model.eval()
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(model, (example[:1].float().cpu(),), buf, dynamo=False,
                          opset_version=OPSET, input_names=[INPUT], output_names=[OUTPUT],
                          dynamic_axes={INPUT: {0: "batch"}, OUTPUT: {0: "batch"}})
    return buf.getvalue()


def _reader(batches: list[np.ndarray]):
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def __init__(self):
            self._it = iter([{INPUT: b} for b in batches])

        def get_next(self):
            return next(self._it, None)

    return Reader()


def quantize(fp32: bytes, method: str, calibration: list[torch.Tensor] | None = None) -> bytes:
    """ONNX bytes -> int8 ONNX bytes (`method`: "dynamic" or "static")."""
    from onnxruntime.quantization import (
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory(prefix="dlopt-onnx-") as d:
        src, pre, dst = Path(d) / "fp32.onnx", Path(d) / "pre.onnx", Path(d) / "int8.onnx"
        src.write_bytes(fp32)
        # ONNX Runtime's recommended pre-processing (graph optimization, shape inference);
        # its symbolic shape inference cannot follow the exporter's dynamic Reshape, skipped.
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        if method == "static":
            batches = [b.detach().float().cpu().numpy() for b in calibration or []]
            if not batches:
                raise ValueError("static int8 needs calibration batches")
            quantize_static(str(pre), str(dst), _reader(batches), quant_format=QuantFormat.QDQ,
                            per_channel=True, weight_type=QuantType.QInt8,
                            activation_type=QuantType.QUInt8)
        elif method == "dynamic":
            quantize_dynamic(str(pre), str(dst), weight_type=QuantType.QInt8)
        else:
            raise ValueError(f"unknown ONNX Runtime quantization method {method!r}")
        return dst.read_bytes()


def unquantized_layers(onnx_bytes: bytes) -> list[str]:
    """'op name' of every weighted float op whose weight is not dequantized int8."""
    import onnx

    graph = onnx.load_from_string(onnx_bytes).graph
    produced_by = {out: n.op_type for n in graph.node for out in n.output}
    return [f"{n.op_type} {n.name}" for n in graph.node
            if n.op_type in WEIGHTED_OPS and (len(n.input) < 2
                                              or produced_by.get(n.input[1]) != "DequantizeLinear")]


def op_counts(onnx_bytes: bytes) -> dict[str, int]:
    import onnx

    counts: dict[str, int] = {}
    for n in onnx.load_from_string(onnx_bytes).graph.node:
        counts[n.op_type] = counts.get(n.op_type, 0) + 1
    return counts


def session(model: bytes | str | Path, threads: int | None = None):
    """An ONNX Runtime CPU session; `threads` pins intra- and inter-op threads."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = threads
    source = str(model) if isinstance(model, Path) else model
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def run(sess, x) -> np.ndarray:
    x = x.detach().float().cpu().numpy() if isinstance(x, torch.Tensor) else \
        np.asarray(x, dtype=np.float32)
    return sess.run([OUTPUT], {INPUT: x})[0]
