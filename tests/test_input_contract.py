"""What a registered model's pyfunc takes (dlopt.registry.serving.InputContract): every
numeric dtype of the trained row shape, cast for the model; anything else refused with a
message naming the shape and dtype. For each kind of data source: a built-in tabular dataset
(digits, float64 rows), an image dataset (uint8 N x 1 x 28 x 28) and a custom builder's x
(float32 rows). No Ray; the end-to-end checks through MLflow are in
tests/integration/test_model_serving.py."""
import json

import numpy as np
import pandas as pd
import pytest
from mlflow.exceptions import MlflowException

from dlopt.artifact.files import META, save_example
from dlopt.registry.serving import InputContract

NUMERIC = ("float16", "float32", "float64", "int8", "int16", "int32", "int64",
           "uint8", "uint16", "uint32", "uint64", "bool")
SOURCES = {"digits": ((64,), "float64"), "mnist": ((1, 28, 28), "uint8"),
           "custom": ((5,), "float32")}


def contract_of(tmp_path, row_shape, dtype) -> InputContract:
    rng = np.random.default_rng(0)
    save_example(rng.integers(0, 17, (2, *row_shape)).astype(dtype), tmp_path)
    return InputContract.of(tmp_path, {"input_shape": list(row_shape)})


@pytest.mark.parametrize("source", SOURCES)
def test_every_numeric_dtype_gives_the_same_rows(tmp_path, source):
    row_shape, dtype = SOURCES[source]
    contract = contract_of(tmp_path, row_shape, dtype)
    assert contract.describe()["shape"] == [-1, *row_shape] and contract.describe()["dtype"] == dtype
    x = np.random.default_rng(1).integers(0, 2, (3, *row_shape))  # 0/1: exact in every dtype
    expected = contract.conform(x.astype(dtype))
    assert expected.dtype == (np.dtype(dtype) if dtype.startswith("float") else np.float64)
    for name in NUMERIC:
        got = contract.conform(x.astype(name))
        assert got.dtype == expected.dtype and np.array_equal(got, expected), name
    flat = pd.DataFrame(x.reshape(3, -1).astype("int64"))  # dataframe_split: flat rows
    assert np.array_equal(contract.conform(flat), expected)
    assert np.array_equal(contract.conform(x.tolist()), expected)


@pytest.mark.parametrize("source", SOURCES)
def test_wrong_shapes_and_non_numbers_name_the_contract(tmp_path, source):
    row_shape, dtype = SOURCES[source]
    contract = contract_of(tmp_path, row_shape, dtype)
    good = np.zeros((2, *row_shape))
    bad = [np.zeros((2, 3)), good.astype(str), good.astype(complex), np.zeros((2, *row_shape, 1)),
           [["a", 1]] * 2]
    want = "(-1, " + ", ".join(map(str, row_shape)) + ")"
    for x in bad:
        with pytest.raises(MlflowException) as err:
            contract.conform(x)
        assert want in str(err.value) and dtype in str(err.value), str(err.value)
        assert err.value.error_code == "INVALID_PARAMETER_VALUE"


def test_a_model_saved_without_an_example_takes_its_input_shape(tmp_path):
    (tmp_path / META).write_text(json.dumps({"input_shape": [4]}))
    contract = InputContract.of(tmp_path, {"input_shape": [4]})
    assert contract.describe()["shape"] == [-1, 4] and contract.dtype == np.float32
    assert contract.conform(np.ones((2, 4), dtype=np.int16)).dtype == np.float32
    with pytest.raises(MlflowException, match=r"\(-1, 4\)"):
        contract.conform(np.ones((2, 5)))
