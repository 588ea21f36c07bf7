"""Deleting the checkpoints Tune drops only once no saved experiment state names them.

Why: Tune keeps `CheckpointConfig(num_to_keep)` checkpoints per trial and deletes older ones
at once; to keep its saved experiment state from naming a deleted checkpoint it then forces
a save of the whole state (every trial) each time a trial has written num_to_keep
checkpoints. At 1,000 trials that is about one save per trial, each as large as the sweep:
the sweep's cost grew with the square of its size (benchmarks/sweep_scale.py). dlopt turns
the forced saves off (`ray_compat.checkpoint_deletes_to`) and deletes a dropped checkpoint
here instead, after the saves that could still name it (docs/architecture.md, "Tune's state
and checkpoints").

The order this relies on: Tune drops a checkpoint and saves its state on the same thread
(the driver's Tune loop); a save writes every trial's state, then asks each callback for its
state (`get_state`), then starts copying the files to the storage path in the background. A
checkpoint dropped before save N is named by no state from save N on; once save N+1 has
started, the copy of save N has had a whole save period to finish (Tune skips a copy while
the previous one runs, hence LAG = 2 saves, not 1). After `Tuner.fit` returns, Tune's last
save was forced and waited for: every dropped checkpoint can go.
"""
from __future__ import annotations

from collections import deque

from ray.tune import Callback

from dlopt.runtime import ray_compat

LAG = 2  # saves between a checkpoint's drop and its deletion


class DroppedCheckpoints(Callback):
    """Checkpoints Tune dropped, deleted LAG experiment-state saves later (see the module note)."""

    def __init__(self) -> None:
        self._dropped: list[tuple] = []  # since the last save
        self._waiting: deque[list[tuple]] = deque()  # one list per save, oldest first
        self.deleted = 0

    def __getstate__(self):
        # Tune pickles its callbacks into tuner.pkl; what waits here belongs to this process
        return {"_dropped": [], "_waiting": deque(), "deleted": 0}

    def drop(self, fs, fs_path: str) -> None:
        """Tune's checkpoint manager calls this where it would delete `fs_path`."""
        self._dropped.append((fs, fs_path))

    def get_state(self):
        # Tune calls this in every experiment-state save, after writing the trials' state
        self._waiting.append(self._dropped)
        self._dropped = []
        while len(self._waiting) > LAG:
            self._delete(self._waiting.popleft())
        return None  # nothing of this callback's to save

    def delete_all(self) -> None:
        """After `Tuner.fit` returned (its last state save forced and waited for)."""
        while self._waiting:
            self._delete(self._waiting.popleft())
        self._delete(self._dropped)
        self._dropped = []

    @property
    def pending(self) -> int:
        return len(self._dropped) + sum(len(batch) for batch in self._waiting)

    def _delete(self, batch: list[tuple]) -> None:
        for fs, fs_path in batch:
            ray_compat.delete_checkpoint(fs, fs_path)
        self.deleted += len(batch)
