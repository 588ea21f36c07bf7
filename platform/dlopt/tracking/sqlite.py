"""A local SQLite tracking store in WAL mode with `synchronous=NORMAL`, for the sweep's driver.

MLflow opens SQLite with SQLite's defaults (rollback journal, `synchronous=FULL`): every
write (a `log_batch`, a `set_tag`) is its own transaction with several fsyncs, and the
driver makes several per trial. In WAL mode with `synchronous=NORMAL` a commit appends to
the write-ahead log without an fsync; the database stays consistent after a crash of the
process or the machine (a power loss may drop the last commits, which --resume rewrites).
Readers (`dlopt ui`) no longer wait on the writer either. MLflow has no setting for this,
and SQLAlchemy's documented way is a "connect" event listener: hand-written here, applied
only to the database files named (`use_wal`), so other SQLite engines in the process (a
caller's own) are left alone. WAL needs a local file system (not NFS): a path given as
`sqlite:///` on a network share should move to a server store (clusters/README.md).
"""
from __future__ import annotations

import contextlib
import logging
import os
from typing import Iterator

from dlopt.tracking.uris import sqlite_path

log = logging.getLogger(__name__)

_FILES: set[str] = set()
_LISTENING = False


def _on_connect(dbapi_conn, record) -> None:
    if type(dbapi_conn).__module__.split(".")[0] != "sqlite3":
        return
    cur = dbapi_conn.cursor()
    try:
        files = {os.path.realpath(row[2]) for row in cur.execute("PRAGMA database_list") if row[2]}
        if files & _FILES:
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
    finally:
        cur.close()


def use_wal(uri: str) -> bool:
    """Connections opened from now on to the SQLite file of `uri` use WAL + synchronous=NORMAL;
    False (nothing changed) for any other store. Process-wide until `wal_restored` ends."""
    global _LISTENING
    db = sqlite_path(uri)
    if db is None:
        return False
    _FILES.add(os.path.realpath(db))
    if not _LISTENING:
        from sqlalchemy import event
        from sqlalchemy.engine import Engine

        event.listen(Engine, "connect", _on_connect)
        _LISTENING = True
    return True


@contextlib.contextmanager
def wal_restored() -> Iterator[None]:
    """Inside the block `use_wal` may add files and SQLAlchemy's process-wide "connect"
    listener; after it the files named and the listener are as before (the listener removed
    when the block added it), so a sweep leaves no hook in the caller's process
    (docs/architecture.md, "Logging and the terminal": `dlopt.run()` leaves the process as
    found). Connections already open keep their journal mode."""
    global _LISTENING
    files, listening = set(_FILES), _LISTENING
    try:
        yield
    finally:
        _FILES.clear()
        _FILES.update(files)
        if _LISTENING and not listening:
            from sqlalchemy import event
            from sqlalchemy.engine import Engine

            event.remove(Engine, "connect", _on_connect)
            _LISTENING = False


def listening() -> bool:
    """The "connect" listener is installed (for tests of `wal_restored`)."""
    return _LISTENING
