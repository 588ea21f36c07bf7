"""Structured pruning of a residual net end to end (real Ray, SQLite MLflow, real PyTorch):
a 1-trial digits sweep with `resnet` + Prune(structured=True) registers a model whose saved
tensors are physically smaller (channels cut by dependency group, dlopt.ml.residual) and that
`dlopt.load_model` and the MLflow pyfunc reload in a fresh process to the trial's predictions;
a real `mlflow models serve` on 127.0.0.1 answers raw rows with `dlopt.load_model`'s."""
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
from dlopt import Data, Experiment, Model, Optimizer, Prune, Resources, Search, Tracking
from dlopt.artifact.files import META, build_inference_model
from dlopt.driver.sweep import run
from dlopt.ml.models import build
from dlopt_testing import free_port

pytestmark = pytest.mark.integration

NAME = "it-resnet-structured"
MODEL = f"models:/{NAME}@champion"
VENV_BIN = str(Path(sys.executable).parent)


@pytest.fixture(scope="module")
def champion(tmp_path_factory):
    work = tmp_path_factory.mktemp("resnet-structured")
    uri = f"sqlite:///{work / 'mlflow.db'}"
    spec = Experiment(
        name=NAME, seed=0, epochs=1,
        data=Data(dataset="digits", batch_size=64, val_fraction=0.2, test_fraction=0.2),
        model=Model(arch="resnet"), optimizer=Optimizer(name="sgd", lr=0.05, momentum=0.9),
        compression=[Prune(sparsity=0.5, scope="layer", structured=True, schedule="one_shot")],
        search=Search(metric="val_accuracy", mode="max"), resources=Resources(num_workers=1),
        tracking=Tracking(experiment="it-resnet-structured", register_as=NAME),
    )
    result = run(spec, tracking_uri=uri, storage=str(work / "ray_results"), progress=False)
    from sklearn.datasets import load_digits

    np.save(work / "x.npy", load_digits().data[:100])  # raw rows: float64, 0..16
    return spec, result, uri, work


def _load_model_in_a_fresh_process(uri: str, work: Path, pyfunc: bool) -> tuple:
    code = (
        "import mlflow, numpy as np, torch, dlopt\n"
        f"x = np.load({str(work / 'x.npy')!r})\n"
        f"m = dlopt.load_model({MODEL!r})\n"
        "with torch.no_grad():\n"
        "    p = torch.softmax(m(torch.from_numpy(x)).float(), 1).numpy()\n"
        f"np.save({str(work / 'p.npy')!r}, p)\n"
    )
    if pyfunc:
        code += (f"q = np.asarray(mlflow.pyfunc.load_model({MODEL!r}).predict(x, params="
                 "{'output': 'probabilities'}))\n"
                 f"np.save({str(work / 'q.npy')!r}, q)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=work, env={**os.environ, "MLFLOW_TRACKING_URI": uri}, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return np.load(work / "p.npy"), (np.load(work / "q.npy") if pyfunc else None)


def test_pruned_resnet_registers_smaller_and_reloads_in_a_fresh_process(champion):
    spec, result, uri, work = champion
    ckpt = Path(result.best.checkpoint_path)
    meta = json.loads((ckpt / META).read_text())
    assert meta.get("shapes"), sorted(meta)
    pruned = build_inference_model(ckpt)
    dense = build(spec.model, tuple(meta["input_shape"]), meta["out_features"])
    n = sum(p.numel() for p in pruned.parameters())
    assert n < 0.5 * sum(p.numel() for p in dense.parameters())
    x = np.load(work / "x.npy")
    with torch.no_grad():
        here = torch.softmax(pruned(torch.from_numpy(x)).float(), 1).numpy()
    p, q = _load_model_in_a_fresh_process(uri, work, pyfunc=True)
    assert np.allclose(p, here, atol=1e-6)
    assert np.allclose(q, here, atol=1e-6)


def test_mlflow_models_serve_answers_raw_rows_like_load_model(champion):
    _, _, uri, work = champion
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
        here, _ = _load_model_in_a_fresh_process(uri, work, pyfunc=False)
        x = np.load(work / "x.npy")
        answers = {}
        for output in ("probabilities", None):
            payload = {"inputs": x.tolist(), **({"params": {"output": output}} if output else {})}
            req = urllib.request.Request(base + "/invocations", data=json.dumps(payload).encode(),
                                         headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=60) as resp:
                answers[output] = np.asarray(json.loads(resp.read())["predictions"])
        served = answers["probabilities"].astype(np.float32)
        assert served.shape == here.shape == (100, 10)
        assert np.allclose(served, here, atol=1e-6)
        assert np.array_equal(answers[None], here.argmax(1))  # labels by default
        assert len(set(here.argmax(1).tolist())) > 1  # a trained model: the check can fail
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # the session started above, nothing else
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
