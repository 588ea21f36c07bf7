"""Datasets as in-memory tensors, split identically on every worker and in every trial.

Small datasets (digits, synthetic) live as tensors: batching by index is faster than a
DataLoader for them and keeps each DDP rank's shard explicit. Splits depend only on
`Experiment.seed`, never on the trial or rank, so every trial of a sweep sees the same
validation and test examples.

The test split is withheld unless asked for: `load(spec, seed)` (what training and
selection call) returns `Datasets.test` as a guard that raises `TestSplitWithheld` on any
use; only the final report after selection (dlopt.registry.evaluation) calls `with_test=True`.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import replace
from functools import partial
from pathlib import Path

import numpy as np
import torch

from dlopt.ml import vision_data
from dlopt.ml.components import import_path
from dlopt.ml.splits import WITHHELD, Datasets, Split, split_indices
from dlopt.ml.transform import InputTransform, standardizer
from dlopt.spec import Data


def _digits(spec: Data, seed: int):
    from sklearn.datasets import load_digits

    bunch = load_digits()  # raw, as sklearn returns it: float64 pixel values 0..16
    return bunch.data, bunch.target.astype(np.int64), "classification"


def _synthetic(spec: Data, seed: int):
    if spec.task == "regression":
        from sklearn.datasets import make_regression

        x, y = make_regression(n_samples=spec.n_samples, n_features=spec.n_features,
                               noise=spec.noise, random_state=seed)
        return x.astype(np.float32), y.astype(np.float32)[:, None], "regression"
    from sklearn.datasets import make_classification

    x, y = make_classification(n_samples=spec.n_samples, n_features=spec.n_features,
                               n_informative=max(2, spec.n_features // 2), n_redundant=0,
                               n_classes=spec.n_classes, flip_y=min(spec.noise, 0.5),
                               random_state=seed)
    return x.astype(np.float32), y.astype(np.int64), "classification"


def _linear_1d(spec: Data, seed: int):
    """The textbook regression example: y = 2x + 1 + N(0, 0.5^2), x uniform in [0, 2]."""
    rng = np.random.default_rng(seed)
    n = spec.n_samples if spec.n_samples != 1000 else 100
    x = rng.uniform(0, 2, size=(n, 1)).astype(np.float32)
    y = (2 * x + 1 + rng.normal(0, 0.5, size=(n, 1))).astype(np.float32)
    return x, y, "regression"


# A built-in dataset's fixed scaling before standardization (part of the saved input
# transform): digits' pixel values 0..16 -> 0..1.
DIVISORS = {"digits": 16.0}
# Raw training rows saved with the model as its MLflow input example.
EXAMPLE_ROWS = 2


def cache_dir() -> Path:
    return Path(os.environ.get("DLOPT_CACHE_DIR") or Path.home() / ".cache" / "dlopt") / "datasets"


def _built_in(spec: Data, seed: int, builder):
    """A built-in dataset's arrays and split indices, from a per-machine cache when present.

    Why: building them imports scikit-learn (~1.5 s of CPU in a fresh process), and every
    Ray worker and trial process builds them again: the cache turns that into a ~5 ms read.
    Keyed by the data spec, the seed and the scikit-learn version (its split algorithm);
    written atomically, so concurrent workers at worst both build it.
    """
    from importlib.metadata import version

    key = json.dumps([spec.model_dump(mode="json"), seed, version("scikit-learn"), 2],
                     sort_keys=True)
    path = cache_dir() / f"{spec.dataset}-{hashlib.sha256(key.encode()).hexdigest()[:16]}.npz"
    try:
        with np.load(path, allow_pickle=False) as f:
            return (f["x"], f["y"], str(f["task"]), f["train"], f["val"], f["test"])
    except (OSError, KeyError, ValueError):
        pass  # not cached yet (or unreadable): build it
    x, y, task = builder(spec, seed)
    train, val, test = split_indices(y, spec.val_fraction, spec.test_fraction, seed,
                                     task == "classification")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.stem}-{os.getpid()}.npz")
        np.savez(tmp, x=x, y=y, task=np.array(task), train=train, val=val, test=test)
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only home: no cache, same data
    return x, y, task, train, val, test


def from_arrays(arrays, spec: Data, seed: int, cached: bool = True) -> Datasets:
    """A dataset given as arrays, `arrays(spec, seed) -> (x, y, task)`: split by the seed,
    classification inputs standardized with training statistics only (no peeking at
    val/test); the fitted transform is saved with the model (dlopt.ml.transform)."""
    if cached:
        x, y, task, train, val, test = _built_in(spec, seed, arrays)
    else:
        x, y, task = arrays(spec, seed)
        train, val, test = split_indices(y, spec.val_fraction, spec.test_fraction, seed,
                                         task == "classification")
    classification = task == "classification"
    raw = x
    divisor = DIVISORS.get(spec.dataset, 1.0)
    transform = (standardizer(raw[train], divisor) if classification
                 else InputTransform(divisor))
    x = transform.apply(raw)

    def part(i, source=x):
        return Split(torch.from_numpy(source[i]), torch.from_numpy(y[i]))

    has_test = len(test) > 0
    return Datasets(
        train=part(train), val=part(val), test=part(test) if has_test else None, task=task,
        num_classes=int(y.max()) + 1 if classification else 0,
        input_shape=tuple(x.shape[1:]),
        out_features=int(y.max()) + 1 if classification else y.shape[1],
        transform=transform, raw_test=part(test, raw) if has_test else None,
        raw_example=raw[train[:EXAMPLE_ROWS]],
    )


# The dataset catalog (docs/architecture.md, "Catalogs"): name -> loader(spec.Data, seed)
# returning every split; `load` withholds the test split. The image datasets' readers live
# in dlopt.ml.vision_data.
DATASETS = {
    "digits": partial(from_arrays, _digits),
    "synthetic": partial(from_arrays, _synthetic),
    "linear_1d": partial(from_arrays, _linear_1d),
    "mnist": partial(vision_data.from_files, vision_data.mnist),
    "fashion_mnist": partial(vision_data.from_files, vision_data.fashion_mnist),
    "cifar10": partial(vision_data.from_files, vision_data.cifar10),
}


def load(spec: Data, seed: int, with_test: bool = False) -> Datasets:
    """Train and validation splits; the test split too only `with_test` (see module doc).
    A custom dataset is named by import path "pkg.module:fn", with
    fn(spec.Data, seed) -> (x, y, "classification"|"regression").
    The switch between the two data paths: a `spec.source` is streamed (dlopt.ml.streams,
    batch by batch, never whole in memory; the built-in image datasets too, as
    `Source(format="mnist", path=ROOT)`); everything else is in-memory tensors."""
    if spec.source is not None:
        from dlopt.ml import streams  # the streamed path (docs/architecture.md, "Streamed data sources")

        return streams.load(spec, seed, with_test)
    loader = DATASETS.get(spec.dataset)
    if loader is None and ":" in spec.dataset:
        loader = partial(from_arrays, import_path(spec.dataset), cached=False)
    if loader is None:
        raise ValueError(f"unknown dataset {spec.dataset!r}")
    datasets = loader(spec, seed)
    if with_test:
        return datasets
    return replace(datasets, test=WITHHELD, raw_test=WITHHELD)


def shard_batches(n: int, batch_size: int, rank: int, world: int, seed: int, epoch: int,
                  shuffle: bool = True):
    """Index batches of this rank's shard for one epoch.

    DistributedSampler does the sharding (padding so every rank takes the same number of
    steps, which DDP's collective all-reduce requires); batching by index avoids a
    DataLoader's per-batch overhead on in-memory tensors.
    """
    from torch.utils.data import DistributedSampler

    sampler = DistributedSampler(range(n), num_replicas=world, rank=rank, shuffle=shuffle,
                                 seed=seed, drop_last=False)
    sampler.set_epoch(epoch)
    order = torch.tensor(list(sampler), dtype=torch.long)
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
