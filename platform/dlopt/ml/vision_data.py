"""MNIST, Fashion-MNIST and CIFAR-10 read from a local copy in their standard raw formats.

Catalogued by name in `dlopt.ml.data.DATASETS` (docs/architecture.md, "Catalogs").

Why not torchvision.datasets: torchvision's PyPI wheels do not work with the pinned
torch 2.13 here, and these formats are simple enough to read with numpy:
- MNIST / Fashion-MNIST: the IDX files as published (and as torchvision stores them
  under ROOT/MNIST/raw, ROOT/FashionMNIST/raw), plain or .gz;
- CIFAR-10: the *binary* version (cifar-10-batches-bin: 1 label byte + 3072 pixel bytes
  per record). The "python version" is a set of pickles; unpickling a file runs code, so
  dlopt does not load it.
Nothing is downloaded: these machines have no network, and a download needs torchvision.

Splits: validation is a seeded stratified `val_fraction` of the official training set;
test is the official test set. Pixels are scaled to [0, 1] and standardized per channel
with training-split statistics.

This is the in-memory path (`Data(dataset="mnist", root=ROOT)`: every worker reads the whole
set, the fastest for data this size). The same files under the same root can be streamed
instead, `Data(source=Source(format="mnist", path=ROOT))`: Ray Data reads row ranges of them,
sharded per worker (dlopt.ml.sources; docs/architecture.md, "Streamed data sources").
"""
from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import torch

from dlopt.ml import source_files as files
from dlopt.ml.splits import Datasets, Split, split_indices
from dlopt.ml.transform import standardizer
from dlopt.spec import Data

# The standard files' names and places, shared with the streamed path
# (`Source(format="mnist", path=ROOT)`, dlopt.ml.sources; docs/architecture.md, "Streamed data
# sources"): both read the same files under the same root.
MNIST_FILES, IDX_FOLDERS = files.MNIST_FILES, files.IDX_FOLDERS
CIFAR_DIR, CIFAR_TRAIN, CIFAR_TEST = files.CIFAR_DIR, files.CIFAR_TRAIN, files.CIFAR_TEST
CIFAR_RECORD = files.CIFAR_RECORD


class DatasetNotFound(FileNotFoundError):
    pass


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (LeCun's MNIST format): 0, 0, dtype code, ndim, big-endian int32 dims, data."""
    raw = Path(path).read_bytes()
    if str(path).endswith(".gz"):
        raw = gzip.decompress(raw)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte IDX file")
    ndim = raw[3]
    dims = np.frombuffer(raw, dtype=">i4", count=ndim, offset=4)
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise ValueError(f"{path}: header says {tuple(dims)} but holds {data.size} bytes")
    return data.reshape(tuple(int(d) for d in dims))


def _located(dataset: str, root: Path) -> dict:
    """The standard files of `dataset` under `root` (dlopt.ml.source_files.built_in_files),
    or DatasetNotFound naming what is missing and where dlopt looked."""
    import pyarrow.fs as pafs

    found, folders = files.built_in_files(pafs.LocalFileSystem(), str(root), dataset)
    if any(p is None for p in found.values()):
        raise DatasetNotFound(f"data.root: {files.missing_files(dataset, str(root), found, folders)}")
    return found


def load_idx_dataset(dataset: str, root: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(train_x N x 1 x 28 x 28 uint8, train_y, test_x, test_y) from the IDX files."""
    arrays = {k: read_idx(Path(p)) for k, p in _located(dataset, root).items()}
    return (arrays["train_x"][:, None], arrays["train_y"].astype(np.int64),
            arrays["test_x"][:, None], arrays["test_y"].astype(np.int64))


def read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    raw = np.fromfile(path, dtype=np.uint8)
    if raw.size % CIFAR_RECORD:
        raise ValueError(f"{path}: size {raw.size} is not a multiple of {CIFAR_RECORD}-byte records")
    records = raw.reshape(-1, CIFAR_RECORD)
    return records[:, 1:].reshape(-1, 3, 32, 32), records[:, 0].astype(np.int64)


def cifar10(root: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """CIFAR-10's binary batches under `root`."""
    found = _located("cifar10", root)
    train = [read_cifar_batch(Path(found[f])) for f in CIFAR_TRAIN]
    tx, ty = read_cifar_batch(Path(found[CIFAR_TEST[0]]))
    return np.concatenate([x for x, _ in train]), np.concatenate([y for _, y in train]), tx, ty


def mnist(root: Path):
    """MNIST's IDX files under `root` (the reader `DATASETS["mnist"]` uses)."""
    return load_idx_dataset("mnist", root)


def fashion_mnist(root: Path):
    """Fashion-MNIST's IDX files under `root`."""
    return load_idx_dataset("fashion_mnist", root)


def from_files(read, spec: Data, seed: int) -> Datasets:
    """Every split of an image dataset, `read(root) -> (train_x, train_y, test_x, test_y)`
    (the loader `dlopt.ml.data.DATASETS` names; its test split is the official one)."""
    if spec.download:
        raise RuntimeError(
            f"data.download=True: dlopt cannot download {spec.dataset} (that needs torchvision, "
            "which does not work with the pinned torch, and network access); copy the raw files "
            "under data.root and set download=False")
    if spec.root is None:
        raise DatasetNotFound(f"{spec.dataset}: set data.root to the folder holding the raw files")
    root = Path(spec.root).expanduser().resolve()
    train_x, train_y, test_x, test_y = read(root)
    train, val, _ = split_indices(train_y, spec.val_fraction, 0.0, seed, stratify=True)
    # [0, 1] pixels, then per-channel standardization with training statistics only; the
    # fitted transform is saved with the model (dlopt.ml.transform)
    transform = standardizer(train_x[train], 255.0, axis=(0, 2, 3), add_std=1e-6)

    def part(x: np.ndarray, y: np.ndarray) -> Split:
        return Split(torch.from_numpy(transform.apply(x)), torch.from_numpy(y))

    num_classes = int(train_y.max()) + 1
    raw_test = Split(torch.from_numpy(np.array(test_x)), torch.from_numpy(test_y))
    return Datasets(train=part(train_x[train], train_y[train]),
                    val=part(train_x[val], train_y[val]),
                    test=part(test_x, test_y), task="classification", num_classes=num_classes,
                    input_shape=tuple(train_x.shape[1:]), out_features=num_classes,
                    transform=transform, raw_test=raw_test, raw_example=train_x[train[:2]])
