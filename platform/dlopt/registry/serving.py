"""MLflow pyfunc wrapper: `mlflow.pyfunc.load_model("models:/NAME@ALIAS")` predicts.

Logged as "models from code" (`pyfunc_entry.py` only imports this class), so loading
unpickles nothing: weights are safetensors and the architecture is rebuilt from the spec.
It takes the raw arrays the data source gives (the saved input transform is applied inside,
dlopt.ml.transform) and answers as MLflow models do: class labels for a classifier, or
`params={"output": "probabilities"}` (softmax) or `"logits"`; values for a regressor.
"""
from __future__ import annotations

import mlflow.pyfunc

OUTPUTS = ("labels", "probabilities", "logits")
DEFAULT_PARAMS = {"output": "labels"}  # the signature's params (dlopt.registry.register)


class DloptModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context):
        import json
        from pathlib import Path

        from dlopt.artifact.files import META, build_inference_model

        model_dir = Path(context.artifacts["model_dir"])
        self.model = build_inference_model(model_dir)
        self.task = json.loads((model_dir / META).read_text()).get("task", "classification")

    def predict(self, context, model_input, params=None):
        import numpy as np
        import torch

        x = model_input.to_numpy() if hasattr(model_input, "to_numpy") else np.asarray(model_input)
        with torch.no_grad():
            out = self.model(torch.as_tensor(x)).float()
        if self.task == "regression":
            values = out.numpy()
            return values[:, 0] if values.ndim == 2 and values.shape[1] == 1 else values
        output = (params or {}).get("output", "labels")
        if output == "labels":
            return out.argmax(1).numpy()
        if output == "probabilities":
            return torch.softmax(out, 1).numpy()
        if output == "logits":
            return out.numpy()
        from mlflow.exceptions import MlflowException

        raise MlflowException.invalid_parameter_value(
            f"params.output: {output!r} is not one of {', '.join(OUTPUTS)}")
