"""The durable side of the tracking write queue: an append-only journal on local disk.

Every MLflow write the driver queues (dlopt.tracking.store.Tracker) is a plain JSON record,
appended here before it is tried; once the store has taken it a `done` mark follows. A
driver killed with writes queued (an MLflow outage, then SIGKILL) leaves them in this file,
beside Tune's experiment state in the sweep's storage directory (on the driver's disk when
that is a URI: dlopt.runtime.storage.journal_dir), and `--resume` replays
them in order before the sweep goes on (docs/fault-matrix.md).

Hand-written because neither MLflow nor Ray offers one: MLflow's async logging queue lives
in memory, and Tune does not deliver a result to callbacks again after a restore. The format
is JSON lines so a half-written last line (the driver killed mid-append) is simply skipped:

    {"seq": 7, "op": "log_batch", "ref": "a1b2_00001", "metrics": [[key, value, ts, step]]}
    {"done": 7}

Records reach the OS at once (one write(2) each: they survive the process being killed);
`sync` fsyncs them in batches (once per Tune event while writes wait), which is what
protects them from the machine itself going down. No Ray, no MLflow.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

NAME = "dlopt-tracking-journal.jsonl"
# Compact (truncate) a journal whose every record is done once it grows past this.
COMPACT_BYTES = 1 << 20


class Journal:
    """Append-only records of queued tracking writes; `pending()` is what the store lacks."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd: Optional[int] = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self._unsynced = False

    def pending(self) -> list[dict]:
        """Records without a `done` mark, in the order they were appended."""
        records: dict[int, dict] = {}
        done: set[int] = set()
        with open(self.path, "rb") as f:
            for raw in f:
                try:
                    rec = json.loads(raw)
                except ValueError:
                    continue  # a line cut short when the driver was killed mid-write
                if "done" in rec:
                    done.add(rec["done"])
                elif "seq" in rec:
                    records[rec["seq"]] = rec
        return [records[s] for s in sorted(records) if s not in done]

    def _append(self, rec: dict) -> None:
        os.write(self._fd, (json.dumps(rec, separators=(",", ":")) + "\n").encode())
        self._unsynced = True

    def append(self, rec: dict) -> None:
        self._append(rec)

    def done(self, seq: int) -> None:
        self._append({"done": seq})

    def sync(self) -> None:
        """fsync what was appended since the last sync (one call per batch of records)."""
        if self._unsynced and self._fd is not None:
            os.fsync(self._fd)
            self._unsynced = False

    def all_done(self) -> None:
        """Nothing is pending: drop the records once the file has grown (else keep appending)."""
        if self._fd is not None and os.fstat(self._fd).st_size > COMPACT_BYTES:
            os.ftruncate(self._fd, 0)
            self._unsynced = True

    def close(self, remove: bool) -> None:
        """Close; `remove` deletes the file (every record was taken by the store)."""
        if self._fd is None:
            return
        self.sync()
        os.close(self._fd)
        self._fd = None
        if remove:
            self.path.unlink(missing_ok=True)
