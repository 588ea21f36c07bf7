"""Small generated files for the streamed sources (dlopt.ml.sources): Parquet, an image
folder, .npy shards and a Hugging Face `save_to_disk` dataset, each with a learnable label
and a known number of rows. A uniquely named helper module (see dlopt_testing)."""
from pathlib import Path

import numpy as np

FEATURES = 8


def rows(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Tabular rows whose label is the sign of the first two features (4 classes)."""
    x = np.random.default_rng(seed).normal(size=(n, FEATURES)).astype(np.float32)
    y = ((x[:, 0] > 0).astype(np.int64) * 2 + (x[:, 1] > 0)).astype(np.int64)
    return x, y


def parquet(root: Path, n: int = 300, files: int = 3, row_group: int = 40, seed: int = 0) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    root.mkdir(parents=True, exist_ok=True)
    x, y = rows(n, seed)
    for i, part in enumerate(np.array_split(np.arange(n), files)):
        table = pa.table({**{f"f{j}": x[part, j] for j in range(FEATURES)}, "label": y[part]})
        pq.write_table(table, root / f"part-{i}.parquet", row_group_size=row_group)
    return root


def numpy_shards(root: Path, n: int = 300, shards: int = 3, seed: int = 0) -> Path:
    x, y = rows(n, seed)
    (root / "x").mkdir(parents=True, exist_ok=True)
    (root / "y").mkdir(parents=True, exist_ok=True)
    for i, part in enumerate(np.array_split(np.arange(n), shards)):
        np.save(root / "x" / f"shard-{i}.npy", x[part])
        np.save(root / "y" / f"shard-{i}.npy", y[part])
    return root


def hf(root: Path, n: int = 300, seed: int = 0) -> Path:
    """A `datasets.Dataset` with a list feature and a ClassLabel, saved with save_to_disk."""
    import datasets

    x, y = rows(n, seed)
    features = datasets.Features({"x": datasets.Sequence(datasets.Value("float32")),
                                  "label": datasets.ClassLabel(names=["a", "b", "c", "d"])})
    ds = datasets.Dataset.from_dict({"x": x.tolist(), "label": y.tolist()}, features=features)
    ds.save_to_disk(str(root))
    return root


CLASSES = ("cat", "dog", "eel")


def image(label: int, rng, size: int = 8) -> np.ndarray:
    """An RGB image (H, W, 3) whose mean brightness says its class."""
    return (rng.integers(0, 80, size=(size, size, 3)) + label * 80).astype(np.uint8)


def images(root: Path, per_class: int = 30, size: int = 8, seed: int = 0,
           splits: tuple = ()) -> Path:
    """One subfolder per class of PNGs (under each of `splits`' folders when given)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split in splits or ("",):
        for label, name in enumerate(CLASSES):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                Image.fromarray(image(label, rng, size)).save(folder / f"{i:04d}.png")
    return root


def ray_rows(seed: int):
    """A function source (Source(format="function", function="source_fixtures:ray_rows")):
    the tabular rows as a ray.data.Dataset, split by dlopt by content hash."""
    import ray.data

    x, y = rows(300, seed=7)
    return ray.data.from_items([{"x": x[i].tolist(), "label": int(y[i])} for i in range(len(y))])


def parquet_with_ids(root: Path, train: int, val: int) -> Path:
    """train.parquet and val.parquet (the source's own splits) whose `id` column numbers the
    rows, so a reader can count which it saw."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    root.mkdir(parents=True, exist_ok=True)
    x, y = rows(train + val)
    for name, part in (("train", slice(0, train)), ("val", slice(train, train + val))):
        ids = np.arange(train + val, dtype=np.float32)[part]
        pq.write_table(pa.table({"id": ids, "f0": x[part, 0], "label": y[part]}),
                       root / f"{name}.parquet", row_group_size=16)
    return root


def write_idx(path: Path, a: np.ndarray, gz: bool = False) -> Path:
    """An unsigned-byte IDX file (MNIST's format): 0, 0, 0x08, ndim, big-endian dims, data."""
    import gzip

    raw = bytes([0, 0, 8, a.ndim]) + np.asarray(a.shape, dtype=">i4").tobytes() \
        + np.ascontiguousarray(a, dtype=np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        path = path.with_name(path.name + ".gz")
        raw = gzip.compress(raw)
    path.write_bytes(raw)
    return path


def digit_images(n: int, seed: int = 0, channels: int = 1, size: int = 28,
                 classes: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images (n, channels, size, size) whose class is the row band that is bright."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % classes
    rng.shuffle(y)
    x = rng.integers(0, 60, size=(n, channels, size, size)).astype(np.uint8)
    band = size // classes
    for i, label in enumerate(y):
        x[i, :, label * band:(label + 1) * band] += 180
    return x, y.astype(np.int64)


def mnist_folder(root: Path, train: int = 300, test: int = 100, folder: str = "MNIST/raw",
                 gz: bool = False, seed: int = 0) -> Path:
    """The four MNIST IDX files under root/folder (torchvision's layout by default)."""
    from dlopt.ml.source_files import MNIST_FILES

    x, y = digit_images(train + test, seed)
    where = root / folder if folder else root
    for split, part in (("train", slice(0, train)), ("test", slice(train, None))):
        write_idx(where / MNIST_FILES[f"{split}_x"], x[part, 0], gz)
        write_idx(where / MNIST_FILES[f"{split}_y"], y[part], gz)
    return root


def cifar_folder(root: Path, per_batch: int = 60, test: int = 60, seed: int = 0) -> Path:
    """CIFAR-10's binary version under root/cifar-10-batches-bin: 5 training batches and a
    test batch of records (1 label byte + 3 x 32 x 32 pixel bytes)."""
    from dlopt.ml.source_files import CIFAR_DIR, CIFAR_TEST, CIFAR_TRAIN

    x, y = digit_images(5 * per_batch + test, seed, channels=3, size=32)
    folder = root / CIFAR_DIR
    folder.mkdir(parents=True, exist_ok=True)
    starts = [i * per_batch for i in range(5)] + [5 * per_batch]
    for name, start, n in zip(CIFAR_TRAIN + CIFAR_TEST, starts, [per_batch] * 5 + [test]):
        part = slice(start, start + n)
        records = np.concatenate([y[part, None].astype(np.uint8),
                                  x[part].reshape(n, -1)], axis=1)
        (folder / name).write_bytes(records.tobytes())
    return root


def numpy_with_ids(root: Path, train: int, val: int, test: int, shards: int = 2) -> Path:
    """.npy shards in the source's own train/ val/ test/ folders; column 0 of x numbers the
    rows (train 0..train-1, then val, then test), the other columns are `rows`' features."""
    x, y = rows(train + val + test)
    x = np.concatenate([np.arange(len(y), dtype=np.float32)[:, None], x], axis=1)
    bounds = {"train": (0, train), "val": (train, train + val),
              "test": (train + val, train + val + test)}
    for split, (lo, hi) in bounds.items():
        for sub in ("x", "y"):
            (root / split / sub).mkdir(parents=True, exist_ok=True)
        for i, part in enumerate(np.array_split(np.arange(lo, hi), shards)):
            np.save(root / split / "x" / f"shard-{i}.npy", x[part])
            np.save(root / split / "y" / f"shard-{i}.npy", y[part])
    return root


def id_images(root: Path, train: int, val: int, size: int = 8) -> Path:
    """train/ and val/ class folders of RGB PNGs whose first pixel (channel 0, row 0, col 0)
    is the image's id: 0..train-1 in train/, then val's (ids < 256)."""
    from PIL import Image

    assert train + val <= 256
    rng = np.random.default_rng(0)
    for i in range(train + val):
        split, label = ("train" if i < train else "val"), i % len(CLASSES)
        pixels = image(label, rng, size)
        pixels[0, 0, 0] = i
        folder = root / split / CLASSES[label]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(folder / f"{i:04d}.png")
    return root


RECORD_DIR = "DLOPT_TEST_RECORD_DIR"


def recording_mlp(spec, input_shape, out_features):
    """A custom arch, `Model(arch="source_fixtures:recording_mlp")`: dlopt's MLP whose
    training forwards (train mode, gradients on) append the first input column of their batch,
    as the model receives it, to $DLOPT_TEST_RECORD_DIR/<rank>-<pid>.jsonl (one line a batch)."""
    import json
    import os

    import torch

    from dlopt.ml.models import MODELS

    net = MODELS["mlp"](spec, input_shape, out_features)

    class Recording(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = net

        def forward(self, x):
            where = os.environ.get(RECORD_DIR)
            if where and self.training and torch.is_grad_enabled():
                rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
                with open(Path(where) / f"{rank}-{os.getpid()}.jsonl", "a") as f:
                    f.write(json.dumps(x[:, 0].detach().cpu().tolist()) + "\n")
            return self.net(x)

    return Recording()
