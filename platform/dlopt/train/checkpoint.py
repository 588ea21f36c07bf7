"""The loop's checkpoint: what every strategy writes on rank 0 and a restart reads.

`CHECKPOINT_FILE` holds the epoch, step, LR schedule, stage states and last metrics, plus
the model and optimizer state under DDP; FSDP and pipeline ranks write their own parts
beside it under `SHARDED_DIR` (dlopt.train.strategies). Ray merges every rank's files into
one checkpoint dir. In memory the checkpoint is a `TrialCheckpoint`; on disk it stays the
plain dict `torch.save` wrote before it was typed, so existing checkpoints still restore.
"""
from __future__ import annotations

import dataclasses
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch

CHECKPOINT_FILE = "checkpoint.pt"
SHARDED_DIR = "sharded"  # every FSDP/pipeline rank's own part, merged by Ray


@dataclass(frozen=True)
class TrialCheckpoint:
    """One epoch's checkpoint of one trial.

    `model`/`optimizer` are state dicts where rank 0 holds everything (DDP, one process);
    FSDP and pipeline ranks read their parts from `sharded`, a local directory (never saved:
    it is where this process found the parts when it loaded the checkpoint)."""

    epoch: int
    step: int
    scheduler: dict
    stages: list = field(default_factory=list)  # each stage's state_dict, in spec order
    metrics: dict = field(default_factory=dict)  # the epoch's metrics
    model: Optional[dict] = None
    optimizer: Optional[dict] = None
    sharded: Optional[str] = None
    scaler: Optional[dict] = None  # fp16's GradScaler state (None: no scaler, or older files)

    def with_weights(self, model: dict, optimizer: dict) -> "TrialCheckpoint":
        return dataclasses.replace(self, model=model, optimizer=optimizer)

    def with_scaler(self, scaler: dict) -> "TrialCheckpoint":
        return dataclasses.replace(self, scaler=scaler)

    def to_saved(self) -> dict[str, Any]:
        """The dict written to CHECKPOINT_FILE (its format predates this class)."""
        saved = {"scheduler": self.scheduler, "epoch": self.epoch, "step": self.step,
                 "stages": self.stages, "metrics": self.metrics}
        if self.model is not None:
            saved.update(model=self.model, optimizer=self.optimizer)
        if self.scaler is not None:
            saved["scaler"] = self.scaler
        return saved

    @classmethod
    def from_saved(cls, saved: dict, sharded: Optional[str] = None) -> "TrialCheckpoint":
        return cls(epoch=saved["epoch"], step=saved["step"], scheduler=saved["scheduler"],
                   stages=list(saved.get("stages", [])), metrics=dict(saved.get("metrics", {})),
                   model=saved.get("model"), optimizer=saved.get("optimizer"), sharded=sharded,
                   scaler=saved.get("scaler"))


def save(checkpoint: TrialCheckpoint, directory: Path) -> None:
    torch.save(checkpoint.to_saved(), Path(directory) / CHECKPOINT_FILE)


def keep_local_copy(checkpoint_dir: Path) -> Optional[str]:
    """Copy a checkpoint's sharded part out of Ray's `as_directory()` (which may be a temp
    download deleted on exit) so the loop can load it after setup; None when absent."""
    src = Path(checkpoint_dir) / SHARDED_DIR
    if not src.is_dir():
        return None
    dst = Path(tempfile.mkdtemp(prefix="dlopt-sharded-")) / SHARDED_DIR
    shutil.copytree(src, dst)
    return str(dst)


def load_checkpoint(directory: Path) -> TrialCheckpoint:
    """The checkpoint in `directory`, its sharded part (if any) copied somewhere that outlives
    `directory`. Tensors load onto the CPU whatever device wrote them (docs/architecture.md,
    "Devices"): a checkpoint from `cuda:1` loads where one GPU is visible, and loading into the
    model and optimizer copies them to the device they are on."""
    saved = torch.load(Path(directory) / CHECKPOINT_FILE, map_location="cpu", weights_only=True)
    return TrialCheckpoint.from_saved(saved, keep_local_copy(Path(directory)))
