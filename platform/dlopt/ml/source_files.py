"""Reading a streamed source's files a piece ("unit") at a time, and its deterministic split.

No Ray here: the same readers serve the driver's checks before Ray starts, the test report
after the sweep (dlopt.registry.evaluation) and, wrapped by Ray Data, the training stream
(dlopt.runtime.streaming; docs/architecture.md, "Streamed data sources").

A unit is a JSON-able dict naming a slice of one file (a Parquet row group, an Arrow record
batch, a row range of a .npy shard) or a list of image files, and the split whose rows it
keeps. Why not Ray's own `read_parquet`/`read_images`: the split must be the same in every
trial and on every worker without loading everything, so each row is assigned by a hash of
its file and its position in that file, which Ray's readers do not expose.
"""
from __future__ import annotations

import hashlib
import os

import numpy as np

SPLIT_CODES = {"train": 0, "val": 1, "test": 2}
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


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


def read_unit(source, unit: dict) -> tuple[np.ndarray, np.ndarray]:
    """The raw (x, y) rows of one unit that belong to its split."""
    fs, _ = filesystem(source.path)
    fmt = source.format
    if fmt == "images":
        x = np.stack([read_image(_open(fs, p)) for p in unit["files"]])
        return x, np.asarray(unit["labels"], dtype=np.int64)
    if fmt == "numpy":
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
