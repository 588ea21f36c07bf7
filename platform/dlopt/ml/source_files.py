"""Reading a streamed source's files a piece ("unit") at a time, and its deterministic split.

No Ray here: the same readers serve the driver's checks before Ray starts, the test report
after the sweep (dlopt.registry.evaluation) and, wrapped by Ray Data, the training stream
(dlopt.runtime.streaming; docs/architecture.md, "Streamed data sources").

A unit is a JSON-able dict naming a slice of one file (a Parquet row group, an Arrow record
batch, a row range of a .npy shard, of an IDX file or of a CIFAR-10 batch) or a list of image
files, and the split whose rows it keeps. Why not Ray's own `read_parquet`/`read_images`: the
split must be the same in every trial and on every worker without loading everything, so each
row is assigned by a hash of its file and its position in that file, which Ray's readers do
not expose.
"""
from __future__ import annotations

import gzip
import hashlib
import os
from contextlib import contextmanager

import numpy as np

from dlopt.spec.fields import LOCAL_DATASETS

SPLIT_CODES = {"train": 0, "val": 1, "test": 2}
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)

# The built-in image datasets' standard files, read in memory (dlopt.ml.vision_data) or
# streamed (`Source(format="mnist", path=ROOT)`): MNIST / Fashion-MNIST as IDX files (plain or
# .gz) under ROOT/MNIST/raw (ROOT/FashionMNIST/raw), ROOT/MNIST or ROOT; CIFAR-10's binary
# batches under ROOT/cifar-10-batches-bin or ROOT (docs/architecture.md, "Streamed data sources").
BUILT_IN = LOCAL_DATASETS  # also Source formats of the same names
MNIST_FILES = {"train_x": "train-images-idx3-ubyte", "train_y": "train-labels-idx1-ubyte",
               "test_x": "t10k-images-idx3-ubyte", "test_y": "t10k-labels-idx1-ubyte"}
IDX_FOLDERS = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST"}  # torchvision's folder names
CIFAR_DIR = "cifar-10-batches-bin"
CIFAR_TRAIN = [f"data_batch_{i}.bin" for i in range(1, 6)]
CIFAR_TEST = ["test_batch.bin"]
CIFAR_RECORD = 1 + 3 * 32 * 32  # 1 label byte, then 3 x 32 x 32 pixel bytes (channels first)
CLASS_NAMES = {
    "mnist": [str(i) for i in range(10)],
    "fashion_mnist": ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                      "Sneaker", "Bag", "Ankle boot"],
    "cifar10": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
                "truck"],
}


def filesystem(path: str):
    """(pyarrow filesystem, path inside it) for a local path or a storage URI."""
    import pyarrow.fs as pafs

    if "://" in path:
        return pafs.FileSystem.from_uri(path)
    return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(path))


def _splitmix(h: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        h = (h ^ (h >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        h = (h ^ (h >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return h ^ (h >> np.uint64(31))


def split_codes(key: str, index: np.ndarray, seed: int, val_fraction: float,
                test_fraction: float) -> np.ndarray:
    """Which split (SPLIT_CODES) each row `index` of file `key` (its path relative to the
    source) belongs to: a hash of (seed, key, index), so every trial and worker agrees and
    nothing but the row's position is read."""
    base = int.from_bytes(hashlib.sha256(f"{seed}:{key}".encode()).digest()[:8], "little")
    with np.errstate(over="ignore"):
        h = _splitmix(np.uint64(base) + np.asarray(index, dtype=np.uint64) * _GOLDEN)
    return _codes(h, val_fraction, test_fraction)


def _codes(h: np.ndarray, val_fraction: float, test_fraction: float) -> np.ndarray:
    u = (h >> np.uint64(11)).astype(np.float64) / float(2 ** 53)
    return np.where(u < test_fraction, 2, np.where(u < test_fraction + val_fraction, 1, 0))


def content_codes(x: np.ndarray, y: np.ndarray, seed: int, val_fraction: float,
                  test_fraction: float) -> np.ndarray:
    """The split of each row of a source that has no files to hash (a function's Dataset):
    a seeded hash of the row's values (features and label as float64 words), so the same
    row lands in the same split in every trial and on every worker, whatever the order."""
    n = len(y)
    rows = np.concatenate([np.asarray(x, dtype=np.float64).reshape(n, -1),
                           np.asarray(y, dtype=np.float64).reshape(n, -1)], axis=1)
    words = np.ascontiguousarray(rows).view(np.uint64)
    mult = np.random.default_rng(seed).integers(1, 2 ** 63, size=words.shape[1],
                                                dtype=np.uint64) | np.uint64(1)
    with np.errstate(over="ignore"):
        h = _splitmix((words * mult).sum(axis=1, dtype=np.uint64))
    return _codes(h, val_fraction, test_fraction)


def kept(unit: dict, n: int) -> np.ndarray:
    """The positions (0..n-1 within the unit) of the rows of the unit's split."""
    if unit.get("fractions") is None:  # the source's own split: every row
        return np.arange(n)
    val, test = unit["fractions"]
    codes = split_codes(unit["key"], unit["start"] + np.arange(n), unit["seed"], val, test)
    return np.flatnonzero(codes == SPLIT_CODES[unit["split"]])


def read_image(f) -> np.ndarray:
    """An image file as the model takes it raw: uint8, channels first (C, H, W); grey -> 1
    channel, RGB -> 3, anything else converted to RGB. `f`: a path or a binary file."""
    from PIL import Image

    with Image.open(f) as img:
        if img.mode not in ("L", "RGB"):
            img = img.convert("RGB")
        a = np.asarray(img)
    return a[None] if a.ndim == 2 else np.ascontiguousarray(a.transpose(2, 0, 1))


def read_image_at(fs, path: str) -> np.ndarray:
    """`read_image` of a file on `fs`: a local file opened by PIL itself, a remote one read
    whole first (pyarrow's streams do not seek as PIL needs)."""
    import pyarrow.fs as pafs

    return read_image(path if isinstance(fs, pafs.LocalFileSystem) else _open(fs, path))


def _column(col) -> np.ndarray:
    """An Arrow column as rows: numbers, lists of numbers, or HF Image structs (bytes)."""
    import io

    import pyarrow as pa

    col = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    n = len(col)
    if pa.types.is_struct(col.type) and col.type.get_field_index("bytes") >= 0:
        return np.stack([read_image(io.BytesIO(b)) for b in col.field("bytes").to_pylist()])
    while pa.types.is_list(col.type) or pa.types.is_fixed_size_list(col.type) \
            or pa.types.is_large_list(col.type):
        col = col.flatten()
    x = col.to_numpy(zero_copy_only=False)
    return x.reshape(n, -1) if len(x) != n else x


def table_arrays(table, source) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) of an Arrow table: `features` (or every other column, stacked) and the label."""
    label = source.label_name()
    y = table.column(label).to_numpy()
    if source.features:
        x = _column(table.column(source.features))
    else:
        cols = [table.column(c) for c in table.column_names if c != label]
        x = _column(cols[0]) if len(cols) == 1 else np.stack([_column(c) for c in cols], axis=1)
    if source.shape:
        x = x.reshape(len(x), *source.shape)
    return x, y


def _npy_rows(fs, path: str, start: int, stop: int) -> np.ndarray:
    """Rows start..stop of a .npy file, read by offset (no whole-file load; any filesystem)."""
    with fs.open_input_file(path) as f:
        shape, dtype, offset = npy_header(f)
        row = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize
        f.seek(offset + start * row)
        data = f.read((stop - start) * row)
    return np.frombuffer(data, dtype=dtype).reshape(stop - start, *shape[1:])


def npy_header(f) -> tuple[tuple, np.dtype, int]:
    """(shape, dtype, data offset) of an open .npy file."""
    fmt = np.lib.format
    version = fmt.read_magic(f)
    read = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
    shape, fortran, dtype = read(f)
    if fortran:
        raise ValueError("Fortran-ordered .npy shards are not supported; save C-ordered")
    return shape, dtype, f.tell()


def arrow_batches(fs, path: str):
    """The record batches of an Arrow IPC stream file (what `save_to_disk` writes)."""
    import pyarrow as pa

    if hasattr(fs, "type_name") and fs.type_name == "local":
        source = pa.memory_map(path)  # zero-copy: skipping a batch reads only its header
    else:
        source = fs.open_input_stream(path)
    with source, pa.ipc.open_stream(source) as reader:
        yield from reader


def built_in_files(fs, root: str, dataset: str) -> tuple[dict, list[str]]:
    """Where a built-in dataset's standard files are under `root`: ({role: path or None},
    the folders searched). Roles: MNIST_FILES' keys, or CIFAR-10's batch file names (all
    from one folder)."""
    import pyarrow.fs as pafs

    def is_file(p: str) -> bool:
        return fs.get_file_info(p).type == pafs.FileType.File

    if dataset == "cifar10":
        folders = [f"{root}/{CIFAR_DIR}", root]
        for folder in folders:
            found = {n: f"{folder}/{n}" for n in CIFAR_TRAIN + CIFAR_TEST}
            if all(is_file(p) for p in found.values()):
                return found, folders
        return dict.fromkeys(CIFAR_TRAIN + CIFAR_TEST), folders
    folders = [f"{root}/{IDX_FOLDERS[dataset]}/raw", f"{root}/{IDX_FOLDERS[dataset]}", root]
    found = {}
    for role, name in MNIST_FILES.items():
        found[role] = next((f"{d}/{name}{gz}" for d in folders for gz in ("", ".gz")
                            if is_file(f"{d}/{name}{gz}")), None)
    return found, folders


def missing_files(dataset: str, root: str, found: dict, folders: list[str]) -> str:
    """One line saying which of a built-in dataset's files are missing, and where dlopt looked."""
    names = [k if dataset == "cifar10" else MNIST_FILES[k] for k, p in found.items() if p is None]
    line = (f"{dataset}: no local copy under {root}: looked for {', '.join(names)} "
            f"{'' if dataset == 'cifar10' else '(plain or .gz) '}in {', '.join(folders)}")
    if dataset == "cifar10" and os.path.isdir(os.path.join(root, "cifar-10-batches-py")):
        line += (" (found cifar-10-batches-py, the pickled python version: dlopt reads the binary "
                 "version cifar-10-batches-bin only, since unpickling runs code)")
    return line + "; downloading is not available (it needs torchvision and network access)"


@contextmanager
def _idx_stream(fs, path: str):
    """An IDX file opened for reading; a .gz one decompressed on the fly (seeking forward
    decompresses up to the offset)."""
    with fs.open_input_file(path) as f:
        if not path.endswith(".gz"):
            yield f
            return
        with gzip.GzipFile(fileobj=f, mode="rb") as g:
            yield g


def idx_header(f) -> tuple[tuple, int]:
    """(dims, data offset) of an open IDX file (LeCun's MNIST format: 0, 0, dtype code 0x08 =
    unsigned byte, ndim, then ndim big-endian int32 dims)."""
    head = f.read(4)
    if len(head) < 4 or head[0] != 0 or head[1] != 0 or head[2] != 0x08:
        raise ValueError("not an unsigned-byte IDX file")
    ndim = head[3]
    dims = np.frombuffer(f.read(4 * ndim), dtype=">i4")
    if len(dims) != ndim:
        raise ValueError("truncated IDX header")
    return tuple(int(d) for d in dims), 4 + 4 * ndim


def idx_dims(fs, path: str) -> tuple:
    with _idx_stream(fs, path) as f:
        try:
            return idx_header(f)[0]
        except ValueError as err:
            raise ValueError(f"{path}: {err}") from None


def idx_rows(fs, path: str, start: int, stop: int) -> np.ndarray:
    """Rows start..stop of an IDX file, read by offset (a .gz file: decompressed up to them)."""
    with _idx_stream(fs, path) as f:
        dims, offset = idx_header(f)
        row = int(np.prod(dims[1:], dtype=np.int64))
        f.seek(offset + start * row)
        data = f.read((stop - start) * row)
    if len(data) != (stop - start) * row:
        raise ValueError(f"{path}: header says {dims} but the file ends before row {stop}")
    return np.frombuffer(data, dtype=np.uint8).reshape(stop - start, *dims[1:])


def cifar_rows(fs, path: str, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
    """Records start..stop of a CIFAR-10 binary batch: (x N x 3 x 32 x 32 uint8, y int64)."""
    with fs.open_input_file(path) as f:
        f.seek(start * CIFAR_RECORD)
        data = f.read((stop - start) * CIFAR_RECORD)
    records = np.frombuffer(data, dtype=np.uint8).reshape(-1, CIFAR_RECORD)
    return records[:, 1:].reshape(-1, 3, 32, 32), records[:, 0].astype(np.int64)


def read_unit(source, unit: dict) -> tuple[np.ndarray, np.ndarray]:
    """The raw (x, y) rows of one unit that belong to its split."""
    fs, _ = filesystem(source.path)
    fmt = source.format
    if fmt == "images":
        x = np.stack([read_image_at(fs, p) for p in unit["files"]])
        return x, np.asarray(unit["labels"], dtype=np.int64)
    if fmt == "cifar10":
        x, y = cifar_rows(fs, unit["file"], unit["start"], unit["stop"])
    elif fmt in BUILT_IN:  # mnist, fashion_mnist: images N x 28 x 28 -> N x 1 x 28 x 28
        x = idx_rows(fs, unit["file"], unit["start"], unit["stop"])[:, None]
        y = idx_rows(fs, unit["labels"], unit["start"], unit["stop"]).astype(np.int64)
    elif fmt == "numpy":
        x = _npy_rows(fs, unit["file"], unit["start"], unit["stop"])
        y = _npy_rows(fs, unit["labels"], unit["start"], unit["stop"])
    elif fmt == "parquet":
        import pyarrow.parquet as pq

        with fs.open_input_file(unit["file"]) as f:
            table = pq.ParquetFile(f).read_row_group(unit["group"])
        x, y = table_arrays(table, source)
    else:  # hf
        import pyarrow as pa

        batch = next(b for i, b in enumerate(arrow_batches(fs, unit["file"]))
                     if i == unit["group"])
        x, y = table_arrays(pa.Table.from_batches([batch]), source)
    if source.shape and x.shape[1:] != tuple(source.shape):
        x = x.reshape(len(x), *source.shape)
    keep = kept(unit, len(y))
    return x[keep], y[keep]


def _open(fs, path: str):
    import io

    with fs.open_input_file(path) as f:
        return io.BytesIO(f.read())


def label_array(y, task: str) -> np.ndarray:
    """Labels as the loss takes them (dlopt.ml.streams.labels, in numpy): int64 classes, or
    float32 (n, 1) regression targets."""
    y = np.asarray(y)
    return y.astype(np.int64) if task == "classification" else y.astype(np.float32).reshape(len(y), -1)


def unit_reader(source, task: str):
    """A Ray Data `map_batches` function over a batch of units (JSON strings in "unit"): their
    rows as {"x", "y"}. Defined here, not beside the Ray code, so the Ray Data workers that run
    it import numpy and pyarrow only, not torch (dlopt.runtime.streaming)."""
    import json

    def read(batch: dict) -> dict:
        xs, ys = zip(*(read_unit(source, json.loads(u)) for u in batch["unit"]))
        return {"x": np.concatenate(xs), "y": label_array(np.concatenate(ys), task)}

    return read
