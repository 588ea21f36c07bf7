"""Dataset splits as tensors, and the guard that keeps the test split out of training.

Shared by the built-in datasets (dlopt.ml.data) and the local vision datasets
(dlopt.ml.vision_data).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from dlopt.ml.transform import InputTransform


@dataclass
class Split:
    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return len(self.y)


class TestSplitWithheld(RuntimeError):
    """Raised when training or selection code touches the test split."""

    __test__ = False  # not a pytest test class despite the name


class Withheld:
    """Stands in for the test split during training and selection: any use raises.

    A guard rather than None so that code which forgets to check cannot silently fall back
    to something else, and code which tries to read the test split fails loudly.
    """

    def _refuse(self, *args, **kwargs):
        raise TestSplitWithheld("the test split is withheld until after model selection; "
                                "only dlopt.registry.evaluation loads it (data.load(..., with_test=True))")

    __len__ = __iter__ = __getitem__ = __bool__ = _refuse

    def __getattr__(self, name: str):
        if name.startswith("__"):  # copy/pickle protocol probes stay ordinary
            raise AttributeError(name)
        self._refuse()

    def __repr__(self) -> str:
        return "Withheld()"


WITHHELD = Withheld()


@dataclass
class Datasets:
    train: Split
    val: Split
    test: Optional[Split]  # WITHHELD unless loaded with_test=True; None when there is none
    task: str  # "classification" | "regression"
    num_classes: int  # 0 for regression
    input_shape: tuple[int, ...]
    out_features: int
    # the transform fitted on the training split (raw -> what the model trains on), the test
    # split as the data source gives it (WITHHELD like `test`), and a few raw training rows
    transform: Optional["InputTransform"] = None
    raw_test: Optional[Split] = None
    raw_example: Optional[np.ndarray] = None


def split_indices(y: np.ndarray, val_fraction: float, test_fraction: float, seed: int,
                  stratify: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Seeded (stratified for classification) train/val/test index split."""
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(y))
    strat = y if stratify else None
    test = np.array([], dtype=np.int64)
    if test_fraction > 0:
        idx, test = train_test_split(idx, test_size=test_fraction, random_state=seed, stratify=strat)
        strat = y[idx] if stratify else None
    train, val = train_test_split(idx, test_size=val_fraction / (1 - test_fraction),
                                  random_state=seed + 1, stratify=strat)
    return np.sort(train), np.sort(val), np.sort(test)
