"""One SQLite write transaction, shared by the spool and the journal.

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
