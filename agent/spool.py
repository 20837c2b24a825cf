"""The spool: a durable, bounded, crash-safe queue of line protocol in front of one sink.

One SQLite database in WAL mode per sink, one row per appended batch::

    batches(id INTEGER PRIMARY KEY AUTOINCREMENT, created_ns, n_points, n_bytes, payload BLOB,
            codec, crc, text_bytes)

Ids only grow (AUTOINCREMENT), so order is insertion order and an acknowledged id is never
reused. :meth:`Spool.append` stores a payload, :meth:`Spool.peek` merges the oldest (or newest)
rows into a :class:`Batch`, and :meth:`Spool.ack` deletes them once the sink answered 2xx. The
spool has one consumer: the rows of the batch last peeked are never dropped for the budget.

Rows are stored compressed (``codec`` 1): the payload is a deflate chunk of the lines
(:mod:`agent.deflate`) with the CRC-32 and length of its text, compressed once at append and
sent as it is (a batch's chunks join into one gzip body), so ``n_bytes`` and the budget count
compressed bytes: ~3.5-6x more readings fit than as text. Rows of spools written before this
format (``codec`` 0: plain lines; the three columns are added at open) are delivered too.

Durability. A row is committed to the WAL file before :meth:`append` returns, so a killed
process (SIGKILL, OOM, crash) loses nothing that ``append`` returned for, in every mode (tested
by SIGKILLing a child mid-append). Against power loss or a kernel crash the ``fsync`` setting
decides:

=========  ==================  ==============================================================
fsync      SQLite synchronous  power-loss window (what may be lost)
=========  ==================  ==============================================================
always     FULL                none: every append is fsynced before it returns (costs an
                               fsync, ~0.1-10 ms depending on the disk, per append)
interval   NORMAL              the last ``fsync_interval_s`` (1 s): a checkpoint syncs the WAL
                               at least that often while there is something to sync (the
                               forwarder's loop calls :meth:`sync_if_due`); the file stays
                               consistent (WAL frames carry checksums)
never      OFF                 whatever the OS had not yet written back (Linux: dirty data up
                               to ~35 s old), and the file may be damaged, then salvaged
=========  ==================  ==============================================================

Budget. ``max_bytes`` bounds the payload bytes held (the file is a few percent larger, plus the
WAL until its next checkpoint). When an append would exceed it, the oldest rows are dropped and
counted (``dropped_points``, ``dropped_bytes``); a warning marks the start of such an episode and
an info line its end, with totals, not a line per row.

Damage. At open, ``PRAGMA quick_check`` and the schema are verified. A damaged spool (garbage,
bad page, failed check) is moved aside as ``<name>.damaged-<UTC time>`` (with its WAL), every row
that can still be read is salvaged into a fresh spool, the loss is counted (``recovered_loss``,
points: exact when every row's count is readable, else estimated from the unreadable rows)
and logged, and the agent starts. A torn WAL tail is not damage: SQLite ignores frames after the
last complete commit, which ``append`` never returned for. A compressed row carries the CRC-32
of its text: a salvaged row that fails it is not kept (counted in the loss), and a row damaged
later is found when the server refuses its batch (:meth:`Batch.text` skips it and counts it).

Calls are synchronous and short (an append of a 100 ms flush: tens of µs without fsync; see
``benchmarks/bench_pipeline.py``), made from the event loop thread only.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import structlog

from agent.deflate import Chunk, ChunkError, deflate, gzip_body, inflate
from agent.sqlitetx import move_aside, write_transaction

FsyncMode = Literal["always", "interval", "never"]
SYNCHRONOUS: dict[str, str] = {"always": "FULL", "interval": "NORMAL", "never": "OFF"}
LEGACY_COLUMNS = ["id", "created_ns", "n_points", "n_bytes", "payload"]
#: Added by the compressed format; in a legacy spool they are added with codec 0 (plain text).
_NEW_COLUMNS = {
    "codec": "codec INTEGER NOT NULL DEFAULT 0",
    "crc": "crc INTEGER NOT NULL DEFAULT 0",
    "text_bytes": "text_bytes INTEGER NOT NULL DEFAULT 0",
}
COLUMNS = [*LEGACY_COLUMNS, *_NEW_COLUMNS]
PLAIN = 0  # codec of rows stored as text (earlier versions); _INSERT stores codec 1, deflate
_SCHEMA = f"""CREATE TABLE IF NOT EXISTS batches (
    id INTEGER PRIMARY KEY AUTOINCREMENT, created_ns INTEGER NOT NULL,
    n_points INTEGER NOT NULL, n_bytes INTEGER NOT NULL, payload BLOB NOT NULL,
    {", ".join(_NEW_COLUMNS.values())})"""
_SELECT = "SELECT id, created_ns, n_points, n_bytes, payload, codec, crc, text_bytes FROM batches"
_SELECT_LEGACY = "SELECT id, created_ns, n_points, n_bytes, payload, 0, 0, 0 FROM batches"
_INSERT = (
    "INSERT INTO batches (created_ns, n_points, n_bytes, payload, codec, crc, text_bytes) "
    "VALUES (?, ?, ?, ?, 1, ?, ?)"
)
#: Errors of the environment, not of the file: never a reason to move the spool aside.
_NOT_DAMAGE = {
    sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED, sqlite3.SQLITE_CANTOPEN, sqlite3.SQLITE_PERM,
    sqlite3.SQLITE_READONLY, sqlite3.SQLITE_FULL, sqlite3.SQLITE_NOMEM, sqlite3.SQLITE_AUTH,
}  # fmt: skip
_LAST_ID = "SELECT seq FROM sqlite_sequence WHERE name = 'batches'"
_CHUNK = 500  # ids per DELETE statement
_PROBE_MAX = 200_000  # rowid probes when salvaging around a damaged page
_BYTES_PER_POINT_GUESS = 200  # to estimate a loss nothing could be counted of

log = structlog.get_logger(__name__)


class SpoolError(Exception):
    """The spool cannot be used at all (held by another process, unwritable directory)."""


class _DamagedError(Exception):
    pass


@dataclass(frozen=True, slots=True)
class Batch:
    """Rows merged for one write, oldest row first: their chunks and point counts."""

    ids: tuple[int, ...]
    chunks: tuple[Chunk, ...]
    points: tuple[int, ...]
    n_points: int
    n_bytes: int
    oldest_ns: int

    @property
    def payload(self) -> bytes:
        """The rows' lines joined by newlines; :class:`ChunkError` if a row is damaged."""
        return b"".join([inflate(c) for c in self.chunks])[:-1]

    def text(self) -> tuple[bytes, int, tuple[int, ...]]:
        """(lines of the readable rows, their points, ids of damaged rows): damage skipped."""
        texts: list[bytes] = []
        points = 0
        damaged: list[int] = []
        for row_id, chunk, n in zip(self.ids, self.chunks, self.points, strict=True):
            try:
                texts.append(inflate(chunk))
                points += n
            except ChunkError:
                damaged.append(row_id)
        return b"".join(texts)[:-1], points, tuple(damaged)

    def gzip_body(self) -> bytes:
        """The rows as one gzip member, without compressing anything again."""
        return gzip_body(self.chunks)


@dataclass(slots=True)
class SpoolStats:
    """Gauges (rows, bytes, points held) and counters since the spool was opened."""

    rows: int = 0
    bytes: int = 0
    points: int = 0
    appended_points: int = 0
    acked_points: int = 0
    dropped_points: int = 0
    dropped_bytes: int = 0
    failed_appends: int = 0
    recovered_loss: int = 0
    salvaged_points: int = 0


def _is_damage(exc: sqlite3.Error) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    if code is None:  # raised by the sqlite3 module itself (closed database, misuse)
        return False
    return (code & 0xFF) not in _NOT_DAMAGE


class Spool:
    """Durable queue of line protocol for one sink (see the module docstring)."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        max_bytes: int = 1 << 30,
        fsync: FsyncMode = "interval",
        fsync_interval_s: float = 1.0,
        name: str | None = None,
    ) -> None:
        if fsync not in SYNCHRONOUS:
            raise ValueError(f"fsync {fsync!r} is not one of {', '.join(SYNCHRONOUS)}")
        self.path = Path(path)
        self.name = name or self.path.stem
        self.max_bytes = max_bytes
        self.fsync: FsyncMode = fsync
        self.fsync_interval_s = fsync_interval_s
        self.stats = SpoolStats()
        self._leased: set[int] = set()
        self._last_sync = time.monotonic()
        self._dirty = False
        self._overflow: list[int] | None = None  # [points, bytes, start_ns] of this episode
        self._append_failing = False
        self._sync_failing = False
        self._db = self._open()
        self._enforce_budget()

    # -- public API ---------------------------------------------------------------------------
    def append(
        self, payload: bytes | Chunk, n_points: int, *, created_ns: int | None = None
    ) -> int | None:
        """Store one payload (lines joined by ``\\n``); return its id, ``None`` if dropped.

        ``created_ns``: when its oldest line was collected (default now); a batch's age, which
        the forwarder waits for, counts from it.

        ``payload`` may come compressed already (:func:`agent.deflate.deflate`: the pipeline
        compresses a flush once for all its spools). Never raises for the disk: a payload that
        cannot be stored (disk full, I/O error, or larger than the whole budget) is counted as
        dropped and logged once per episode.
        """
        chunk = payload if isinstance(payload, Chunk) else deflate(payload)
        size = len(chunk.data)
        if size > self.max_bytes:
            self._count_drop(n_points, size, "payload larger than the whole budget")
            return None
        try:
            try:
                row_id = self._insert(chunk, n_points, created_ns)
            except sqlite3.Error as exc:
                if not _is_damage(exc):
                    raise
                self._db.close()
                self._db = self._open(damage=str(exc))  # damaged while running: salvage
                row_id = self._insert(chunk, n_points, created_ns)
        except (sqlite3.Error, SpoolError) as exc:
            self._append_failed(exc, size, n_points)
            return None
        if self._append_failing:
            self._append_failing = False
            log.info("spool_append_recovered", spool=self.name)
        self.stats.appended_points += n_points
        self.sync_if_due()
        return row_id

    def peek(
        self, max_points: int = 5000, max_bytes: int = 16 << 20, *, newest_first: bool = False
    ) -> Batch | None:
        """The oldest (or newest) rows up to the limits, at least one row; ``None`` if empty."""
        order = "DESC" if newest_first else "ASC"
        ids: list[int] = []
        chunks: list[Chunk] = []
        counts: list[int] = []
        points = size = 0
        oldest = 0
        cur = self._db.execute(f"{_SELECT} ORDER BY id {order}")
        try:
            for row_id, created_ns, n_points, n_bytes, payload, codec, crc, text_bytes in cur:
                if ids and (points + n_points > max_points or size + n_bytes > max_bytes):
                    break
                ids.append(row_id)
                chunks.append(Chunk(payload, crc, text_bytes) if codec else deflate(payload))
                counts.append(n_points)
                points += n_points
                size += n_bytes
                oldest = created_ns if not oldest else min(oldest, created_ns)
        finally:
            cur.close()
        if not ids:
            return None
        if newest_first:
            ids.reverse()
            chunks.reverse()
            counts.reverse()
        self._leased = set(ids)
        return Batch(tuple(ids), tuple(chunks), tuple(counts), points, size, oldest)

    def ack(self, batch: Batch) -> int:
        """Delete a delivered batch's rows; return the points removed (rows gone: 0)."""
        with self._transaction():
            rows, points, size = self._delete(batch.ids)
        self._leased.difference_update(batch.ids)
        self._removed(rows, points, size)
        self.stats.acked_points += points
        if self._overflow is not None and self.stats.bytes <= self.max_bytes * 0.9:
            dropped_points, dropped_bytes, start_ns = self._overflow
            self._overflow = None
            log.info("spool_overflow_ended", spool=self.name, dropped_points=dropped_points,
                     dropped_bytes=dropped_bytes,
                     duration_s=round((time.time_ns() - start_ns) / 1e9, 1))  # fmt: skip
        self.sync_if_due()
        return points

    def sync(self) -> None:
        """Make everything appended so far durable now (a WAL checkpoint, with its fsyncs).

        Never raises: a checkpoint that fails (the disk) leaves the rows in the WAL, is logged
        once until one succeeds, and is tried again at the next interval.
        """
        self._last_sync = time.monotonic()
        try:
            self._db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        except sqlite3.Error as exc:
            if not self._sync_failing:
                log.warning("spool_sync_failed", spool=self.name, error=str(exc),
                            note="logged once until a sync works")  # fmt: skip
            self._sync_failing = True
            return
        if self._sync_failing:
            log.info("spool_sync_recovered", spool=self.name)
            self._sync_failing = False
        self._dirty = False

    def sync_if_due(self) -> None:
        """In ``interval`` mode, sync when something changed and the interval has passed."""
        due = time.monotonic() - self._last_sync >= self.fsync_interval_s
        if self._dirty and self.fsync == "interval" and due:
            self.sync()

    def close(self) -> None:
        """Sync (unless ``never``) and close; SQLite then removes the WAL file."""
        if self.fsync != "never":
            self.sync()
        self._db.close()

    # -- appending and deleting ---------------------------------------------------------------
    def _transaction(self) -> AbstractContextManager[None]:
        return write_transaction(self._db)

    def _insert(self, chunk: Chunk, n_points: int, created_ns: int | None) -> int:
        size = len(chunk.data)
        row = (created_ns or time.time_ns(), n_points, size, chunk.data, chunk.crc, chunk.size)
        dropped = (0, 0, 0)
        if self.stats.bytes + size <= self.max_bytes:
            row_id = self._db.execute(_INSERT, row).lastrowid
        else:
            with self._transaction():
                dropped = self._delete_oldest(self.stats.bytes + size - self.max_bytes)
                row_id = self._db.execute(_INSERT, row).lastrowid
        self._removed(dropped[0] - 1, dropped[1] - n_points, dropped[2] - size)
        if dropped[0]:
            self._count_drop(dropped[1], dropped[2], "disk budget reached: oldest rows dropped")
        assert row_id is not None  # an INSERT always sets it
        return row_id

    def _removed(self, rows: int, points: int, size: int) -> None:
        """Update the gauges (negative counts: rows added)."""
        self.stats.rows -= rows
        self.stats.points -= points
        self.stats.bytes -= size
        self._dirty = True

    def _delete(self, ids: Sequence[int]) -> tuple[int, int, int]:
        """Delete rows by id (inside a transaction): (rows, points, bytes) actually deleted."""
        rows = points = size = 0
        for i in range(0, len(ids), _CHUNK):
            chunk = ids[i : i + _CHUNK]
            marks = ",".join("?" * len(chunk))
            sql = f"DELETE FROM batches WHERE id IN ({marks}) RETURNING n_points, n_bytes"  # noqa: S608
            for n_points, n_bytes in self._db.execute(sql, chunk).fetchall():
                rows, points, size = rows + 1, points + n_points, size + n_bytes
        return rows, points, size

    def _delete_oldest(self, excess: int) -> tuple[int, int, int]:
        """Delete the oldest rows not leased until ``excess`` bytes are freed."""
        ids: list[int] = []
        freed = 0
        cur = self._db.execute("SELECT id, n_bytes FROM batches ORDER BY id")
        try:
            for row_id, n_bytes in cur:
                if row_id not in self._leased:
                    ids.append(row_id)
                    freed += n_bytes
                    if freed >= excess:
                        break
        finally:
            cur.close()
        return self._delete(ids)

    def _enforce_budget(self) -> None:
        """At open: the budget may have been lowered since the rows were stored."""
        if self.stats.bytes > self.max_bytes:
            with self._transaction():
                rows, points, size = self._delete_oldest(self.stats.bytes - self.max_bytes)
            self._removed(rows, points, size)
            self._count_drop(points, size, "disk budget reached: oldest rows dropped")

    def _count_drop(self, points: int, size: int, reason: str) -> None:
        self.stats.dropped_points += points
        self.stats.dropped_bytes += size
        if self._overflow is None:
            self._overflow = [0, 0, time.time_ns()]
            log.warning("spool_overflowed", spool=self.name, reason=reason,
                        max_bytes=self.max_bytes, backlog_points=self.stats.points)  # fmt: skip
        self._overflow[0] += points
        self._overflow[1] += size

    def _append_failed(self, exc: Exception, size: int, n_points: int) -> None:
        self.stats.failed_appends += 1
        self.stats.dropped_points += n_points
        self.stats.dropped_bytes += size
        if not self._append_failing:
            self._append_failing = True
            log.error("spool_append_failed", spool=self.name, path=str(self.path), error=str(exc))

    # -- opening, checking, salvaging ---------------------------------------------------------
    def _connect(self, path: Path) -> sqlite3.Connection:
        db = sqlite3.connect(path, timeout=1.0, isolation_level=None)
        try:
            # Exclusive: no -shm file, and a second agent on the same spool fails loudly.
            db.execute("PRAGMA locking_mode=EXCLUSIVE")
            db.execute("PRAGMA journal_mode=WAL").fetchall()
            db.execute(f"PRAGMA synchronous={SYNCHRONOUS[self.fsync]}")
            # Debian builds SQLite with secure_delete on: zeroing every freed page made an
            # ack cost 6x more writes (0.8 µs a point, then 0.13)
            db.execute("PRAGMA secure_delete=FAST")
            db.execute("BEGIN IMMEDIATE")  # takes the lock now
            db.execute("COMMIT")
            self._check(db)
        except BaseException:
            db.close()
            raise
        return db

    def _open(self, damage: str | None = None) -> sqlite3.Connection:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if damage is None:
                try:
                    return self._connect(self.path)
                except (sqlite3.Error, _DamagedError) as exc:
                    if isinstance(exc, sqlite3.Error) and not _is_damage(exc):
                        raise SpoolError(f"cannot open spool {self.path}: {exc}") from exc
                    damage = str(exc)
            return self._recover(damage)
        except (OSError, sqlite3.Error) as exc:
            raise SpoolError(f"cannot open spool {self.path}: {exc}") from exc

    def _check(self, db: sqlite3.Connection) -> None:
        result = [r[0] for r in db.execute("PRAGMA quick_check").fetchall()]
        if result != ["ok"]:
            raise _DamagedError("quick_check: " + "; ".join(map(str, result))[:500])
        db.execute(_SCHEMA)
        columns = [r[1] for r in db.execute("PRAGMA table_info(batches)")]
        if columns == LEGACY_COLUMNS:  # written before rows were compressed: add the columns
            with write_transaction(db):
                for definition in _NEW_COLUMNS.values():
                    db.execute(f"ALTER TABLE batches ADD COLUMN {definition}")
            columns = COLUMNS
        if columns != COLUMNS:
            raise _DamagedError(f"not a spool: table batches has columns {columns}")
        count = (
            "SELECT count(*), coalesce(sum(n_points), 0), coalesce(sum(n_bytes), 0) FROM batches"
        )
        self.stats.rows, self.stats.points, self.stats.bytes = db.execute(count).fetchone()

    def _recover(self, damage: str) -> sqlite3.Connection:
        aside, damaged_size = move_aside(self.path)
        rows, expected, unreadable = _salvage(aside)
        db = self._connect(self.path)
        db.execute("BEGIN IMMEDIATE")
        db.executemany("INSERT INTO batches VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
        db.execute("COMMIT")
        self._check(db)  # counts
        salvaged = self.stats.points
        if expected is not None:
            lost, exact = max(0, expected - salvaged), True
        elif rows:  # part of the index is unreadable: rows behind it, at the salvaged average
            lost, exact = round(unreadable * salvaged / len(rows)), False
        else:  # nothing readable: estimate from the file's size
            lost, exact = damaged_size // _BYTES_PER_POINT_GUESS, False
        self.stats.recovered_loss += lost
        self.stats.salvaged_points += salvaged
        log.error(
            "spool_damaged", spool=self.name, damage=damage, moved_to=str(aside),
            salvaged_rows=len(rows), salvaged_points=salvaged, lost_points=lost, loss_exact=exact,
        )  # fmt: skip
        return db


Row = tuple[int, int, int, int, bytes, int, int, int]


def _intact(row: Row) -> bool:
    """The stored size matches, and a compressed row inflates to its CRC-32 and length."""
    _, _, _, n_bytes, payload, codec, crc, text_bytes = row
    if not isinstance(payload, bytes) or n_bytes != len(payload):
        return False
    try:
        return codec == PLAIN or bool(inflate(Chunk(payload, crc, text_bytes)))
    except ChunkError:
        return False


def _salvage(path: Path) -> tuple[list[Row], int | None, int]:
    """Rows still readable from a damaged spool, its point total if readable, unreadable ids."""
    rows: dict[int, Row] = {}
    expected: int | None = None
    unreadable = 0
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute("PRAGMA locking_mode=EXCLUSIVE")
        db.execute("PRAGMA writable_schema=ON")  # read a file shorter than its header says
        with contextlib.suppress(sqlite3.Error):
            expected = db.execute("SELECT coalesce(sum(n_points), 0) FROM batches").fetchone()[0]
        select = _SELECT
        with contextlib.suppress(sqlite3.Error):
            if [r[1] for r in db.execute("PRAGMA table_info(batches)")] == LEGACY_COLUMNS:
                select = _SELECT_LEGACY
        low = _scan(db, f"{select} ORDER BY id", (), rows)
        if low is not None:  # stopped by damage: read the rest from the other end, then probe
            high = _scan(db, f"{select} WHERE id > ? ORDER BY id DESC", (low,), rows)
            if high == low:  # nothing readable from the top: up to the last id ever given
                with contextlib.suppress(sqlite3.Error, TypeError):
                    high = 1 + db.execute(_LAST_ID).fetchone()[0]
            if high is not None:  # rows between low and high sit behind the damage
                for row_id in range(low + 1, min(high, low + 1 + _PROBE_MAX)):
                    if _scan(db, f"{select} WHERE id = ?", (row_id,), rows) is not None:
                        unreadable += 1
    finally:
        db.close()
    return sorted(r for r in rows.values() if _intact(r)), expected, unreadable


def _scan(db: sqlite3.Connection, sql: str, args: tuple[int, ...],
          rows: dict[int, Row]) -> int | None:  # fmt: skip
    """Add rows from ``sql``; return the last id read when damage stopped it, else ``None``."""
    last = args[0] if args else 0
    try:
        for row in db.execute(sql, args):
            rows[row[0]] = row
            last = row[0]
    except sqlite3.Error:
        return last
    return None
