"""An image folder read by each rank itself: torch's DataLoader over this rank's share of the
split's image files (docs/architecture.md, "Streamed data sources", the rank loader).

Why not Ray Data for an image folder: each row is one small file, so the work is opening and
decoding files, and Ray Data adds a task, a serialized block and an object-store copy per
group of rows on the same CPUs the trainers use. On 2 cores a 2-worker DDP `cnn` over 2,000
PNGs trained at 527 samples/s through plain Ray Train + Ray Data (448 through dlopt's Ray Data
path) against 1,334 for a plain DDP loop with `DataLoader(num_workers=1)` per rank
(benchmarks/streaming_throughput.py, BENCHMARKS.md). A file is a row a rank can address by
itself, so here the rank does what a hand-written loader does: its DataLoader's worker
processes decode the files next to the trainer, nothing in between. Memory stays bounded
(prefetch_factor batches per loader worker); the other formats keep Ray Data
(dlopt.runtime.streaming), where a unit is many rows read together.

Sharding: each epoch a permutation of the split's rows seeded by (seed, epoch), the same on
every rank; rank r takes every world-th row of it, n // world rows each. So each row is read
at most once per epoch across ranks and every rank takes the same number of steps; the < world
rows left over drop, different ones each epoch, as Ray's `streaming_split(equal=True)` drops
its remainder. The shuffle is over the whole split (Ray Data's is a bounded local buffer);
`Source.shuffle_buffer=0` keeps the source's (seeded) order. Validation and test are read whole
by the rank that evaluates them, in order.
"""
from __future__ import annotations

from typing import Iterator, Optional

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from dlopt.ml import source_files as files

# (seed, epoch) -> one generator seed: the same permutation on every rank, a new one each epoch
_SEED_STRIDE = 1_000_003


class ImageFiles(Dataset):
    """Row i: the raw image (uint8, C x H x W) of `paths[i]` and its class `labels[i]`. The
    filesystem is made in the process that reads (a DataLoader worker), never pickled."""

    def __init__(self, root: str, paths: list[str], labels: list[int]):
        self.root, self.paths, self.labels = root, paths, labels
        self._fs = None

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        if self._fs is None:
            self._fs, _ = files.filesystem(self.root)
        return torch.from_numpy(files.read_image_at(self._fs, self.paths[i])), self.labels[i]

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_fs": None}


class EpochRows(Sampler):
    """This rank's rows of epoch `epoch` (set before each pass): see the module docstring.
    Iterated in the rank's own process, so persistent loader workers get each epoch's rows."""

    def __init__(self, n: int, rank: int, world: int, seed: int, shuffle: bool):
        self.n, self.rank, self.world, self.seed, self.shuffle = n, rank, world, seed, shuffle
        self.epoch = 0

    def __len__(self) -> int:
        return self.n // self.world

    def __iter__(self) -> Iterator[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * _SEED_STRIDE + self.epoch)
            order = torch.randperm(self.n, generator=g)
        else:
            order = torch.arange(self.n)
        return iter(order[self.rank::self.world][:len(self)].tolist())


def default_workers(cpus_per_worker: float) -> int:
    """Loader processes per rank when the spec does not say: the CPUs the Train worker
    reserves less the one it trains on, at least 1 (decoding then overlaps training)."""
    return max(1, int(cpus_per_worker) - 1)


def image_batches(source, units: list[dict], *, rank: int = 0, world: int = 1, seed: int = 0,
                  shuffle: bool = True, workers: int = 1, pin_memory: bool = False):
    """`Batches` (dlopt.ml.streams) of an image split's rows on this rank, read by a
    DataLoader with `workers` processes (0: in this process). One loader is alive per split,
    its workers persistent across epochs; a new batch size (the probe's, then the loop's)
    replaces it, and its workers end with it. `pin_memory` (a CUDA rank): batches arrive in
    pinned memory, pinned by the loader's thread, so the loop's copy to the GPU
    (dlopt.ml.devices.to_device) does not pin them again on the training thread."""
    dataset = ImageFiles(source.path, [p for u in units for p in u["files"]],
                         [int(lab) for u in units for lab in u["labels"]])
    sampler = EpochRows(len(dataset), rank, world, seed, shuffle)
    held: dict[int, DataLoader] = {}

    def loader(batch_size: int) -> DataLoader:
        if batch_size not in held:
            held.clear()
            held[batch_size] = DataLoader(dataset, batch_size=batch_size, sampler=sampler,
                                          num_workers=workers, persistent_workers=workers > 0,
                                          pin_memory=pin_memory)
        return held[batch_size]

    def batches(batch_size: int, epoch: int = 0):
        sampler.epoch = epoch
        for x, y in loader(batch_size):
            yield x, y

    return batches


def split_batches(source, units: dict, split: str, *, rank: int, world: int, seed: int,
                  workers: int, shuffle_buffer: int, pin_memory: bool = False) -> Optional[object]:
    """One split's `Batches` as the loop reads it: "train" sharded over the ranks and
    shuffled (unless `shuffle_buffer` is 0), the others whole and in order."""
    if not units.get(split):
        return None
    if split == "train":
        return image_batches(source, units[split], rank=rank, world=world, seed=seed,
                             shuffle=shuffle_buffer > 0, workers=workers, pin_memory=pin_memory)
    return image_batches(source, units[split], seed=seed, shuffle=False, workers=workers,
                         pin_memory=pin_memory)
