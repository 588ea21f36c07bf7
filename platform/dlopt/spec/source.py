"""`Data.source`: data read in a stream instead of held in memory (the API's Source section,
kept apart from dlopt.spec.sections for its length)."""
from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field, model_validator

from dlopt.spec.fields import _Base


class Source(_Base):
    """Data that does not fit in memory, read in a stream by Ray Data (dlopt.ml.sources,
    dlopt.runtime.streaming; docs/architecture.md, "Streamed data sources").

    `path` is a local path or a storage URI pyarrow's filesystems accept (s3://, gs://, ...).
    Layouts: parquet: *.parquet files; images: one subfolder per class; numpy: .npy shards
    under `path/<features>/` with the labels under `path/<label>/` (same file names); hf: a
    Hugging Face dataset saved with `save_to_disk` (its Arrow files); function: `function`
    names "pkg.module:fn", fn(seed) -> ray.data.Dataset, or a dict of them by split;
    mnist, fashion_mnist, cifar10: the built-in datasets' standard files under `path` (the
    folder `Data.root` names for the in-memory `Data.dataset` of the same name: IDX files,
    CIFAR-10's binary batches), streamed instead of loaded whole into every worker.
    Splits: the source's own train/ (val/ or validation/, test/) subfolders or files when it
    has them, else a hash of each row's file and position with Experiment.seed; the built-in
    formats: the official test files are the test split, validation is hashed out of the
    training files (`val_fraction`; `test_fraction` is not used).
    """

    format: Literal["parquet", "images", "numpy", "hf", "function", "mnist", "fashion_mnist",
                    "cifar10"]
    path: Optional[str] = None
    function: Optional[str] = None
    # the label column (parquet, hf, function) or the labels' folder (numpy: default "y")
    label: Optional[str] = None
    # the input column (a list/tensor column or an image), else every column but the label;
    # numpy: the features' folder (default "x")
    features: Optional[str] = None
    # each row reshaped to this (e.g. [1, 28, 28] for a 784-value column)
    shape: Optional[list[int]] = None
    # classification: the number of classes (default: from the labels' metadata or folders);
    # a label outside 0..num_classes-1 is refused before Ray starts
    num_classes: Optional[int] = Field(None, ge=2)
    # rows each worker shuffles in a bounded buffer (0: the source's order); an image folder
    # read by the rank loader shuffles the whole split each epoch (0: the source's order)
    shuffle_buffer: int = Field(1024, ge=0)
    # who reads the rows under Ray: "ray_data" (Ray Data tasks, every format), "torch" (each
    # rank's own DataLoader over its share of the files: image folders only, where it is
    # faster, dlopt.ml.rank_loader); "auto": "torch" for images, else "ray_data"
    reader: Literal["auto", "ray_data", "torch"] = "auto"
    # the rank loader's DataLoader processes per rank (0: in the rank's own process); unset:
    # Resources.cpus_per_worker - 1, at least 1
    loader_workers: Optional[int] = Field(None, ge=0)

    @model_validator(mode="after")
    def _where(self):
        if self.format == "function":
            if not self.function or ":" not in self.function:
                raise ValueError("function: format='function' needs function='pkg.module:fn' "
                                 "returning a ray.data.Dataset")
        elif not self.path:
            raise ValueError(f"path: format={self.format!r} reads files; set path to a local "
                             "folder or a storage URI")
        if self.reader == "torch" and self.format != "images":
            raise ValueError(f"reader: 'torch' reads image folders only (format='images'); "
                             f"format={self.format!r} streams through Ray Data (reader='auto')")
        if self.shape is not None and any(d < 1 for d in self.shape):
            raise ValueError("shape: every dimension must be >= 1")
        return self

    def label_name(self) -> str:
        return self.label or ("y" if self.format == "numpy" else "label")
