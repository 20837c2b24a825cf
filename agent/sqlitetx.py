"""SQLite helpers shared by the spool, the journal and the history: one write transaction, and
moving a damaged database aside.

>>> import sqlite3
>>> db = sqlite3.connect(":memory:", isolation_level=None)
>>> _ = db.execute("CREATE TABLE t (x)")
>>> with write_transaction(db):
...     _ = db.execute("INSERT INTO t VALUES (1)")
>>> try:
...     with write_transaction(db):
...         _ = db.execute("INSERT INTO t VALUES (2)")
...         raise KeyError("undone")
... except KeyError:
...     pass
>>> db.execute("SELECT x FROM t").fetchall()
[(1,)]
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path


@contextmanager
def write_transaction(db: sqlite3.Connection) -> Iterator[None]:
    """BEGIN IMMEDIATE (a busy file waits up front, not at COMMIT); ROLLBACK on any error.

    ``db`` must be in autocommit mode (``isolation_level=None``).
    """
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        if db.in_transaction:  # SQLite rolls back by itself after some errors (full disk, I/O)
            db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


def move_aside(path: Path) -> tuple[Path, int]:
    """Rename a damaged database (and its WAL, journal) to ``<name>.damaged-<UTC time>``, drop
    its shared-memory file; return the new path and the bytes moved."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
    aside = path.with_name(f"{path.name}.damaged-{stamp}")
    size = 0
    for suffix in ("", "-wal", "-journal"):
        if (src := Path(f"{path}{suffix}")).exists():
            size += src.stat().st_size
            src.replace(f"{aside}{suffix}")
    Path(f"{path}-shm").unlink(missing_ok=True)
    return aside, size
