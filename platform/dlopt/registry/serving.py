"""MLflow pyfunc wrapper: `mlflow.pyfunc.load_model("models:/NAME@ALIAS")` predicts.

Logged as "models from code" (`pyfunc_entry.py` only imports this class), so loading
unpickles nothing: weights are safetensors and the architecture is rebuilt from the spec.
A quantized model's artifact also holds `model.onnx`, the ONNX Runtime int8 graph
(dlopt.ml.onnx_int8): pyfunc and `mlflow models serve` then predict with ONNX Runtime, the
fast CPU path, and never build the PyTorch model; `dlopt.load_model` still returns PyTorch.
"""
from __future__ import annotations

from pathlib import Path

import mlflow.pyfunc


class DloptModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context):
        from dlopt.ml import onnx_int8

        model_dir = Path(context.artifacts["model_dir"])
        self.model = self.session = None
        if (model_dir / onnx_int8.FILE).exists():
            self.session = onnx_int8.session(model_dir / onnx_int8.FILE)
        else:
            from dlopt.artifact.files import build_from_dir

            self.model = build_from_dir(model_dir)

    def predict(self, context, model_input, params=None):
        import numpy as np

        x = np.asarray(model_input, dtype=np.float32)
        if self.session is not None:
            from dlopt.ml import onnx_int8

            return onnx_int8.run(self.session, x)
        import torch

        with torch.no_grad():
            out = self.model(torch.as_tensor(x))
        return out.float().numpy()
