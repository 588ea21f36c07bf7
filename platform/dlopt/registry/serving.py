"""MLflow pyfunc wrapper: `mlflow.pyfunc.load_model("models:/NAME@ALIAS")` predicts.

Logged as "models from code" (`pyfunc_entry.py` only imports this class), so loading
unpickles nothing: weights are safetensors and the architecture is rebuilt from the spec.
It takes the raw arrays the data source gives (the saved input transform is applied inside,
dlopt.ml.transform) and answers as MLflow models do: class labels for a classifier, or
`params={"output": "probabilities"}` (softmax) or `"logits"`; values for a regressor.
A quantized model's artifact also holds `model.onnx`, the ONNX Runtime int8 graph
(dlopt.ml.onnx_int8): pyfunc and `mlflow models serve` then run the network with ONNX
Runtime, the fast CPU path, after the same input transform; `dlopt.load_model` still
returns PyTorch.
"""
from __future__ import annotations

import json
from pathlib import Path

import mlflow.pyfunc
import numpy as np

OUTPUTS = ("labels", "probabilities", "logits")
DEFAULT_PARAMS = {"output": "labels"}  # the signature's params (dlopt.registry.register)


class DloptModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context):
        from dlopt.artifact.files import META
        from dlopt.ml import onnx_int8
        from dlopt.ml.transform import InputTransform

        model_dir = Path(context.artifacts["model_dir"])
        meta = json.loads((model_dir / META).read_text())
        self.task = meta.get("task", "classification")
        self.model = self.session = self.transform = None
        if (model_dir / onnx_int8.FILE).exists():
            self.session = onnx_int8.session(model_dir / onnx_int8.FILE)
            if meta.get("input_transform"):
                self.transform = InputTransform.from_json(meta["input_transform"])
        else:
            from dlopt.artifact.files import build_inference_model

            self.model = build_inference_model(model_dir)

    def _network_outputs(self, x: np.ndarray) -> np.ndarray:
        if self.session is not None:
            from dlopt.ml import onnx_int8

            if self.transform is not None:
                x = self.transform.apply(x)
            return np.asarray(onnx_int8.run(self.session, np.asarray(x, dtype=np.float32)))
        import torch

        with torch.no_grad():
            return self.model(torch.as_tensor(x)).float().numpy()

    def predict(self, context, model_input, params=None):
        x = model_input.to_numpy() if hasattr(model_input, "to_numpy") else np.asarray(model_input)
        out = self._network_outputs(x)
        if self.task == "regression":
            return out[:, 0] if out.ndim == 2 and out.shape[1] == 1 else out
        output = (params or {}).get("output", "labels")
        if output == "labels":
            return out.argmax(1)
        if output == "probabilities":
            shifted = np.exp(out - out.max(1, keepdims=True))
            return shifted / shifted.sum(1, keepdims=True)
        if output == "logits":
            return out
        from mlflow.exceptions import MlflowException

        raise MlflowException.invalid_parameter_value(
            f"params.output: {output!r} is not one of {', '.join(OUTPUTS)}")
