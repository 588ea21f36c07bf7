"""Streamed data sources (`Data.source`): what a source holds, checked before Ray starts, and
its splits as `Streamed` splits read batch by batch (docs/architecture.md, "Streamed data
sources").

`scan` lists a source's files and reads only metadata (Parquet footers and statistics, .npy
headers, Arrow batch lengths, image headers; for the built-in mnist / fashion_mnist / cifar10
formats: IDX headers, MNIST's label files, CIFAR-10 batch sizes) to find its units, each split's row count, the
classes and the problems a user would otherwise meet inside a trial. `load` builds the
`Datasets` the training loop takes: train/val (and, only `with_test`, test) as `Streamed`
splits. Here they read the files in this process (the checks, `dlopt evaluate`, unit tests);
under Ray, dlopt.runtime.streaming swaps in Ray Data streams of the same units.
The normalization statistics come from one pass over the training split only
(`fit_transform`) and travel with the model as its InputTransform (dlopt.ml.transform).
"""
from __future__ import annotations

import json
import random
from dataclasses import dataclass
from typing import Optional

import numpy as np

from dlopt.ml import source_files as files
from dlopt.spec import Data

ALIASES = {"train": ("train",), "val": ("val", "validation", "valid"), "test": ("test",)}
IMAGES_PER_UNIT = 64
NUMPY_UNIT_ROWS = 4096
IDX_UNIT_ROWS = 4096  # MNIST: 3 MiB of pixels a unit
CIFAR_UNIT_ROWS = 2000  # CIFAR-10: 6 MiB a unit, 5 to a batch file
PROBE_ROWS = 256  # validation rows kept in memory for the stages' probes (example, latency)
HEADERS_PER_CLASS = 2  # image headers read per class folder and split by the size check
FIELD = "data.source"


class SourceError(ValueError):
    """Problems with a source, one line each naming the field (the CLI exits 2)."""

    def __init__(self, lines: list[str]):
        super().__init__("; ".join(lines))
        self.lines = lines


@dataclass(frozen=True)
class Layout:
    """What `scan` found: units and row counts per split, the classes, the raw row's shape."""

    units: dict
    rows: dict
    num_classes: int
    input_shape: tuple
    problems: tuple


def _listing(fs, path: str, recursive: bool = False):
    import pyarrow.fs as pafs

    return sorted((i for i in fs.get_file_info(pafs.FileSelector(path, recursive=recursive))),
                  key=lambda i: i.path)


def _split_roots(fs, root: str, fmt: str) -> dict[str, str]:
    """The source's own splits: entries named train, val/validation, test at its root."""
    import pyarrow.fs as pafs

    found = {}
    for info in _listing(fs, root):
        stem = info.base_name.split(".")[0] if info.type == pafs.FileType.File else info.base_name
        for split, names in ALIASES.items():
            if stem in names and (info.type == pafs.FileType.Directory or fmt == "parquet"):
                found.setdefault(split, info.path)
    return found if "train" in found else {}


def _assign(pieces: list[dict], splits: dict, fractions, seed: int, units: dict, rows: dict):
    """Pieces of one own split (`splits` = {name: None}) or hashed into several."""
    for piece in pieces:
        if fractions is None:
            (split,) = splits
            units[split].append({**piece, "split": split, "fractions": None})
            rows[split] += piece["n"]
            continue
        codes = files.split_codes(piece["key"], piece["start"] + np.arange(piece["n"]), seed,
                                  *fractions)
        for split in splits:
            count = int((codes == files.SPLIT_CODES[split]).sum())
            if count:
                units[split].append({**piece, "split": split, "fractions": list(fractions),
                                     "seed": seed})
                rows[split] += count


def scan(data: Data, seed: int) -> Layout:
    """The source's units and counts per split, its classes, and every problem found."""
    source = data.source
    fs, root = files.filesystem(source.path)
    import pyarrow.fs as pafs

    if fs.get_file_info(root).type == pafs.FileType.NotFound:
        return Layout({}, {}, 0, (), (f"{FIELD}.path: {source.path} does not exist",))
    if source.format in files.BUILT_IN:
        return _built_in(data, seed, fs, root)
    own = _split_roots(fs, root, source.format)
    parts = ([(own[s], {s: None}, None) for s in ALIASES if s in own] if own else
             [(root, {"train": None, "val": None, "test": None},
               (data.val_fraction, data.test_fraction))])
    if own and "val" not in own:  # carve validation out of the own training split
        parts[0] = (own["train"], {"train": None, "val": None}, (data.val_fraction, 0.0))
    reader = {"images": _images, "parquet": _parquet, "numpy": _numpy, "hf": _hf}[source.format]
    units = {s: [] for s in ALIASES}
    rows = dict.fromkeys(ALIASES, 0)
    problems, labels, classes = [], [], None
    for base, splits, fractions in parts:
        pieces, found, lo_hi = reader(fs, base, source, classes, problems)
        if classes is None and found:
            classes = found
        labels.append(lo_hi)
        _assign(pieces, splits, fractions, seed, units, rows)
    if source.format == "images":
        units = {s: _image_units(u, seed) for s, u in units.items()}
    return _finish(data, seed, units, rows, classes, labels, problems, own)


def _finish(data, seed, units, rows, classes, labels, problems, own) -> Layout:
    source = data.source
    with_test = "test" in own if own else data.test_fraction > 0  # own splits: test/ if any
    for split in ("train", "val") + (("test",) if with_test else ()):
        if not rows[split] and not problems:
            problems.append(f"{FIELD}.path: the {split} split of {source.path} is empty"
                            + ("" if own else f" (val_fraction={data.val_fraction}, "
                               f"test_fraction={data.test_fraction} of too few rows)"))
    num_classes = 0
    if data.task == "classification" and not problems:
        seen = [b for lo_hi in labels if lo_hi for b in lo_hi]
        lo, hi = (min(seen), max(seen)) if seen else (0, 0)
        num_classes = len(classes) if classes else (source.num_classes or int(hi) + 1)
        if lo < 0 or hi >= num_classes:
            problems.append(f"{FIELD}.num_classes: labels of {source.path} run {lo:g}..{hi:g}, "
                            f"outside the {num_classes} classes 0..{num_classes - 1}")
    shape = ()
    if not problems:
        x, _ = files.read_unit(source, {**units["train"][0], "fractions": None})
        shape = tuple(x.shape[1:])
    for s in units:  # a fixed, seeded order: units mix classes and files
        random.Random(f"{seed}:{s}").shuffle(units[s])
    return Layout(units, rows, num_classes, shape, tuple(problems))


def _built_in(data: Data, seed: int, fs, root: str) -> Layout:
    """MNIST / Fashion-MNIST / CIFAR-10 from their standard files: the official training
    files are hashed into train and val (`val_fraction`; `test_fraction` is not used), the
    official test files are the test split. Units: row ranges of the IDX files or CIFAR-10
    batches (their headers and sizes are all that is read here, and MNIST's labels)."""
    fmt = data.source.format
    found, folders = files.built_in_files(fs, root, fmt)
    if any(p is None for p in found.values()):
        return Layout({}, {}, 0, (), (f"{FIELD}.path: {files.missing_files(fmt, root, found, folders)}",))
    problems: list[str] = []
    reader = _cifar_pieces if fmt == "cifar10" else _idx_pieces
    pieces, labels = reader(fs, found, problems)
    units = {s: [] for s in ALIASES}
    rows = dict.fromkeys(ALIASES, 0)
    if not problems:
        _assign(pieces["train"], {"train": None, "val": None}, (data.val_fraction, 0.0), seed,
                units, rows)
        _assign(pieces["test"], {"test": None}, None, seed, units, rows)
    own = {"train": root, "test": root}
    return _finish(data, seed, units, rows, files.CLASS_NAMES[fmt], labels, problems, own)


def _idx_pieces(fs, found: dict, problems: list) -> tuple[dict, list]:
    """Row ranges of the IDX image files, their label files beside them; the labels' range."""
    pieces, labels = {"train": [], "test": []}, []
    for split in pieces:
        xpath, ypath = found[f"{split}_x"], found[f"{split}_y"]
        try:
            xdims, ydims = files.idx_dims(fs, xpath), files.idx_dims(fs, ypath)
        except ValueError as err:
            problems.append(f"{FIELD}.path: {err}")
            continue
        if len(xdims) != 3 or len(ydims) != 1 or xdims[0] != ydims[0]:
            problems.append(f"{FIELD}.path: {xpath} holds images {xdims} and {ypath} labels "
                            f"{ydims}; expected N x H x W images and N labels")
            continue
        n = xdims[0]
        labels.append(_label_range(files.idx_rows(fs, ypath, 0, n)))
        key = files.MNIST_FILES[f"{split}_x"]  # the standard name: plain and .gz split alike
        pieces[split] = [{"file": xpath, "labels": ypath, "key": key, "start": s,
                          "stop": min(n, s + IDX_UNIT_ROWS), "n": min(n, s + IDX_UNIT_ROWS) - s}
                         for s in range(0, n, IDX_UNIT_ROWS)]
    return pieces, labels


def _cifar_pieces(fs, found: dict, problems: list) -> tuple[dict, list]:
    """Record ranges of CIFAR-10's binary batches. Its labels are interleaved with the pixels
    and not read here: the format has 10 classes."""
    pieces = {"train": [], "test": []}
    for split, names in (("train", files.CIFAR_TRAIN), ("test", files.CIFAR_TEST)):
        for name in names:
            size = fs.get_file_info(found[name]).size
            if size % files.CIFAR_RECORD:
                problems.append(f"{FIELD}.path: {found[name]}: size {size} is not a multiple of "
                                f"{files.CIFAR_RECORD}-byte records (CIFAR-10's binary version)")
                continue
            n = size // files.CIFAR_RECORD
            pieces[split] += [{"file": found[name], "key": name, "start": s,
                               "stop": min(n, s + CIFAR_UNIT_ROWS),
                               "n": min(n, s + CIFAR_UNIT_ROWS) - s}
                              for s in range(0, n, CIFAR_UNIT_ROWS)]
    return pieces, []


def _images(fs, base, source, classes, problems):
    """One subfolder per class; labels are the training split's sorted folder names."""
    import pyarrow.fs as pafs

    folders = [i for i in _listing(fs, base) if i.type == pafs.FileType.Directory]
    names = [f.base_name for f in folders]
    if classes is None:
        classes = names
        if not names:
            problems.append(f"{FIELD}.path: {base} has no class subfolders (one per class)")
    pieces, sizes = [], {}
    for folder in folders:
        if folder.base_name not in classes:
            problems.append(f"{FIELD}.path: class folder {folder.path} is not one of the "
                            f"training split's classes {classes} (labels outside the classes)")
            continue
        images = [i.path for i in _listing(fs, folder.path, recursive=True)
                  if i.type == pafs.FileType.File and i.path.lower().endswith(files.IMAGE_EXTENSIONS)]
        if not images:
            problems.append(f"{FIELD}.path: class folder {folder.path} has no images "
                            f"({', '.join(files.IMAGE_EXTENSIONS)})")
        for p in images[:HEADERS_PER_CLASS]:
            sizes[p] = _image_header(fs, p)
        label = classes.index(folder.base_name)
        pieces += [(p, label) for p in images]
    if len(set(sizes.values())) > 1:
        (a, sa), (b, sb) = next(((a, sa), (b, sb)) for a, sa in sizes.items()
                                for b, sb in sizes.items() if sa != sb)
        problems.append(f"{FIELD}.path: images differ in size: {a} is {sa}, {b} is {sb} "
                        f"(checked the headers of the first {HEADERS_PER_CLASS} per class folder)")
    return [{"files": [p], "labels": [lab], "key": p[len(base):], "start": 0, "n": 1}
            for p, lab in pieces], classes, None


def _image_units(units: list[dict], seed: int) -> list[dict]:
    """Image files, each assigned its split by its own hash, grouped IMAGES_PER_UNIT to a
    unit in a seeded order (units that mix the classes)."""
    random.Random(seed).shuffle(units)
    return [{"files": [f for u in chunk for f in u["files"]],
             "labels": [lab for u in chunk for lab in u["labels"]], "split": chunk[0]["split"],
             "fractions": None, "n": len(chunk)}
            for chunk in (units[i:i + IMAGES_PER_UNIT] for i in range(0, len(units), IMAGES_PER_UNIT))]


def _image_header(fs, path: str) -> tuple:
    from PIL import Image

    with Image.open(files._open(fs, path)) as img:
        return img.size[::-1], len(img.getbands()) if img.mode in ("L", "RGB") else 3


def _label_range(y: np.ndarray) -> tuple:
    return (float(y.min()), float(y.max())) if len(y) else ()


def _parquet(fs, base, source, classes, problems):
    import pyarrow.fs as pafs
    import pyarrow.parquet as pq

    paths = ([base] if base.endswith(".parquet") else
             [i.path for i in _listing(fs, base, recursive=True)
              if i.type == pafs.FileType.File and i.path.endswith(".parquet")])
    if not paths:
        problems.append(f"{FIELD}.path: no .parquet files under {base}")
    pieces, lo_hi = [], []
    for path in paths:
        with fs.open_input_file(path) as f:
            meta = pq.ParquetFile(f).metadata
        # top-level columns: the Parquet schema's own names are its leaves ("element" for
        # each item of a list column such as a feature vector)
        if not _columns_present(meta.schema.to_arrow_schema().names, source, path, problems):
            continue
        leaves = [meta.schema.column(i).path for i in range(meta.num_columns)]
        label = source.label_name()
        col, start = (leaves.index(label) if label in leaves else None), 0
        for g in range(meta.num_row_groups):
            n = meta.row_group(g).num_rows
            stats = meta.row_group(g).column(col).statistics if col is not None else None
            if stats is not None and stats.has_min_max:
                lo_hi += [stats.min, stats.max]
            pieces.append({"file": path, "group": g, "key": path[len(base):], "start": start,
                           "n": n})
            start += n
    return pieces, None, (min(lo_hi), max(lo_hi)) if lo_hi else ()


def _columns_present(names, source, path, problems) -> bool:
    ok = True
    for field, col in (("label", source.label_name()), ("features", source.features)):
        if col is not None and col not in names:
            problems.append(f"{FIELD}.{field}: no column {col!r} in {path} (columns: "
                            f"{', '.join(names)})")
            ok = False
    return ok


def _numpy(fs, base, source, classes, problems):
    """Feature shards under base/<features>/, labels under base/<label>/, same file names."""
    import pyarrow.fs as pafs

    xdir, ydir = f"{base}/{source.features or 'x'}", f"{base}/{source.label_name()}"
    pieces, lo_hi = [], []
    if fs.get_file_info(xdir).type != pafs.FileType.Directory:
        problems.append(f"{FIELD}.features: no folder {xdir} of .npy feature shards")
        return pieces, None, ()
    for info in _listing(fs, xdir):
        if not info.path.endswith(".npy"):
            continue
        ypath = f"{ydir}/{info.base_name}"
        if fs.get_file_info(ypath).type != pafs.FileType.File:
            problems.append(f"{FIELD}.label: no label shard {ypath} for {info.path}")
            continue
        with fs.open_input_file(info.path) as f:
            n = files.npy_header(f)[0][0]
        with fs.open_input_file(ypath) as f:
            ny = files.npy_header(f)[0][0]
        if ny != n:
            problems.append(f"{FIELD}.label: {ypath} has {ny} labels for {n} rows of {info.path}")
            continue
        lo_hi += list(_label_range(files._npy_rows(fs, ypath, 0, n).astype(np.float64)))
        for s in range(0, n, NUMPY_UNIT_ROWS):
            pieces.append({"file": info.path, "labels": ypath, "key": info.base_name,
                           "start": s, "stop": min(n, s + NUMPY_UNIT_ROWS),
                           "n": min(n, s + NUMPY_UNIT_ROWS) - s})
    if not pieces and not problems:
        problems.append(f"{FIELD}.path: no .npy shards under {xdir}")
    return pieces, None, (min(lo_hi), max(lo_hi)) if lo_hi else ()


def _hf(fs, base, source, classes, problems):
    """A `save_to_disk` dataset: state.json names its Arrow files; dataset_info.json its
    features (a ClassLabel label gives the classes)."""
    try:
        with fs.open_input_file(f"{base}/state.json") as f:
            state = json.loads(f.read())
    except (OSError, FileNotFoundError):
        problems.append(f"{FIELD}.path: {base} is not a dataset saved with save_to_disk "
                        "(no state.json)")
        return [], None, ()
    pieces, lo_hi, label = [], [], source.label_name()
    for entry in state.get("_data_files", []):
        path, start = f"{base}/{entry['filename']}", 0
        for g, batch in enumerate(files.arrow_batches(fs, path)):
            if g == 0 and not _columns_present(batch.schema.names, source, path, problems):
                break
            lo_hi += list(_label_range(batch.column(label).to_numpy()))
            pieces.append({"file": path, "group": g, "key": entry["filename"], "start": start,
                           "n": batch.num_rows})
            start += batch.num_rows
    names = _class_names(fs, base, label)
    return pieces, names, (min(lo_hi), max(lo_hi)) if lo_hi else ()


def _class_names(fs, base, label) -> Optional[list]:
    try:
        with fs.open_input_file(f"{base}/dataset_info.json") as f:
            feature = json.loads(f.read()).get("features", {}).get(label, {})
    except (OSError, FileNotFoundError, ValueError):
        return None
    return feature.get("names") if feature.get("_type") == "ClassLabel" else None
