"""Splits read batch by batch (`Streamed`), a source's `Datasets`, and the training split's
normalization statistics from one streaming pass (docs/architecture.md, "Streamed data
sources").

The switch between the two data paths is `dlopt.ml.data.load`: a spec with `Data.source`
comes here, every built-in or custom in-memory dataset stays on the tensors of dlopt.ml.data.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, Iterable, Iterator, Optional

import numpy as np
import torch

from dlopt.ml import source_files as files
from dlopt.ml.sources import PROBE_ROWS, Layout, SourceError, scan
from dlopt.ml.splits import WITHHELD, Datasets, Split
from dlopt.ml.transform import InputTransform
from dlopt.spec import Data

EXAMPLE_ROWS = 2
# batches: (batch_size, epoch) -> raw (x, y) tensor batches of the whole split (or, under Ray
# Train, of this rank's shard)
Batches = Callable[[int, int], Iterable[tuple[torch.Tensor, torch.Tensor]]]


@dataclass
class Streamed:
    """A split that is never whole in memory: `batches(batch_size, epoch)` yields its raw
    rows; `rows` counts them (all ranks together). `x`/`y`: the first PROBE_ROWS rows,
    transformed like an in-memory split, for what needs an example input (FLOPs, latency,
    ONNX export and agreement, quantization calibration): those figures are taken on them."""

    rows: int
    batches: Batches
    x: torch.Tensor
    y: torch.Tensor
    # raw batch (on the device) -> what the model trains on; None: the model takes raw rows
    prepare: Optional[Callable[[torch.Tensor], torch.Tensor]] = None

    def __len__(self) -> int:
        return self.rows


def plain_batches(source, units: list[dict], task: str) -> Batches:
    """A split read in this process, unit by unit (no Ray): checks, tests, `dlopt evaluate`."""

    def batches(batch_size: int, epoch: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        xs, ys = [], []
        for unit in units:
            x, y = files.read_unit(source, unit)
            xs.append(x)
            ys.append(y)
            n = sum(len(b) for b in ys)
            if n >= batch_size:
                x, y = np.concatenate(xs), np.concatenate(ys)
                full = n - n % batch_size
                for i in range(0, full, batch_size):
                    yield torch.from_numpy(x[i:i + batch_size].copy()), labels(y[i:i + batch_size], task)
                xs, ys = [x[full:]], [y[full:]]
        if sum(len(b) for b in ys):
            yield torch.from_numpy(np.concatenate(xs).copy()), labels(np.concatenate(ys), task)

    return batches


def labels(y, task: str) -> torch.Tensor:
    """Labels as the loss takes them: int64 classes, or float32 (n, 1) regression targets."""
    y = torch.as_tensor(np.asarray(y))
    return y.long() if task == "classification" else y.float().reshape(len(y), -1)


def fit_transform(batches: Iterable, task: str) -> InputTransform:
    """Standardization statistics from one pass over the training split's raw batches
    (float64 sums, so the pass streams): per feature for rows, per channel for images
    (uint8 pixels scaled to [0, 1] first), as the in-memory datasets fit theirs
    (dlopt.ml.transform.standardizer); regression inputs are left as they are."""
    total = squares = None
    count, divisor = 0, 1.0
    for x in batches:
        x = np.asarray(x)
        if total is None:
            divisor = 255.0 if x.dtype == np.uint8 else 1.0
            axes = (0, 2, 3) if x.ndim == 4 else (0,)
        if task != "classification":
            return InputTransform(divisor)
        x = x.astype(np.float64) / divisor
        s, q = x.sum(axes, keepdims=True)[0], (x * x).sum(axes, keepdims=True)[0]
        total, squares = (s, q) if total is None else (total + s, squares + q)
        count += x.size // s.size
    if total is None:
        return InputTransform(divisor)
    mean = total / count
    std = np.sqrt(np.maximum(squares / count - mean * mean, 0.0))
    std = std + 1e-6 if divisor != 1.0 else np.where(std > 1e-6, std, 1.0)
    return InputTransform(divisor, mean.astype(np.float32), std.astype(np.float32))


def layout(data: Data, seed: int) -> Layout:
    """The source's layout; SourceError (lines naming the field) when it has problems."""
    found = scan(data, seed)
    if found.problems:
        raise SourceError(list(found.problems))
    return found


def load(data: Data, seed: int, with_test: bool = False,
         transform: Optional[InputTransform] = None) -> Datasets:
    """A source's splits as `Streamed`, read in this process. `transform`: the training
    split's statistics when already known, else one pass over the training split here."""
    found = layout(data, seed)
    read = {s: plain_batches(data.source, found.units[s], data.task) for s in found.units}
    if transform is None:
        transform = fit_transform((x.numpy() for x, _ in read["train"](1024, 0)), data.task)
    return streamed_datasets(data, Shape.of(found), transform, read, with_test)


@dataclass(frozen=True)
class Shape:
    """What the loop needs to know of a source besides its batches (JSON, to Ray workers)."""

    rows: dict
    num_classes: int
    input_shape: tuple

    @classmethod
    def of(cls, found: Layout) -> "Shape":
        return cls(dict(found.rows), found.num_classes, tuple(found.input_shape))

    def to_json(self) -> dict:
        return {"rows": self.rows, "num_classes": self.num_classes,
                "input_shape": list(self.input_shape)}

    @classmethod
    def from_json(cls, d: dict) -> "Shape":
        return cls(d["rows"], d["num_classes"], tuple(d["input_shape"]))


def streamed_datasets(data: Data, shape: Shape, transform: InputTransform, read: dict,
                      with_test: bool = False) -> Datasets:
    """`Datasets` of streamed splits, `read[split]` giving each one's batches (read here, or
    Ray Data streams under Ray). The probe rows come from the validation split's first
    batch; the model's input example from its first rows."""
    task = data.task
    vx, vy = next(iter(read["val"](PROBE_ROWS, 0)))

    def streamed(split: str) -> Optional[Streamed]:
        if not shape.rows.get(split):
            return None
        return Streamed(shape.rows[split], read[split],
                        torch.from_numpy(transform.apply(vx.numpy())), vy, transform.apply_torch)

    classification = task == "classification"
    test = streamed("test") if with_test else WITHHELD
    return Datasets(train=streamed("train"), val=streamed("val"), test=test, task=task,
                    num_classes=shape.num_classes if classification else 0,
                    input_shape=shape.input_shape,
                    out_features=shape.num_classes if classification else 1,
                    transform=transform,
                    raw_test=(replace(test, x=vx, prepare=None) if isinstance(test, Streamed) else test),
                    raw_example=vx[:EXAMPLE_ROWS].numpy())


def is_streamed(split) -> bool:
    return isinstance(split, Streamed)


def as_split(split) -> Split:
    """The probe of a streamed split as an in-memory Split (what a stage's example takes)."""
    return Split(split.x, split.y)
