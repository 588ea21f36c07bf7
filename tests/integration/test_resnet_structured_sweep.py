"""Structured pruning of a residual net end to end (real Ray, SQLite MLflow, real PyTorch):
a 1-trial digits sweep with `resnet` + Prune(structured=True) registers a model whose saved
tensors are physically smaller (channels cut by dependency group, dlopt.ml.residual) and that
`dlopt.load_model` and the MLflow pyfunc reload in a fresh process to the trial's predictions."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from dlopt import Data, Experiment, Model, Optimizer, Prune, Resources, Search, Tracking
from dlopt.artifact.files import META, build_inference_model
from dlopt.driver.sweep import run
from dlopt.ml.models import build

pytestmark = pytest.mark.integration

NAME = "it-resnet-structured"
MODEL = f"models:/{NAME}@champion"


def test_pruned_resnet_registers_smaller_and_reloads_in_a_fresh_process(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    spec = Experiment(
        name=NAME, seed=0, epochs=1,
        data=Data(dataset="digits", batch_size=64, val_fraction=0.2, test_fraction=0.2),
        model=Model(arch="resnet"), optimizer=Optimizer(name="sgd", lr=0.05, momentum=0.9),
        compression=[Prune(sparsity=0.5, scope="layer", structured=True, schedule="one_shot")],
        search=Search(metric="val_accuracy", mode="max"), resources=Resources(num_workers=1),
        tracking=Tracking(experiment="it-resnet-structured", register_as=NAME),
    )
    result = run(spec, tracking_uri=uri, storage=str(tmp_path / "ray_results"), progress=False)
    ckpt = Path(result.best.checkpoint_path)
    meta = json.loads((ckpt / META).read_text())
    assert meta.get("shapes"), sorted(meta)
    pruned = build_inference_model(ckpt)
    dense = build(spec.model, tuple(meta["input_shape"]), meta["out_features"])
    n = sum(p.numel() for p in pruned.parameters())
    assert n < 0.5 * sum(p.numel() for p in dense.parameters())
    from sklearn.datasets import load_digits

    x = load_digits().data[:100]
    np.save(tmp_path / "x.npy", x)
    with torch.no_grad():
        here = torch.softmax(pruned(torch.from_numpy(x)).float(), 1).numpy()
    code = (
        "import mlflow, numpy as np, torch, dlopt\n"
        f"x = np.load({str(tmp_path / 'x.npy')!r})\n"
        f"m = dlopt.load_model({MODEL!r})\n"
        "with torch.no_grad():\n"
        "    p = torch.softmax(m(torch.from_numpy(x)).float(), 1).numpy()\n"
        f"q = np.asarray(mlflow.pyfunc.load_model({MODEL!r}).predict(x, params={{'output': 'probabilities'}}))\n"
        f"np.save({str(tmp_path / 'p.npy')!r}, p)\n"
        f"np.save({str(tmp_path / 'q.npy')!r}, q)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=tmp_path, env={**os.environ, "MLFLOW_TRACKING_URI": uri}, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert np.allclose(np.load(tmp_path / "p.npy"), here, atol=1e-6)
    assert np.allclose(np.load(tmp_path / "q.npy"), here, atol=1e-6)
