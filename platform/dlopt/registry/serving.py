"""MLflow pyfunc wrapper: `mlflow.pyfunc.load_model("models:/NAME@ALIAS")` predicts.

Logged as "models from code" (`pyfunc_entry.py` only imports this class), so loading
unpickles nothing: weights are safetensors and the architecture is rebuilt from the spec.
"""
from __future__ import annotations

import mlflow.pyfunc


class DloptModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context):
        from dlopt.artifact.files import build_from_dir

        self.model = build_from_dir(context.artifacts["model_dir"])

    def predict(self, context, model_input, params=None):
        import numpy as np
        import torch

        x = torch.as_tensor(np.asarray(model_input, dtype=np.float32))
        with torch.no_grad():
            out = self.model(x)
        return out.float().numpy()
