"""Weight sharing end to end (real Ray, SQLite MLflow, real PyTorch): a digits sweep with
prune + share (k-means, 4 bits) registers a champion whose saved artifact is codebook +
entropy-coded indices; `dlopt.load_model` and `mlflow.pyfunc` in a fresh process and one
`mlflow models serve` on 127.0.0.1 all give the predictions the trial's own checkpoint gives
here, and the registered artifact's size is the logged model_bytes."""
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from dlopt import Data, Experiment, Model, Optimizer, Prune, Resources, Search, Share, Tracking
from dlopt.artifact import compact
from dlopt.artifact.files import build_inference_model
from dlopt.driver.sweep import run
from dlopt_testing import free_port
from safetensors import safe_open

pytestmark = pytest.mark.integration

NAME = "it-share-digits"
MODEL = f"models:/{NAME}@champion"
VENV_BIN = str(Path(sys.executable).parent)


@pytest.fixture(scope="module")
def champion(tmp_path_factory):
    work = tmp_path_factory.mktemp("share")
    uri = f"sqlite:///{work / 'mlflow.db'}"
    spec = Experiment(
        name=NAME, seed=0, epochs=4,
        data=Data(dataset="digits", batch_size=64, val_fraction=0.2, test_fraction=0.2),
        model=Model(hidden=[64]), optimizer=Optimizer(name="sgd", lr=0.05, momentum=0.9),
        compression=[Prune(sparsity=0.8, schedule="gradual", start_epoch=0, end_epoch=2),
                     Share(bits=4, finetune_epochs=2)],
        search=Search(metric="val_accuracy", mode="max"), resources=Resources(num_workers=1),
        tracking=Tracking(experiment="it-share", register_as=NAME),
    )
    result = run(spec, tracking_uri=uri, storage=str(work / "ray_results"), progress=False)
    return result, uri, work


def raw_rows() -> np.ndarray:
    from sklearn.datasets import load_digits

    return load_digits().data[:200]  # raw 0..16 rows, what the registered model takes


def expected(result) -> np.ndarray:
    """Probabilities from the trial's own final checkpoint, loaded here."""
    model = build_inference_model(Path(result.best.checkpoint_path))
    with torch.no_grad():
        return torch.softmax(model(torch.from_numpy(raw_rows())).float(), 1).numpy()


def test_shared_champion_is_small_and_reloads_identically_in_a_fresh_process(champion):
    result, uri, work = champion
    m = result.best.metrics
    saved = Path(result.best.checkpoint_path) / compact.WEIGHTS
    with safe_open(str(saved), framework="pt") as f:
        entries = json.loads(f.metadata()["dlopt"])
    assert {e["layout"] for e in entries["entries"].values()} >= {"codebook"}
    assert saved.stat().st_size == m["model_bytes"] and m["compression_ratio"] > 5
    assert m["share_bits"] == 4 and m["compressed_val_accuracy"] > 0.85
    np.save(work / "x.npy", raw_rows())
    code = (
        "import json, mlflow, numpy as np, torch, dlopt\n"
        f"x = np.load({str(work / 'x.npy')!r})\n"
        f"m = dlopt.load_model({MODEL!r})\n"
        "with torch.no_grad():\n"
        "    p = torch.softmax(m(torch.from_numpy(x)).float(), 1).numpy()\n"
        f"py = mlflow.pyfunc.load_model({MODEL!r})\n"
        "q = np.asarray(py.predict(x, params={'output': 'probabilities'}))\n"
        f"np.save({str(work / 'p.npy')!r}, p)\n"
        f"np.save({str(work / 'q.npy')!r}, q)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=work,
                         env={**os.environ, "MLFLOW_TRACKING_URI": uri}, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    here = expected(result)
    assert np.array_equal(np.load(work / "p.npy"), here)  # bit for bit
    pyfunc = np.load(work / "q.npy")
    assert np.array_equal(pyfunc.argmax(1), here.argmax(1))
    assert np.allclose(pyfunc, here, atol=1e-6)


def test_mlflow_models_serve_answers_with_the_shared_models_predictions(champion):
    result, uri, work = champion
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
        here = expected(result)
        body = json.dumps({"inputs": raw_rows().tolist(),
                           "params": {"output": "probabilities"}}).encode()
        req = urllib.request.Request(base + "/invocations", data=body,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as resp:
            served = np.asarray(json.loads(resp.read())["predictions"], dtype=np.float32)
        assert np.array_equal(served.argmax(1), here.argmax(1))
        assert np.allclose(served, here, atol=1e-6)
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # the session started above, nothing else
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
