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

Input dtypes: MLflow enforces a tensor signature's dtype exactly (`_enforce_tensor_spec` in
mlflow/models/utils.py: float32 rows refused by a float64 input), so the signature declares no
input schema and this wrapper enforces the input instead (`InputContract`): any numeric dtype
(float16/32/64, signed and unsigned ints, bool) of the trained row shape is cast to the training
dtype (float64 for integer training data: `InputContract.target`); anything else is refused
with a message naming the expected shape and dtype (docs/architecture.md, "Registration after
the sweep").
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import mlflow.pyfunc
import numpy as np

OUTPUTS = ("labels", "probabilities", "logits")
DEFAULT_PARAMS = {"output": "labels"}  # the signature's params (dlopt.registry.register)


NUMERIC_KINDS = "biuf"  # numpy kinds: bool, signed int, unsigned int, float
ACCEPTS = "float16/32/64, int8-64, uint8-64 or bool"


@dataclass(frozen=True)
class InputContract:
    """The raw rows a model takes: one row's shape and the training dtype (the saved input
    example's, else the model's input shape as float32)."""

    row_shape: tuple[int, ...]
    dtype: np.dtype

    @classmethod
    def of(cls, model_dir: Path, meta: dict) -> "InputContract":
        from dlopt.artifact.files import load_example

        example = load_example(model_dir)
        if example is not None:
            return cls(tuple(int(n) for n in example.shape[1:]), example.dtype)
        return cls(tuple(int(n) for n in meta.get("input_shape", ())), np.dtype("float32"))

    def describe(self) -> dict:
        """What MLmodel's metadata declares (dlopt.registry.register.log_model)."""
        return {"shape": [-1, *self.row_shape], "dtype": str(self.dtype), "accepts": ACCEPTS}

    def conform(self, model_input) -> np.ndarray:
        """`model_input` (ndarray, DataFrame, nested lists) as rows of the training dtype; a
        DataFrame's flat rows of the right width take the row shape (`dataframe_split`)."""
        try:
            x = model_input.to_numpy() if hasattr(model_input, "to_numpy") else np.asarray(model_input)
            if x.dtype == object:  # a DataFrame of mixed columns, or lists MLflow did not type
                x = np.asarray(x.tolist())
        except ValueError:  # ragged rows
            raise self._refusal(np.asarray(model_input, dtype=object)) from None
        width = int(np.prod(self.row_shape)) if self.row_shape else 1
        if (self.row_shape and x.ndim == 2 and len(self.row_shape) > 1
                and x.shape[1] == width):
            x = x.reshape(-1, *self.row_shape)
        if x.dtype.kind not in NUMERIC_KINDS or (self.row_shape and x.shape[1:] != self.row_shape):
            raise self._refusal(x)
        return x.astype(self.target, copy=False)

    @property
    def target(self) -> np.dtype:
        """The dtype inputs are cast to: the training dtype when it is a float; for integer
        training data (uint8 pixels) float64, which keeps every int value the model's own
        float32 cast would see (a uint8 cast would wrap 300 to 44)."""
        return self.dtype if self.dtype.kind == "f" else np.dtype("float64")

    def _refusal(self, x: np.ndarray):
        from mlflow.exceptions import MlflowException

        shape = "(-1, " + ", ".join(str(n) for n in self.row_shape) + ")"
        return MlflowException.invalid_parameter_value(
            f"input of shape {tuple(x.shape)} and dtype {x.dtype}: this model takes shape "
            f"{shape} of a numeric dtype ({ACCEPTS}; trained on {self.dtype})")


class DloptModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context):
        from dlopt.artifact.files import META
        from dlopt.ml import onnx_int8
        from dlopt.ml.transform import InputTransform

        model_dir = Path(context.artifacts["model_dir"])
        meta = json.loads((model_dir / META).read_text())
        self.task = meta.get("task", "classification")
        self.contract = InputContract.of(model_dir, meta)
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
        out = self._network_outputs(self.contract.conform(model_input))
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
