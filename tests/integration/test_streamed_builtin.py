"""The built-in datasets and FSDP through the streamed path, on a real Ray cluster with a real
MLflow SQLite store (docs/architecture.md, "Streamed data sources").

- A generated MNIST-format folder (the four IDX files, torchvision's layout) streamed as
  `Source(format="mnist", path=ROOT)`: a short sweep trains a cnn from row ranges of the IDX
  files, registers it, and the registered pyfunc scores the raw uint8 images of the official
  test file exactly as its test tag says.
- A 2-worker FSDP trial over a small .npy source: a custom arch records the first input
  column of every training batch on each rank (the rows' ids, standardized), so the test sees
  each training row exactly once per epoch across the ranks, the same steps on each, and no
  validation or test row; the trial registers.
"""
import json
import os
from pathlib import Path

import numpy as np
import pytest
import source_fixtures as fx

from dlopt import Data, Experiment, Model, Optimizer, Resources, Search, Tracking
from dlopt.driver.sweep import run
from dlopt.spec import Source

TESTS = Path(__file__).resolve().parents[1]


def sweep(work: Path, name: str, source: Source, epochs: int, resources: Resources,
          batch_size: int = 32, **model):
    spec = Experiment(
        name=name, seed=0, epochs=epochs,
        data=Data(batch_size=batch_size, source=source, val_fraction=0.2),
        model=Model(**model), optimizer=Optimizer(name="adam", lr=0.005),
        search=Search(algorithm="random", num_samples=1), resources=resources,
        tracking=Tracking(experiment=name, register_as=f"{name}-model", report_every=1))
    uri = f"sqlite:///{work / 'mlflow.db'}"
    return run(spec, tracking_uri=uri, storage=str(work / "ray_results"), progress=False), uri


def test_mnist_folder_streams_trains_and_registers_a_model_for_raw_images(tmp_path):
    import mlflow

    from dlopt.ml.source_files import MNIST_FILES
    from dlopt.ml.vision_data import read_idx

    root = fx.mnist_folder(tmp_path / "mnist", train=600, test=100)
    name = "it-src-mnist"
    result, uri = sweep(tmp_path, name, Source(format="mnist", path=str(root)), epochs=3,
                        resources=Resources(num_workers=1, max_failures=0), arch="cnn")
    (trial,) = result.trials
    assert trial.status == "ok", trial
    assert trial.metrics["val_accuracy"] > 0.6  # 10 classes: chance is 0.1
    (registered,) = result.registered
    tag = registered.test_metrics["test_accuracy"]
    raw = root / "MNIST" / "raw"
    x = read_idx(raw / MNIST_FILES["test_x"])[:, None]  # raw uint8 N x 1 x 28 x 28
    y = read_idx(raw / MNIST_FILES["test_y"]).astype(np.int64)
    before = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        model = mlflow.pyfunc.load_model(f"models:/{name}-model@champion")
        accuracy = float((np.asarray(model.predict(x)) == y).mean())
    finally:
        mlflow.set_tracking_uri(before)
    assert len(y) == 100 and accuracy == pytest.approx(tag, abs=1e-12) and tag > 0.6


def test_fsdp_over_a_source_sees_each_training_row_once_per_epoch_and_registers(
        tmp_path, monkeypatch):
    train, val, test, epochs, workers = 200, 40, 40, 2, 2
    root = fx.numpy_with_ids(tmp_path / "ids", train, val, test)
    seen = tmp_path / "seen"
    seen.mkdir()
    # Ray's workers inherit the driver's environment: the record folder, and tests/ on the
    # path for the custom arch
    monkeypatch.setenv(fx.RECORD_DIR, str(seen))
    monkeypatch.setenv("PYTHONPATH", f"{TESTS}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    result, _ = sweep(tmp_path, "it-src-fsdp", Source(format="numpy", path=str(root)),
                      epochs=epochs, batch_size=16,
                      resources=Resources(num_workers=workers, strategy="fsdp", max_failures=0),
                      arch="source_fixtures:recording_mlp", hidden=[32])
    (trial,) = result.trials
    assert trial.status == "ok", trial
    assert trial.metrics["shard_fraction_max"] == pytest.approx(0.5, abs=0.05)
    (registered,) = result.registered
    assert 0 <= registered.test_metrics["test_accuracy"] <= 1

    # the model receives standardized rows: undo it with the training ids' statistics (as
    # dlopt.ml.streams.fit_transform computes them)
    ids = np.arange(train, dtype=np.float64)
    mean, std = ids.mean(), np.sqrt(max((ids * ids).mean() - ids.mean() ** 2, 0.0))
    per_rank = {}
    for path in sorted(seen.glob("*.jsonl")):
        rank = int(path.name.split("-")[0])
        assert rank not in per_rank, "one process per rank (no restart)"
        per_rank[rank] = [np.rint(np.asarray(json.loads(line)) * std + mean).astype(int).tolist()
                          for line in path.read_text().splitlines()]
    assert sorted(per_rank) == list(range(workers))
    steps = {len(b) for b in per_rank.values()}
    assert len(steps) == 1  # the same number of steps on every rank (FSDP's collectives)
    per_epoch = steps.pop() // epochs
    for epoch in range(epochs):
        rows = sorted(i for batches in per_rank.values()
                      for b in batches[epoch * per_epoch:(epoch + 1) * per_epoch] for i in b)
        assert rows == list(range(train)), epoch  # each training row once; no val/test row
