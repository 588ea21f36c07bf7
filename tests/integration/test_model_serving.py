"""A registered champion used as its users would: raw arrays in, its tagged test metrics out.

One small digits sweep (local Ray, SQLite MLflow) registers a champion. Then, each in a fresh
process: `dlopt.load_model` and `mlflow.pyfunc.load_model` on sklearn's own
`load_digits().data` (values 0-16, not standardized), and `mlflow models serve` on 127.0.0.1
answering raw rows posted to /invocations; each reproduces the accuracy tagged on the model
version. The logged model follows MLflow's conventions: signature, input example, pinned
requirements without dlopt (its code travels in code_paths), dataset lineage on the trial run,
and the experiment's kind.
"""
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from dlopt import Data, Experiment, Model, Optimizer, Resources, Search, Tracking
from dlopt.driver.sweep import run
from dlopt_testing import free_port
from mlflow.tracking import MlflowClient

NAME = "it-serve-digits"
MODEL = f"models:/{NAME}@champion"
VENV_BIN = str(Path(sys.executable).parent)


@pytest.fixture(scope="module")
def champion(tmp_path_factory):
    work = tmp_path_factory.mktemp("serve")
    uri = f"sqlite:///{work / 'mlflow.db'}"
    spec = Experiment(
        name=NAME, seed=0, epochs=3,
        data=Data(dataset="digits", batch_size=64, val_fraction=0.2, test_fraction=0.2),
        model=Model(hidden=[32]), optimizer=Optimizer(name="adam", lr=0.01),
        search=Search(metric="val_accuracy", mode="max"), resources=Resources(num_workers=1),
        tracking=Tracking(experiment="it-serve", register_as=NAME),
    )
    result = run(spec, tracking_uri=uri, storage=str(work / "ray_results"), progress=False)
    client = MlflowClient(uri)
    version = client.get_model_version_by_alias(NAME, "champion")
    return result, client, version, work, uri


def raw_test_split():
    """The test rows as sklearn returns them (float64, 0..16), picked by dlopt's own seeded split."""
    from dlopt.ml.splits import split_indices
    from sklearn.datasets import load_digits

    bunch = load_digits()
    _, _, test = split_indices(bunch.target, 0.2, 0.2, 0, True)
    return bunch.data[test], bunch.target[test]


def fresh(code: str, uri: str, cwd: Path, dlopt_on_path: bool = True) -> str:
    """`code` in a new Python process with the store as MLFLOW_TRACKING_URI; its stdout.
    Without `dlopt_on_path`, this checkout is not on PYTHONPATH."""
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
    if not dlopt_on_path:
        env.pop("PYTHONPATH", None)
    out = subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


# The test rows of the sweep (seed 0, test_fraction 0.2: dlopt.ml.splits), picked with
# scikit-learn alone, as a user would.
LOAD = """
import json, sys
import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
bunch = load_digits()
_, test = train_test_split(np.arange(len(bunch.target)), test_size=0.2, random_state=0,
                           stratify=bunch.target)
test = np.sort(test)
x, y = bunch.data[test], bunch.target[test]
"""


def test_dlopt_load_model_takes_raw_digits_and_reproduces_the_tag(champion):
    _, _, version, work, uri = champion
    out = fresh(LOAD + f"""
import torch, dlopt
model = dlopt.load_model({MODEL!r})
with torch.no_grad():
    pred = model(torch.from_numpy(x)).argmax(1).numpy()
print(json.dumps({{"accuracy": float((pred == y).mean())}}))
""", uri, work)
    tag = float(version.tags["metric.test_accuracy"])
    acc = json.loads(out.splitlines()[-1])["accuracy"]
    print(f"dlopt.load_model on raw load_digits().data test rows: accuracy {acc:.4f}, tag {tag:.4f}")
    assert acc == pytest.approx(tag, abs=1e-12) and tag > 0.8


def test_pyfunc_in_a_fresh_process_labels_probabilities_and_its_own_code(champion):
    _, _, version, work, uri = champion
    out = fresh(LOAD + f"""
import mlflow
model = mlflow.pyfunc.load_model({MODEL!r})
labels = model.predict(x)
proba = model.predict(x, params={{"output": "probabilities"}})
import dlopt
print(json.dumps({{"accuracy": float((labels == y).mean()), "dtype": str(labels.dtype),
                   "proba_shape": list(proba.shape), "proba_sum": float(proba.sum(1).mean()),
                   "argmax_agrees": bool((proba.argmax(1) == labels).all()),
                   "dlopt_from": dlopt.__file__}}))
""", uri, work, dlopt_on_path=False)
    got = json.loads(out.splitlines()[-1])
    tag = float(version.tags["metric.test_accuracy"])
    print(f"mlflow.pyfunc on raw rows: accuracy {got['accuracy']:.4f}, tag {tag:.4f}")
    assert got["accuracy"] == pytest.approx(tag, abs=1e-12)
    assert got["dtype"].startswith("int") and got["argmax_agrees"]
    assert got["proba_shape"] == [len(raw_test_split()[1]), 10]
    assert got["proba_sum"] == pytest.approx(1.0, abs=1e-5)
    # dlopt came from the code logged with the model, not from this checkout or an index
    assert "/code/dlopt/" in got["dlopt_from"] and "/platform/dlopt/" not in got["dlopt_from"]


def test_logged_model_follows_mlflow_conventions(champion):
    import mlflow
    from mlflow.models import Model as MlflowModel

    result, client, version, _, uri = champion
    mlflow.set_tracking_uri(uri)
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{NAME}/{version.version}"))
    meta = MlflowModel.load(str(local / "MLmodel"))
    # no input schema (MLflow would refuse float32 rows of a float64 model); the input is
    # declared in the metadata and enforced by the pyfunc (dlopt.registry.serving.InputContract)
    assert meta.signature.inputs is None
    assert meta.metadata["dlopt.input"]["shape"] == [-1, 64], meta.metadata
    assert meta.metadata["dlopt.input"]["dtype"] == "float64", meta.metadata
    assert meta.signature.params.to_dict()[0]["name"] == "output"
    example = json.loads((local / "serving_input_example.json").read_text())
    assert np.asarray(example["inputs"]).shape[1] == 64 and np.asarray(example["inputs"]).max() > 1
    reqs = (local / "requirements.txt").read_text().split()
    assert not any(r.split("=")[0] == "dlopt" for r in reqs), reqs
    pinned = {r.split("==")[0]: r for r in reqs}
    for name in ("torch", "torchao", "safetensors", "mlflow"):
        assert "==" in pinned.get(name, ""), reqs
    assert (local / "code" / "dlopt" / "registry" / "serving.py").exists()
    # lineage on the trial run, and the experiment opens as model training in MLflow 3's UI
    trial_run = client.get_run(version.tags["dlopt.source_run"])
    (dataset,) = [d.dataset for d in trial_run.inputs.dataset_inputs]
    assert dataset.name == "digits"
    experiment = client.get_experiment(result.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"


DTYPES = ("float16", "float32", "float64", "int8", "int16", "int32", "int64",
          "uint8", "uint16", "uint32", "uint64")


def test_pyfunc_takes_every_numeric_dtype_and_names_the_contract(champion):
    _, _, _, work, uri = champion
    out = fresh(LOAD + f"""
import mlflow, pandas as pd
model = mlflow.pyfunc.load_model({MODEL!r})
base = model.predict(x)
same = {{d: bool((model.predict(x.astype(d)) == base).all()) for d in {DTYPES!r}}}
same["dataframe"] = bool((model.predict(pd.DataFrame(x.astype("float32"))) == base).all())
same["bool"] = bool((model.predict(x > 8) == model.predict((x > 8).astype("float64"))).all())
errors = []
for bad in (x[:2, :10], x[:2].astype(str), x[:2].astype(complex)):
    try:
        model.predict(bad)
        errors.append("accepted")
    except Exception as err:
        errors.append(str(err))
print(json.dumps({{"same": same, "errors": errors}}))
""", uri, work)
    got = json.loads(out.splitlines()[-1])
    assert all(got["same"].values()) and len(got["same"]) == len(DTYPES) + 2, got["same"]
    for message in got["errors"]:
        assert "(-1, 64)" in message and "float64" in message, message


def post(url: str, body: dict) -> tuple[int, dict]:
    req = urllib.request.Request(url, data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


def test_mlflow_models_serve_answers_raw_rows_with_the_tagged_accuracy(champion):
    _, _, version, work, uri = champion
    port = free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri,
           "PATH": VENV_BIN + os.pathsep + os.environ.get("PATH", "")}
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "models", "serve", "-m", MODEL, "--env-manager", "local",
         "-h", "127.0.0.1", "-p", str(port), "-w", "1"],
        cwd=work, env=env, stdout=open(work / "serve.log", "wb"), stderr=subprocess.STDOUT,
        start_new_session=True)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 180
        while True:
            assert server.poll() is None, (work / "serve.log").read_text()[-3000:]
            try:
                with urllib.request.urlopen(base + "/ping", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, (work / "serve.log").read_text()[-3000:]
            time.sleep(1)
        x, y = raw_test_split()
        status, body = post(base + "/invocations", {"inputs": x.tolist()})
        assert status == 200, body
        accuracy = float((np.asarray(body["predictions"]) == y).mean())
        tag = float(version.tags["metric.test_accuracy"])
        print(f"mlflow models serve, raw rows POSTed: accuracy {accuracy:.4f}, "
              f"version {version.version} tag metric.test_accuracy {tag:.4f}")
        assert accuracy == pytest.approx(tag, abs=1e-12)
        status, body = post(base + "/invocations", {"inputs": x[:3].tolist(),
                                                    "params": {"output": "probabilities"}})
        assert status == 200 and np.asarray(body["predictions"]).shape == (3, 10), body
        # the same rows as ints and bools, in each JSON format: the same answers as floats
        ints = x.astype(np.int64)
        for payload in ({"inputs": ints.tolist()}, {"instances": ints.tolist()},
                        {"dataframe_split": {"columns": [str(i) for i in range(64)],
                                             "data": ints.tolist()}},
                        {"dataframe_split": {"data": x.astype(np.float32).tolist()}}):
            status, body = post(base + "/invocations", payload)
            assert status == 200, (list(payload), body)
            assert (np.asarray(body["predictions"]) == y).mean() == pytest.approx(tag, abs=1e-12)
        flags = (x > 8)
        answers = [post(base + "/invocations", {"inputs": rows})
                   for rows in (flags.tolist(), flags.astype(np.float64).tolist())]
        assert answers[0][0] == 200 and answers[0] == answers[1], answers
        # rows of the wrong width or not numbers: a schema error naming the contract, no traceback
        for rows in (x[:2, :10].tolist(), [["a"] * 64]):
            status, body = post(base + "/invocations", {"inputs": rows})
            assert status == 400, body
            message = body.get("message", "")
            assert "(-1, 64)" in message and "float64" in message, body
            assert "Traceback" not in message and "torch" not in message, body
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # the session started above, nothing else
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
