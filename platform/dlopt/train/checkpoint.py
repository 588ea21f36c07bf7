"""The loop's checkpoint file: what every strategy writes on rank 0 and a restart reads.

`CHECKPOINT_FILE` holds the epoch, step, LR schedule, stage states and last metrics, plus
the model and optimizer state under DDP; FSDP and pipeline ranks write their own parts
beside it (dlopt.train.strategies). Ray merges every rank's files into one checkpoint dir.
"""
from __future__ import annotations

from pathlib import Path

import torch

CHECKPOINT_FILE = "checkpoint.pt"


def save(saved: dict, directory: Path) -> None:
    torch.save(saved, Path(directory) / CHECKPOINT_FILE)


def load_checkpoint(directory: Path) -> dict:
    return torch.load(Path(directory) / CHECKPOINT_FILE, weights_only=True)
