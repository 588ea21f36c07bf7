"""Streamed sources on a real Ray cluster (Ray Data -> Ray Train / the in-trial loop) with a
real MLflow SQLite store: one sweep per source kind trains and registers; a 2-worker DDP
TorchTrainer built the way a trial builds it sees every training row exactly once per epoch
with equal steps per rank; a model registered from an image folder (read by each rank's own
DataLoader, and through Ray Data) scores raw images read from the folder through
`mlflow.pyfunc.load_model` in a fresh process, as tagged; a 2-worker DDP sweep over an image
folder read by the rank loader sees each training image once per epoch, reshuffled."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import source_fixtures as fx

from dlopt import Data, Experiment, Model, Optimizer, Resources, Search, Tracking
from dlopt.driver.sweep import run
from dlopt.spec import Source

TESTS = Path(__file__).resolve().parents[1]


@pytest.fixture
def importable_fixtures(monkeypatch):
    """Ray's workers import the function source from tests/ (they inherit PYTHONPATH)."""
    monkeypatch.setenv("PYTHONPATH", f"{TESTS}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")


def sweep(work: Path, name: str, source: Source, workers: int = 1, epochs: int = 2, **model):
    spec = Experiment(
        name=name, seed=0, epochs=epochs,
        data=Data(batch_size=32, source=source, val_fraction=0.2, test_fraction=0.2),
        model=Model(**({"hidden": [32]} | model)), optimizer=Optimizer(lr=0.02),
        search=Search(algorithm="random", num_samples=1),
        resources=Resources(num_workers=workers, max_failures=0),
        tracking=Tracking(experiment=name, register_as=f"{name}-model"))
    uri = f"sqlite:///{work / 'mlflow.db'}"
    return run(spec, tracking_uri=uri, storage=str(work / "ray_results"), progress=False), uri


@pytest.mark.parametrize("kind", ["parquet", "numpy", "hf", "function", "images"])
def test_each_source_kind_trains_and_registers(kind, tmp_path, importable_fixtures):
    source = {
        "parquet": lambda: Source(format="parquet", path=str(fx.parquet(tmp_path / "d"))),
        "numpy": lambda: Source(format="numpy", path=str(fx.numpy_shards(tmp_path / "d"))),
        "hf": lambda: Source(format="hf", path=str(fx.hf(tmp_path / "d")), features="x"),
        "function": lambda: Source(format="function", function="source_fixtures:ray_rows",
                                   num_classes=4),
        # 1 worker: the rank loader's DataLoader process forked inside the Tune trial
        "images": lambda: Source(format="images", path=str(fx.images(tmp_path / "d"))),
    }[kind]()
    result, _ = sweep(tmp_path, f"it-src-{kind}", source, epochs=3)
    (trial,) = result.trials
    assert trial.status == "ok", trial
    assert trial.metrics["val_accuracy"] > 0.5  # 4 classes (images: 3): chance <= 1/3
    (registered,) = result.registered
    if kind == "function":  # no files to read outside Ray: no test report
        return
    assert registered.test_metrics["test_accuracy"] > 0.5


def test_ddp_shards_see_every_training_row_once_per_epoch(tmp_path):
    """The datasets and DataConfig a multi-worker trial hands its TorchTrainer
    (dlopt.runtime.trial.stream_config), read on each rank by dlopt's own worker code."""
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from dlopt.runtime import streaming, trial

    root = fx.parquet_with_ids(tmp_path / "ids", train=200, val=40)
    spec = Experiment(name="ids", seed=0, data=Data(batch_size=16, source=Source(
        format="parquet", path=str(root), features="id")),
        resources=Resources(num_workers=2))
    out = tmp_path / "seen"
    out.mkdir()

    def loop(config):
        import ray.train

        from dlopt.runtime.worker import shard_datasets

        rank = ray.train.get_context().get_world_rank()
        data = shard_datasets(spec, config)
        for epoch in range(2):
            ids = [x.reshape(-1).tolist() for x, _ in data.train.batches(16, epoch)]
            (out / f"{rank}-{epoch}.json").write_text(json.dumps(ids))

    ray.init(num_cpus=4, include_dashboard=False)
    try:
        stream, datasets = trial.stream_config(spec)
        TorchTrainer(loop, train_loop_config={"stream": stream},
                     scaling_config=ScalingConfig(num_workers=2), datasets=datasets,
                     dataset_config=streaming.data_config(spec),
                     run_config=RunConfig(storage_path=str(tmp_path / "ray"))).fit()
    finally:
        ray.shutdown()
    for epoch in range(2):
        batches = [json.loads((out / f"{r}-{epoch}.json").read_text()) for r in range(2)]
        seen = sorted(i for rank in batches for b in rank for i in b)
        assert seen == list(range(200)), epoch  # each training row once, no val row
        assert len(batches[0]) == len(batches[1])  # the same number of steps on every rank
    assert stream["shape"]["rows"]["train"] == 200


PREDICT = """
import json, sys
from pathlib import Path
import numpy as np
from PIL import Image
import mlflow
root, name = Path(sys.argv[1]), sys.argv[2]
classes = sorted(p.name for p in (root / "train").iterdir())
files = sorted((root / "test").glob("*/*.png"))
x = np.stack([np.asarray(Image.open(f)).transpose(2, 0, 1) for f in files])  # raw uint8 CHW
y = np.array([classes.index(f.parent.name) for f in files])
model = mlflow.pyfunc.load_model(f"models:/{name}@champion")
print(json.dumps({"accuracy": float((model.predict(x) == y).mean()), "n": len(y)}))
"""


@pytest.mark.parametrize("reader", ["auto", "ray_data"])
def test_image_folder_ddp_sweep_and_pyfunc_on_raw_images(reader, tmp_path):
    """"auto": each rank's own DataLoader (dlopt.ml.rank_loader, its worker processes forked
    inside the Ray Train worker); "ray_data": Ray Data shards, as every other format."""
    root = fx.images(tmp_path / "img", per_class=20, splits=("train", "val", "test"))
    name = f"it-src-images-{reader}"
    result, uri = sweep(tmp_path, name, Source(format="images", path=str(root), reader=reader),
                        workers=2, epochs=3, arch="cnn")
    (trial,) = result.trials
    assert trial.status == "ok" and trial.metrics["val_accuracy"] > 0.6
    (registered,) = result.registered
    tag = registered.test_metrics["test_accuracy"]
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
    done = subprocess.run([sys.executable, "-c", PREDICT, str(root), f"{name}-model"], env=env,
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    got = json.loads(done.stdout.splitlines()[-1])
    assert got["n"] == 60 and got["accuracy"] == pytest.approx(tag, abs=1e-12) and tag > 0.6


def test_rank_loader_ddp_reads_each_training_image_once_per_epoch(tmp_path, monkeypatch):
    """A real 2-worker DDP sweep over an image folder read by each rank's own DataLoader
    (dlopt.ml.rank_loader, a loader process forked inside each Ray Train worker): the model
    sees each training image exactly once per epoch across the ranks (its first pixel is its
    id), no validation image, the same steps on each rank, and a new order each epoch."""
    from dlopt.ml import streams

    train, val, epochs = 150, 30, 2
    root = fx.id_images(tmp_path / "ids", train, val)
    seen = tmp_path / "seen"
    seen.mkdir()
    monkeypatch.setenv(fx.RECORD_DIR, str(seen))
    monkeypatch.setenv("PYTHONPATH", f"{TESTS}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    source = Source(format="images", path=str(root), loader_workers=1)
    result, _ = sweep(tmp_path, "it-src-rank-loader", source, workers=2, epochs=epochs,
                      arch="source_fixtures:recording_mlp", hidden=[16])
    (trial,) = result.trials
    assert trial.status == "ok", trial

    transform = streams.load(Data(source=source), seed=0).transform  # the statistics it used
    mean, std = float(transform.mean[0].reshape(-1)[0]), float(transform.std[0].reshape(-1)[0])
    per_rank = {}
    for path in sorted(seen.glob("*.jsonl")):
        rank = int(path.name.split("-")[0])
        assert rank not in per_rank, "one process per rank (no restart)"
        per_rank[rank] = [[round((row[0][0] * std + mean) * 255) for row in json.loads(line)]
                          for line in path.read_text().splitlines()]
    assert sorted(per_rank) == [0, 1]
    steps = {len(b) for b in per_rank.values()}
    assert len(steps) == 1  # the same number of steps on every rank (DDP's collectives)
    per_epoch = steps.pop() // epochs
    orders = []
    for epoch in range(epochs):
        rows = [i for batches in per_rank.values()
                for b in batches[epoch * per_epoch:(epoch + 1) * per_epoch] for i in b]
        assert sorted(rows) == list(range(train)), epoch  # each training image once, no val
        orders.append(rows)
    assert orders[0] != orders[1]  # reshuffled each epoch
