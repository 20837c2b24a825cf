"""The local history: recent readings on disk, bounded by age and size.

It is what the review page plots, and the embedded store when no InfluxDB is configured. One
SQLite file (WAL mode) with one row per reading: machine, time, and the fields as JSON (values
and, for fields that were not good, their quality). Old rows go first when ``retention_h`` or
``max_bytes`` is exceeded; pruning runs at most every ``prune_every_s``.

>>> import tempfile, pathlib
>>> h = History(pathlib.Path(tempfile.mkdtemp()) / "history.db")
>>> h.add([Reading("cnc-01", 1_000, {"speed": 8000.0}, {"line": "l1"})])
>>> h.query("cnc-01", 0, 2_000)
[(1000, {'speed': 8000.0}, {})]
>>> h.close()
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import orjson

from connectors.types import FieldValue, Reading

_SCHEMA = """
CREATE TABLE IF NOT EXISTS readings (
    machine TEXT NOT NULL,
    time_ns INTEGER NOT NULL,
    fields TEXT NOT NULL,
    quality TEXT
);
CREATE INDEX IF NOT EXISTS readings_by_machine_time ON readings (machine, time_ns);
CREATE INDEX IF NOT EXISTS readings_by_time ON readings (time_ns);
"""


class History:
    """Recent readings of every machine, on disk."""

    def __init__(
        self,
        path: Path,
        *,
        max_bytes: int = 256 << 20,
        retention_h: float = 72.0,
        prune_every_s: float = 30.0,
    ) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.max_bytes = max_bytes
        self.retention_ns = int(retention_h * 3600e9)
        self.prune_every_s = prune_every_s
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        self._last_prune = 0.0
        self.rows_added = 0
        self.rows_pruned = 0

    def add(self, readings: Iterable[Reading]) -> None:
        """Store readings (one transaction per call)."""
        rows = [
            (
                r.machine,
                r.time_ns,
                orjson.dumps(r.fields).decode(),  # NaN and ±Inf become null: no value
                orjson.dumps(
                    {k: [q.level.value, q.code, q.text] for k, q in r.quality.items()}
                ).decode()
                if r.quality
                else None,
            )
            for r in readings
        ]
        if not rows:
            return
        with self._db:
            self._db.execute("BEGIN")
            self._db.executemany("INSERT INTO readings VALUES (?, ?, ?, ?)", rows)
        self.rows_added += len(rows)
        if time.monotonic() - self._last_prune > self.prune_every_s:
            self.prune()

    def query(
        self, machine: str, start_ns: int, end_ns: int, fields: Iterable[str] | None = None
    ) -> list[tuple[int, dict[str, FieldValue], dict[str, Any]]]:
        """(time_ns, values, quality) of ``machine`` in [start, end], oldest first."""
        wanted = set(fields) if fields is not None else None
        out = []
        for t, f, q in self._db.execute(
            "SELECT time_ns, fields, quality FROM readings"
            " WHERE machine = ? AND time_ns BETWEEN ? AND ? ORDER BY time_ns",
            (machine, start_ns, end_ns),
        ):
            values = orjson.loads(f)
            if wanted is not None:
                values = {k: v for k, v in values.items() if k in wanted}
            out.append((t, values, orjson.loads(q) if q else {}))
        return out

    def span(self) -> tuple[int, int] | None:
        """(oldest, newest) time held, or ``None`` when empty."""
        row = self._db.execute("SELECT min(time_ns), max(time_ns) FROM readings").fetchone()
        return None if row is None or row[0] is None else (int(row[0]), int(row[1]))

    def size_bytes(self) -> int:
        """Bytes in use: the file's pages less its free ones (which new rows reuse)."""
        pages = self._db.execute("PRAGMA page_count").fetchone()[0]
        free = self._db.execute("PRAGMA freelist_count").fetchone()[0]
        page = self._db.execute("PRAGMA page_size").fetchone()[0]
        return int((pages - free) * page)

    def prune(self) -> int:
        """Drop rows older than the retention, then the oldest until under ``max_bytes``.

        Over the budget, the oldest rows go until 90 % of it is in use. No VACUUM: freed pages
        are reused by new rows, so the file stays near its high-water mark (at most about
        ``max_bytes``), and a prune never rewrites the file while the agent waits (it took
        ~2 s at 256 MB).
        """
        self._last_prune = time.monotonic()
        before = self.rows_pruned
        newest = self.span()
        if newest is None:
            return 0
        cur = self._db.execute(
            "DELETE FROM readings WHERE time_ns < ?", (newest[1] - self.retention_ns,)
        )
        self.rows_pruned += max(cur.rowcount, 0)
        for _ in range(10):  # B-tree pages free up only when emptied: a pass may fall short
            used = self.size_bytes()
            if used <= self.max_bytes:
                break
            lo, hi = self._db.execute("SELECT min(rowid), max(rowid) FROM readings").fetchone()
            if lo is None:
                break
            rows = hi - lo + 1  # appended in arrival order: rowids are (nearly) dense
            drop = max(1, int(rows * (1 - 0.9 * self.max_bytes / used)) + 1)
            cur = self._db.execute(
                "DELETE FROM readings WHERE rowid IN "
                "(SELECT rowid FROM readings ORDER BY rowid LIMIT ?)",
                (drop,),
            )
            self.rows_pruned += max(cur.rowcount, 0)
        return self.rows_pruned - before

    def close(self) -> None:
        self._db.close()
