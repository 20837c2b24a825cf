"""The local history: recent readings on disk, bounded by age and size.

It is what the review page plots, and the embedded store when no InfluxDB is configured. One
SQLite file (WAL mode) with one row per reading: machine, time, and the fields as JSON (values
and, for fields that were not good, their quality). Old rows go first when ``retention_h`` or
``max_bytes`` is exceeded; pruning runs at most every ``prune_every_s``, in steps (see below).

One index, ``(machine, time_ns)``: it serves the queries (one machine over a window), the
oldest and newest time (:meth:`History.span`: two seeks per machine) and pruning by age (each
machine's range before the cut, deleted in rowid order). Older versions also kept a
``(time_ns)`` index for those two; it cost every insert and is dropped when a file is opened,
its rows kept.

What an insert costs, and what that trades (``benchmarks/bench_history.py``: 210 machines × 50
floats every 100 ms, the file at its 256 MB budget, so every reading is also deleted later):

- Commits. With 210 machines every commit touches one index page per machine (their rows sort
  apart), so writing those pages to the WAL was most of a 100 ms commit. Rows wait in memory and
  go in one transaction at most every ``commit_every_s`` (1 s; sooner past
  ``_MAX_PENDING_BYTES``): an index page is written once per ten readings, not once per
  reading. The history is a convenience store for plots and refits, not the durable spool
  (what the sinks must receive is committed to the spool every flush), so the price is
  bounded and stated: another connection (the review page's plots, a refit) sees readings up
  to ``commit_every_s`` late, and a crash of the agent loses at most that much history. This
  object's own reads see everything (they commit what waits first); :meth:`History.close`
  commits.
- ``secure_delete=OFF``. Debian builds SQLite with it on: every deleted row was overwritten
  with zeros and every freed page written out again, through the WAL and the checkpoint, which
  doubled the cost of pruning. The bytes of pruned readings may stay in free pages until new
  rows reuse them (soon: the file is kept at its budget); they are the same kind of plant data
  the file holds anyway, and nothing relies on their erasure.
- ``wal_autocheckpoint=4000`` pages (SQLite's default 1000) and an 8 MB page cache (default
  2 MB): a page changed by several commits is copied into the file once per checkpoint, and a
  1 s commit of this load (~3 MB) fits the cache instead of spilling to the WAL half-done. The
  WAL file grows to about 16 MB plus one commit, beside ``max_bytes``.
- ``synchronous`` stays NORMAL: in WAL mode a power cut can lose the last commits but never
  damages the file; OFF could, and a history that cannot be opened is worse than one missing
  its last seconds.

Together, on that benchmark: 21.9 → 13.2 µs of CPU per reading (0.44 → 0.26 µs per value),
pruning included; committing every add instead, 17.9 µs.

Pruning in steps. The history's calls run on the agent's event loop, so a long one delays
every device's next poll. A whole prune at that load deletes 30 s of readings (~63,000 rows,
~0.35 s), and over the budget a tenth of the file at once. So :meth:`History.add` prunes in
steps of at most ``max(5,000 rows, twice a commit's rows)``: one step when ``prune_every_s``
has passed, then one more after each commit until nothing is left to drop. Deleting as many
rows costs the same; the loop waits for one step at a time. :meth:`History.prune` called
without ``max_rows`` still does it all at once.

Failures. The history must never stop the agent: what the sinks receive does not go through
it. A file that is not a database or is damaged (SQLite's NOTADB, CORRUPT) is moved aside as
``history.db.damaged-<UTC time>`` (with its WAL) at open or when a write meets it, and a fresh
one is started; the old readings are not salvaged (the sinks have them). A write that fails
otherwise (disk full, I/O error) loses the readings of that commit, counted in ``rows_lost``;
``history_write_failed`` is logged once until a write succeeds again
(``history_write_recovered``).

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
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import orjson
import structlog

from agent.sqlitetx import move_aside, write_transaction
from connectors.types import FieldValue, Reading

_SCHEMA = """
CREATE TABLE IF NOT EXISTS readings (
    machine TEXT NOT NULL,
    time_ns INTEGER NOT NULL,
    fields TEXT NOT NULL,
    quality TEXT
);
CREATE INDEX IF NOT EXISTS readings_by_machine_time ON readings (machine, time_ns);
DROP INDEX IF EXISTS readings_by_time;
"""

#: (oldest, newest) time without a by-time index: the machines one index seek apart (a skip
#: scan), then each one's first and last time, two more seeks.
_SPAN = """
WITH RECURSIVE machines(name) AS (
    SELECT min(machine) FROM readings
    UNION ALL
    SELECT (SELECT min(machine) FROM readings WHERE machine > name)
    FROM machines WHERE name IS NOT NULL
)
SELECT min((SELECT min(time_ns) FROM readings WHERE machine = name)),
       max((SELECT max(time_ns) FROM readings WHERE machine = name))
FROM machines WHERE name IS NOT NULL
"""

#: Rows older than the cut: the machines as in ``_SPAN``, each one's index range before the
#: cut, then deleted in rowid order (the table page after page, as it was written).
_PRUNE_AGE = """
DELETE FROM readings WHERE rowid IN (
    WITH RECURSIVE machines(name) AS (
        SELECT min(machine) FROM readings
        UNION ALL
        SELECT (SELECT min(machine) FROM readings WHERE machine > name)
        FROM machines WHERE name IS NOT NULL
    )
    SELECT r.rowid FROM machines JOIN readings r ON r.machine = machines.name AND r.time_ns < ?
    LIMIT ?
)
"""

#: Set at every open (see the module's docstring for why each).
_PRAGMAS = (
    "journal_mode=WAL",
    "synchronous=NORMAL",
    "secure_delete=OFF",
    "wal_autocheckpoint=4000",
    "cache_size=-8000",
)

#: Bytes of JSON waiting for a commit beyond which ``add`` commits at once.
_MAX_PENDING_BYTES = 4 << 20
#: Rows a prune made by ``add`` deletes at most (more when a commit holds more than half as
#: many): tens of ms of the event loop at a time.
PRUNE_STEP_ROWS = 5_000

_Row = tuple[str, int, str, str | None]

log = structlog.get_logger(__name__)


def _is_damage(exc: sqlite3.Error) -> bool:
    """Not a database, or a damaged one (not: full, locked, read-only, I/O...)."""
    code = getattr(exc, "sqlite_errorcode", None)
    return code is not None and code & 0xFF in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB)


class History:
    """Recent readings of every machine, on disk."""

    def __init__(
        self,
        path: Path,
        *,
        max_bytes: int = 256 << 20,
        retention_h: float = 72.0,
        prune_every_s: float = 30.0,
        commit_every_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.max_bytes = max_bytes
        self.retention_ns = int(retention_h * 3600e9)
        self.prune_every_s = prune_every_s
        self.commit_every_s = commit_every_s
        self._clock = clock
        self.rows_lost = 0  # readings whose commit failed
        self._failing: str | None = None  # the error of the last write, until one succeeds
        try:
            self._db = self._connect()
        except sqlite3.DatabaseError as exc:
            if not _is_damage(exc):
                raise
            self._db = self._replace_damaged(exc)
        self._last_prune = 0.0
        # a step of pruning stopped at its limit with more to drop: "age" or "budget"
        self._prune_left: str | None = None
        self._last_commit_rows = 0
        self._pending: list[_Row] = []
        self._pending_since = 0.0
        self._pending_bytes = 0
        self.rows_added = 0
        self.rows_pruned = 0

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            for pragma in _PRAGMAS:
                db.execute(f"PRAGMA {pragma}")
            db.executescript(_SCHEMA)
        except sqlite3.Error:
            db.close()
            raise
        return db

    def _replace_damaged(self, exc: sqlite3.Error) -> sqlite3.Connection:
        """Move the damaged file aside and open a fresh one."""
        aside, _ = move_aside(self.path)
        log.error("history_damaged", path=str(self.path), damage=str(exc), moved_to=str(aside),
                  note="a fresh history is started; the sinks have the readings")  # fmt: skip
        return self._connect()

    def _write_failed(self, exc: sqlite3.Error, lost: int) -> None:
        self.rows_lost += lost
        if _is_damage(exc):
            self._db.close()
            self._db = self._replace_damaged(exc)
            return
        if self._failing is None:
            log.warning("history_write_failed", path=str(self.path), error=str(exc),
                        lost_rows=lost, note="the sinks are not affected; logged once until "
                        "a write succeeds")  # fmt: skip
        self._failing = str(exc)

    def add(self, readings: Iterable[Reading]) -> None:
        """Store readings: committed with the next ones at most ``commit_every_s`` later."""
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
        now = self._clock()
        if not self._pending:
            self._pending_since = now
        self._pending += rows
        self._pending_bytes += sum(len(row[2]) for row in rows)
        self.rows_added += len(rows)
        committed = (
            now - self._pending_since >= self.commit_every_s
            or self._pending_bytes >= _MAX_PENDING_BYTES
        )
        if committed:
            self.commit()
        if now - self._last_prune > self.prune_every_s or (committed and self._prune_left):
            try:
                self.prune(max_rows=max(PRUNE_STEP_ROWS, 2 * self._last_commit_rows))
            except sqlite3.Error as exc:
                self._write_failed(exc, 0)

    @property
    def prune_pending(self) -> bool:
        """Whether the last prune stopped at its ``max_rows`` with more to drop."""
        return self._prune_left is not None

    def commit(self) -> None:
        """Write the readings that wait, in one transaction (query, span and prune do it first)."""
        if not self._pending:
            return
        rows, self._pending = self._pending, []  # a failed write loses them, it does not grow
        self._pending_bytes = 0
        self._last_commit_rows = len(rows)
        try:
            with write_transaction(self._db):
                self._db.executemany("INSERT INTO readings VALUES (?, ?, ?, ?)", rows)
        except sqlite3.Error as exc:
            self._write_failed(exc, len(rows))
            return
        if self._failing is not None:
            log.info("history_write_recovered", path=str(self.path), failed_with=self._failing,
                     lost_rows=self.rows_lost)  # fmt: skip
            self._failing = None

    def query(
        self, machine: str, start_ns: int, end_ns: int, fields: Iterable[str] | None = None
    ) -> list[tuple[int, dict[str, FieldValue], dict[str, Any]]]:
        """(time_ns, values, quality) of ``machine`` in [start, end], oldest first."""
        self.commit()
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
        self.commit()
        row = self._db.execute(_SPAN).fetchone()
        return None if row is None or row[0] is None else (int(row[0]), int(row[1]))

    def size_bytes(self) -> int:
        """Bytes in use: the file's pages less its free ones (which new rows reuse)."""
        pages = self._db.execute("PRAGMA page_count").fetchone()[0]
        free = self._db.execute("PRAGMA freelist_count").fetchone()[0]
        page = self._db.execute("PRAGMA page_size").fetchone()[0]
        return int((pages - free) * page)

    def prune(self, max_rows: int | None = None) -> int:
        """Drop rows older than the retention, then the oldest until under ``max_bytes``;
        return the rows dropped.

        ``max_rows``: drop at most that many; what is left goes at the next steps (``add``
        makes one after each commit until done). ``None``: everything now.

        Age: older than the newest reading of any machine less ``retention_h``, by time and
        not by arrival (a late reading with an old time goes too), one index range per
        machine. Over the budget, the oldest rows go until 90 % of it is in use. No VACUUM:
        freed pages are reused by new rows, so the file stays near its high-water mark (at
        most about ``max_bytes``), and a prune never rewrites the file while the agent waits
        (it took ~2 s at 256 MB).
        """
        self._last_prune = self._clock()
        # a step that stopped at its limit goes on down to 90 % of the budget, as a whole
        # prune would have
        goal = self.max_bytes * (0.9 if self._prune_left == "budget" else 1.0)
        self._prune_left = None
        before = self.rows_pruned
        left = max_rows if max_rows is not None else -1  # SQLite: LIMIT -1 is no limit
        span = self.span()  # commits what waits
        if span is None:
            return 0
        cutoff = span[1] - self.retention_ns
        if span[0] < cutoff:
            deleted = max(self._db.execute(_PRUNE_AGE, (cutoff, left)).rowcount, 0)
            self.rows_pruned += deleted
            if max_rows is not None:
                left -= deleted
                if left <= 0:
                    self._prune_left = "age"  # perhaps more old rows; the budget waits too
                    return self.rows_pruned - before
        for _ in range(10):  # B-tree pages free up only when emptied: a pass may fall short
            used = self.size_bytes()
            if used <= goal:
                break
            if max_rows is not None and left <= 0:
                self._prune_left = "budget"
                break
            lo, hi = self._db.execute("SELECT min(rowid), max(rowid) FROM readings").fetchone()
            if lo is None:
                break
            rows = hi - lo + 1  # appended in arrival order: rowids are (nearly) dense
            drop = max(1, int(rows * (1 - 0.9 * self.max_bytes / used)) + 1)
            if max_rows is not None:
                drop = min(drop, left)
            deleted = max(
                self._db.execute(
                    "DELETE FROM readings WHERE rowid IN "
                    "(SELECT rowid FROM readings ORDER BY rowid LIMIT ?)",
                    (drop,),
                ).rowcount,
                0,
            )
            self.rows_pruned += deleted
            left -= deleted
        return self.rows_pruned - before

    def close(self) -> None:
        """Commit what waits and close the file."""
        try:
            self.commit()
        finally:
            self._db.close()
