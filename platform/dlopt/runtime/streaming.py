"""A streamed source (`Data.source`) under Ray: each split a Ray Data dataset, sharded to the
Train workers (docs/architecture.md, "Streamed data sources").

File sources: `ray.data.from_items` over the source's units (dlopt.ml.sources.scan), each
read by a Ray Data task (`map_batches` -> dlopt.ml.source_files.read_unit), so reading
streams and runs on the cluster's CPUs; a worker holds a bounded window of batches, never the
split. A function source: the user's `ray.data.Dataset` (or one per split), its rows mapped
to the same `x`/`y` columns and, without its own splits, split by a hash of each row's
content. Training: a TorchTrainer gets `datasets={"train", "val"}` with only "train" split
(`DataConfig(datasets_to_split=...)`: Ray's `streaming_split(n, equal=True)`, so each row is
seen once per epoch across ranks and every rank takes the same number of steps); each worker
reads its shard with `ray.train.get_dataset_shard(...).iter_torch_batches`, and the full
validation split (rank 0 evaluates and broadcasts, FSDP ranks all run it). A 1-worker
in-trial trial iterates the datasets itself.
An image folder is read otherwise, by default (`Source.reader`): each rank reads its share of
the files with its own DataLoader (dlopt.ml.rank_loader, where the measurements are), and the
TorchTrainer gets no datasets.
"""
from __future__ import annotations

import hashlib
import json
import os
from typing import Callable, Iterable, Optional

from dlopt.ml import data as data_mod
from dlopt.ml import rank_loader
from dlopt.ml import source_files as files
from dlopt.ml import streams
from dlopt.ml.components import import_path
from dlopt.ml.splits import Datasets
from dlopt.ml.transform import InputTransform

# Ray Data's read tasks take no CPU of their own: Tune's trials and Train's workers reserve
# the CPUs, and a read task that waited for one would wait forever. Ray Data's own
# backpressure (object store budget) still bounds how much is read ahead.
READ_CPUS = 0
# ...except over a function's Dataset: there a 0-CPU map never ran (Ray 2.60, seen hanging
# on an in-memory `from_items` input), so it takes this; the sweep must leave a CPU free.
FUNCTION_CPUS = 1
# A file source's 0-CPU reads have nothing else bounding how many run at once: unbounded,
# Ray Data started one task per unit at once, each in a new worker process (32 processes for
# 2,000 images on 2 cores, started again every epoch once Ray had reaped the idle ones), and
# the trainers waited on them: 10.7 samples/s against 1,367 for a plain DataLoader, 0.008x
# (benchmarks/streaming_throughput.py, 2026-12-06, a loaded machine). A pool of
# `read_tasks(spec)` tasks per split keeps a few worker processes busy and reused.
MIN_READ_TASKS = 2
STATS_BATCH = 4096


def read_tasks(spec) -> int:
    """Read tasks of one split at once: one per training worker, at least MIN_READ_TASKS."""
    return max(MIN_READ_TASKS, spec.resources.num_workers)


def _function_rows(source, task: str, seed: int, fractions, split: str):
    """A function source's rows as x/y (and, split by content hash, only `split`'s)."""

    def rows(batch) -> dict:
        x, y = files.table_arrays(batch, source)
        if fractions is not None:
            keep = files.content_codes(x, y, seed, *fractions) == files.SPLIT_CODES[split]
            x, y = x[keep], y[keep]
        return {"x": x, "y": files.label_array(y, task)}

    return rows


def split_datasets(spec) -> tuple[dict, streams.Shape]:
    """Every split of the source as a Ray Data dataset, and its Shape (rows, classes, input)."""
    import ray.data

    data = spec.data
    source = data.source
    if source.format == "function":
        return _function_datasets(spec)
    found = streams.layout(data, spec.seed)
    out = {}
    for split, units in found.units.items():
        if units:
            items = [{"unit": json.dumps(u)} for u in units]
            out[split] = ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
                files.unit_reader(source, data.task), batch_size=1, num_cpus=READ_CPUS,
                compute=ray.data.TaskPoolStrategy(size=read_tasks(spec)))
    return out, streams.Shape.of(found)


def _function_datasets(spec) -> tuple[dict, streams.Shape]:
    data, source = spec.data, spec.data.source
    made = import_path(source.function)(spec.seed)
    own = made if isinstance(made, dict) else None
    out = {}
    for split in ("train", "val", "test"):
        base = own.get({"val": "validation"}.get(split, split), own.get(split)) if own else made
        if base is None:
            continue
        fractions = None if own else (data.val_fraction, data.test_fraction)
        rows = _function_rows(source, data.task, spec.seed, fractions, split)
        out[split] = base.map_batches(rows, batch_format="pyarrow", num_cpus=FUNCTION_CPUS)
    counts = {s: ds.count() for s, ds in out.items()}
    first = out["train"].take_batch(1)
    num_classes = source.num_classes or 0
    if data.task == "classification" and not num_classes:
        num_classes = int(out["train"].max("y")) + 1
    return out, streams.Shape(counts, num_classes, tuple(first["x"].shape[1:]))


def uses_rank_loader(spec) -> bool:
    """Whether each rank reads its own share of the files (dlopt.ml.rank_loader) instead of
    a Ray Data shard: image folders, unless `Source.reader` asks for Ray Data."""
    source = spec.data.source
    return source is not None and source.format == "images" and source.reader != "ray_data"


def loader_workers(spec) -> int:
    source = spec.data.source
    if source.loader_workers is not None:
        return source.loader_workers
    return rank_loader.default_workers(spec.resources.cpus_per_worker)


def rank_datasets(spec, shape: streams.Shape, transform: InputTransform, rank: int,
                  world: int, found=None) -> Datasets:
    """The loop's Datasets read by this rank itself: its share of train, the whole val.
    `found`: the source's layout where this process has it; a Train worker scans it again
    (a folder listing and a few image headers, the same result on every rank: the units'
    order is seeded) rather than getting it shipped in the config."""
    source = spec.data.source
    found = found or streams.layout(spec.data, spec.seed)
    read = {s: rank_loader.split_batches(source, found.units, s, rank=rank, world=world,
                                         seed=spec.seed, workers=loader_workers(spec),
                                         shuffle_buffer=source.shuffle_buffer,
                                         pin_memory=spec.resources.use_gpu)
            for s in ("train", "val")}
    return streams.streamed_datasets(spec.data, shape, transform, read)


def source_splits(spec) -> tuple[streams.Shape, InputTransform, dict]:
    """A streamed source's Shape, training statistics and the Ray datasets a TorchTrainer
    shards ({} where the ranks read the files themselves)."""
    if uses_rank_loader(spec):
        found = streams.layout(spec.data, spec.seed)
        return streams.Shape.of(found), rank_transform(spec, found), {}
    ds, shape = split_datasets(spec)
    transform = training_transform(spec, lambda: (
        b["x"] for b in ds["train"].iter_batches(batch_size=STATS_BATCH, batch_format="numpy")))
    return shape, transform, {"train": ds["train"], "val": ds["val"]}


def rank_transform(spec, found) -> InputTransform:
    """The training statistics of an image folder, read by the rank loader in this process."""
    train = rank_loader.image_batches(spec.data.source, found.units["train"], shuffle=False,
                                      workers=loader_workers(spec))
    return training_transform(spec, lambda: (x.numpy() for x, _ in train(STATS_BATCH)))


def training_transform(spec, train_x: Callable[[], Iterable]) -> InputTransform:
    """The training split's statistics (one streaming pass over `train_x()`, its raw inputs
    batch by batch), cached on this machine by the source, seed and fractions: every trial
    of a sweep reads them once."""
    key = json.dumps([spec.data.model_dump(mode="json"), spec.seed, 1], sort_keys=True)
    path = data_mod.cache_dir() / f"source-{hashlib.sha256(key.encode()).hexdigest()[:16]}.json"
    try:
        return InputTransform.from_json(json.loads(path.read_text()))
    except (OSError, ValueError, KeyError):
        pass
    transform = streams.fit_transform(train_x(), spec.data.task)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.stem}-{os.getpid()}.json")
        tmp.write_text(json.dumps(transform.to_json()))
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only home: no cache, same statistics
    return transform


def ray_batches(it, seed: int, shuffle_buffer: int = 0):
    """`Batches` over a Ray Data dataset or a worker's DataIterator: raw CPU tensors (the
    loop moves them through pinned memory, dlopt.ml.devices.to_device)."""

    def batches(batch_size: int, epoch: int = 0):
        for b in it.iter_torch_batches(batch_size=batch_size, drop_last=False,
                                       local_shuffle_buffer_size=shuffle_buffer or None,
                                       local_shuffle_seed=seed + epoch if shuffle_buffer else None):
            yield b["x"], b["y"]

    return batches


def worker_datasets(spec, shape: streams.Shape, transform: InputTransform, train, val,
                    test=None) -> Datasets:
    """The loop's Datasets over Ray Data (a worker's shard of train, the full val)."""
    buffer = spec.data.source.shuffle_buffer
    read = {"train": ray_batches(train, spec.seed, buffer), "val": ray_batches(val, spec.seed)}
    if test is not None:
        read["test"] = ray_batches(test, spec.seed)
    return streams.streamed_datasets(spec.data, shape, transform, read, test is not None)


def data_config(spec):
    """Only the training split is sharded (DDP, FSDP). A pipeline, whose every rank would
    read every batch in one order, is refused with a source (dlopt.spec.checks)."""
    from ray.train import DataConfig

    return DataConfig(datasets_to_split=["train"])


def in_trial_datasets(spec) -> Optional[Datasets]:
    """A 1-worker in-trial trial's splits (None without a source: the in-memory path)."""
    if spec.data.source is None:
        return None
    if uses_rank_loader(spec):  # one scan of the folder in this process
        found = streams.layout(spec.data, spec.seed)
        return rank_datasets(spec, streams.Shape.of(found), rank_transform(spec, found),
                             rank=0, world=1, found=found)
    shape, transform, ds = source_splits(spec)
    return worker_datasets(spec, shape, transform, ds["train"], ds["val"])
