"""The anomaly journal: every episode the analytics raised, and what people said about it.

One SQLite file (WAL mode). The agent writes episodes as they open, grow and close
(:meth:`Journal.record` is an upsert by ``Episode.id``); the review page and the CLI
(``factory-agent anomalies list/show/ack/export``) open the same file from another process
and read, or acknowledge an episode with a verdict. The state is derived, never set:
``open`` while ``end_ns`` is NULL, ``closed`` after, ``acknowledged`` once someone acked it
(and it stays so when the agent later updates or closes it). Every acknowledgement is kept in
an ``audit`` table; a second one overwrites the verdict on the episode, not the history. The
audit table is also an outbox: the running agent takes the acknowledgements not yet annotated
(:meth:`Journal.pending_annotations`), spools them for InfluxDB, and marks them
(:meth:`Journal.mark_annotated`), so an ack given from the CLI while the agent is stopped
reaches InfluxDB when it next runs.

Verdicts feed training: episodes acked as false alarms are normal running
(:meth:`Journal.false_alarm_windows`); every other episode is a window a model must never be
retrained on (:meth:`Journal.anomaly_windows`).

>>> import tempfile, pathlib
>>> j = Journal(pathlib.Path(tempfile.mkdtemp()) / "journal.db")
>>> j.record(Episode("cnc-01", 1_000, "pca", "v1", peak_score=2.0, peak_ns=1_500))
>>> j.get("cnc-01-1000").state
'open'
>>> j.acknowledge("cnc-01-1000", by="ana", verdict="false-alarm", now_ns=9_000).state
'acknowledged'
>>> j.record(Episode("cnc-01", 1_000, "pca", "v1", 2.0, 1_500, end_ns=4_000))
>>> j.false_alarm_windows("cnc-01")
[(1000, 4000)]
>>> j.close()
"""

from __future__ import annotations

import builtins
import json
import sqlite3
import time
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, cast, get_args

from agent.sqlitetx import write_transaction
from analytics.types import Contribution, Episode

State = Literal["open", "closed", "acknowledged"]
Verdict = Literal["confirmed", "false-alarm"]
STATES: tuple[str, ...] = get_args(State)
VERDICTS: tuple[str, ...] = get_args(Verdict)

#: Schema migrations: ``_MIGRATIONS[i]`` takes ``PRAGMA user_version`` from ``i`` to ``i + 1``.
_MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE episodes (
            id TEXT PRIMARY KEY,
            machine TEXT NOT NULL,
            line TEXT NOT NULL DEFAULT '',
            tags TEXT NOT NULL DEFAULT '{}',
            start_ns INTEGER NOT NULL,
            end_ns INTEGER,
            peak_score REAL NOT NULL,
            peak_ns INTEGER NOT NULL,
            severity INTEGER NOT NULL,
            detector TEXT NOT NULL,
            model_version TEXT NOT NULL,
            contributions TEXT NOT NULL DEFAULT '[]',
            note TEXT NOT NULL DEFAULT '',
            acked_by TEXT,
            acked_ns INTEGER,
            verdict TEXT CHECK (verdict IN ('confirmed', 'false-alarm')),
            ack_note TEXT NOT NULL DEFAULT '',
            state TEXT GENERATED ALWAYS AS (CASE
                WHEN acked_ns IS NOT NULL THEN 'acknowledged'
                WHEN end_ns IS NULL THEN 'open'
                ELSE 'closed' END) VIRTUAL
        )""",
        "CREATE INDEX episodes_by_machine_start ON episodes (machine, start_ns)",
        "CREATE INDEX episodes_by_start ON episodes (start_ns)",
        "CREATE INDEX episodes_by_state ON episodes (state, end_ns)",
        """CREATE TABLE audit (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            episode_id TEXT NOT NULL,
            time_ns INTEGER NOT NULL,
            who TEXT NOT NULL,
            action TEXT NOT NULL,
            verdict TEXT,
            note TEXT NOT NULL DEFAULT ''
        )""",
        "CREATE INDEX audit_by_episode ON audit (episode_id, id)",
    ),
    (  # 2: the annotation outbox: acknowledgements the agent has not yet spooled for InfluxDB
        "ALTER TABLE audit ADD COLUMN annotated INTEGER NOT NULL DEFAULT 0",
        "CREATE INDEX audit_pending ON audit (annotated, id)",
    ),
)
SCHEMA_VERSION = len(_MIGRATIONS)

_UPSERT = """
INSERT INTO episodes (id, machine, line, tags, start_ns, end_ns, peak_score, peak_ns, severity,
    detector, model_version, contributions, note)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (id) DO UPDATE SET
    machine = excluded.machine, line = excluded.line, tags = excluded.tags,
    start_ns = excluded.start_ns, end_ns = excluded.end_ns, peak_score = excluded.peak_score,
    peak_ns = excluded.peak_ns, severity = excluded.severity, detector = excluded.detector,
    model_version = excluded.model_version, contributions = excluded.contributions,
    note = excluded.note
"""
_SELECT = "SELECT * FROM episodes"


@dataclass(frozen=True, slots=True)
class StoredEpisode:
    """An episode as the journal holds it: the episode, its state, and the acknowledgement."""

    episode: Episode
    state: State
    line: str = ""
    acked_by: str | None = None
    acked_ns: int | None = None
    verdict: Verdict | None = None
    ack_note: str = ""

    @property
    def id(self) -> str:
        return self.episode.id


@dataclass(frozen=True, slots=True)
class Annotation:
    """An acknowledgement on its way to InfluxDB (measurement ``anomaly_annotation``)."""

    audit_id: int
    episode_id: str
    time_ns: int
    who: str
    action: str
    verdict: str | None
    note: str
    machine: str
    tags: dict[str, str]
    episode_start_ns: int
    episode_end_ns: int | None

    def text(self) -> str:
        """One sentence for a dashboard annotation.

        >>> Annotation(1, "m-1", 5, "ana", "acknowledge", "false-alarm", "belt cleaning", "m",
        ...            {}, 1, None).text()
        'False alarm (ana): belt cleaning'
        """
        what = {"confirmed": "Confirmed fault", "false-alarm": "False alarm"}.get(
            self.verdict or "", self.action.capitalize()
        )
        return f"{what} ({self.who}): {self.note}" if self.note else f"{what} ({self.who})"


class Journal:
    """Anomaly episodes of every machine, on disk; safe to read from a second process."""

    def __init__(self, path: Path, *, busy_timeout_s: float = 5.0) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._db = sqlite3.connect(
            path, timeout=busy_timeout_s, isolation_level=None, check_same_thread=False
        )
        self._db.row_factory = sqlite3.Row
        self._db.execute(f"PRAGMA busy_timeout={int(busy_timeout_s * 1000)}")
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        try:
            self._migrate()
        except BaseException:
            self._db.close()
            raise

    def _migrate(self) -> None:
        with self._transaction():
            version = int(self._db.execute("PRAGMA user_version").fetchone()[0])
            if version > SCHEMA_VERSION:
                raise RuntimeError(
                    f"{self.path}: journal schema version {version} is newer than this agent "
                    f"supports ({SCHEMA_VERSION}); upgrade factory-agent"
                )
            for statements in _MIGRATIONS[version:]:
                for statement in statements:
                    self._db.execute(statement)
            if version < SCHEMA_VERSION:
                self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    def _transaction(self) -> AbstractContextManager[None]:
        return write_transaction(self._db)

    def record(self, episode: Episode) -> None:
        """Insert the episode, or update it (same ``id``); an acknowledgement is kept."""
        self._db.execute(
            _UPSERT,
            (
                episode.id,
                episode.machine,
                episode.tags.get("line", ""),
                json.dumps(episode.tags, sort_keys=True),
                episode.start_ns,
                episode.end_ns,
                episode.peak_score,
                episode.peak_ns,
                episode.severity,
                episode.detector,
                episode.model_version,
                json.dumps([asdict(c) for c in episode.contributions]),
                episode.note,
            ),
        )

    def get(self, id: str) -> StoredEpisode | None:
        """The episode with this id, or ``None``."""
        row = self._db.execute(f"{_SELECT} WHERE id = ?", (id,)).fetchone()
        return None if row is None else _stored(row)

    def list(
        self,
        *,
        since_ns: int | None = None,
        until_ns: int | None = None,
        machine: str | None = None,
        line: str | None = None,
        min_severity: int | None = None,
        state: State | None = None,
        limit: int = 1000,
    ) -> builtins.list[StoredEpisode]:
        """Episodes matching every filter given, newest (latest start) first.

        ``since_ns``/``until_ns`` select episodes overlapping that interval (bounds included);
        an open episode has no end yet, so it overlaps any interval after its start.
        """
        if state is not None and state not in STATES:
            raise ValueError(f"state must be one of {', '.join(STATES)}, got {state!r}")
        where: builtins.list[str] = []
        args: builtins.list[Any] = []
        if since_ns is not None:
            where.append("(end_ns IS NULL OR end_ns >= ?)")
            args.append(since_ns)
        if until_ns is not None:
            where.append("start_ns <= ?")
            args.append(until_ns)
        for column, value in (("machine", machine), ("line", line), ("state", state)):
            if value is not None:
                where.append(f"{column} = ?")
                args.append(value)
        if min_severity is not None:
            where.append("severity >= ?")
            args.append(min_severity)
        sql = _SELECT + (f" WHERE {' AND '.join(where)}" if where else "")
        rows = self._db.execute(f"{sql} ORDER BY start_ns DESC, id DESC LIMIT ?", (*args, limit))
        return [_stored(row) for row in rows]

    def acknowledge(
        self,
        id: str,
        *,
        by: str,
        verdict: Verdict,
        note: str = "",
        now_ns: int | None = None,
    ) -> StoredEpisode:
        """Record who judged the episode and how; a later ack overwrites, the audit keeps all.

        Raises ``KeyError`` for an unknown id, ``ValueError`` for an empty ``by`` or a verdict
        other than ``confirmed`` / ``false-alarm``.
        """
        if not by.strip():
            raise ValueError("acknowledge needs the name of who acknowledges (by is empty)")
        if verdict not in VERDICTS:
            raise ValueError(f"verdict must be 'confirmed' or 'false-alarm', got {verdict!r}")
        when = time.time_ns() if now_ns is None else now_ns
        with self._transaction():
            updated = self._db.execute(
                "UPDATE episodes SET acked_by = ?, acked_ns = ?, verdict = ?, ack_note = ?"
                " WHERE id = ?",
                (by.strip(), when, verdict, note, id),
            ).rowcount
            if updated == 0:
                raise KeyError(id)
            self._db.execute(
                "INSERT INTO audit (episode_id, time_ns, who, action, verdict, note)"
                " VALUES (?, ?, ?, 'acknowledge', ?, ?)",
                (id, when, by.strip(), verdict, note),
            )
        stored = self.get(id)
        assert stored is not None  # written in the transaction above; episodes are never deleted
        return stored

    def audit(self, episode_id: str | None = None) -> builtins.list[dict[str, Any]]:
        """Audit entries (id, episode_id, time_ns, who, action, verdict, note), oldest first."""
        sql = "SELECT id, episode_id, time_ns, who, action, verdict, note FROM audit"
        if episode_id is None:
            rows = self._db.execute(f"{sql} ORDER BY id")
        else:
            rows = self._db.execute(f"{sql} WHERE episode_id = ? ORDER BY id", (episode_id,))
        return [dict(row) for row in rows]

    def pending_annotations(self, limit: int = 500) -> builtins.list[Annotation]:
        """Acknowledgements not yet handed to the agent's spool, oldest first (the outbox)."""
        rows = self._db.execute(
            "SELECT a.id, a.episode_id, a.time_ns, a.who, a.action, a.verdict, a.note,"
            " e.machine, e.tags, e.start_ns, e.end_ns FROM audit a"
            " JOIN episodes e ON e.id = a.episode_id WHERE a.annotated = 0 ORDER BY a.id LIMIT ?",
            (limit,),
        )
        return [
            Annotation(
                audit_id=row["id"],
                episode_id=row["episode_id"],
                time_ns=row["time_ns"],
                who=row["who"],
                action=row["action"],
                verdict=row["verdict"],
                note=row["note"],
                machine=row["machine"],
                tags=json.loads(row["tags"]),
                episode_start_ns=row["start_ns"],
                episode_end_ns=row["end_ns"],
            )
            for row in rows
        ]

    def mark_annotated(self, audit_ids: builtins.list[int]) -> None:
        """Take these acknowledgements out of the outbox (they are in the spool now)."""
        with self._transaction():
            self._db.executemany(
                "UPDATE audit SET annotated = 1 WHERE id = ?", [(i,) for i in audit_ids]
            )

    def false_alarm_windows(self, machine: str) -> builtins.list[tuple[int, int]]:
        """(start_ns, end_ns) of the closed episodes acked as false alarms: normal running."""
        rows = self._db.execute(
            "SELECT start_ns, end_ns FROM episodes WHERE machine = ? AND verdict = 'false-alarm'"
            " AND end_ns IS NOT NULL ORDER BY start_ns",
            (machine,),
        )
        return [(int(start), int(end)) for start, end in rows]

    def anomaly_windows(
        self, machine: str, since_ns: int, until_ns: int
    ) -> builtins.list[tuple[int, int | None]]:
        """(start_ns, end_ns or None while open) of episodes overlapping the interval that
        are not false alarms: windows a model must not be trained on."""
        rows = self._db.execute(
            "SELECT start_ns, end_ns FROM episodes WHERE machine = ?"
            " AND start_ns <= ? AND (end_ns IS NULL OR end_ns >= ?)"
            " AND verdict IS NOT 'false-alarm' ORDER BY start_ns",
            (machine, until_ns, since_ns),
        )
        return [(int(start), None if end is None else int(end)) for start, end in rows]

    def open_episodes(self) -> builtins.list[StoredEpisode]:
        """Episodes without an end (acknowledged ones included), oldest first."""
        rows = self._db.execute(f"{_SELECT} WHERE end_ns IS NULL ORDER BY start_ns, id")
        return [_stored(row) for row in rows]

    def export_rows(self) -> builtins.list[dict[str, Any]]:
        """Every episode as a flat dict for CSV or JSON, newest first."""
        rows = self._db.execute(f"{_SELECT} ORDER BY start_ns DESC, id DESC")
        return [export_row(_stored(row)) for row in rows]

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Journal:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def export_row(stored: StoredEpisode) -> dict[str, Any]:
    """One flat row: times in ISO 8601 UTC, top signals as short text (open: end is None)."""
    e = stored.episode
    top = sorted(e.contributions, key=lambda c: -c.share)[:3]
    return {
        "id": e.id,
        "machine": e.machine,
        "line": stored.line,
        "state": stored.state,
        "start": iso_utc(e.start_ns),
        "end": None if e.end_ns is None else iso_utc(e.end_ns),
        "duration_s": None if e.end_ns is None else round((e.end_ns - e.start_ns) / 1e9, 3),
        "severity": e.severity,
        "peak_score": e.peak_score,
        "detector": e.detector,
        "model_version": e.model_version,
        "top_signals": ", ".join(f"{c.signal} {c.share * 100:.0f} %" for c in top),
        "acked_by": stored.acked_by,
        "verdict": stored.verdict,
        "ack_note": stored.ack_note,
    }


def iso_utc(ns: int) -> str:
    """Nanoseconds since the epoch as ISO 8601 UTC with milliseconds.

    >>> iso_utc(1_767_592_800_123_456_789)
    '2026-01-05T06:00:00.123Z'
    """
    seconds, rest = divmod(ns, 10**9)
    t = datetime.fromtimestamp(seconds, tz=UTC).replace(microsecond=rest // 1000)
    return t.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _stored(row: sqlite3.Row) -> StoredEpisode:
    episode = Episode(
        machine=row["machine"],
        start_ns=row["start_ns"],
        detector=row["detector"],
        model_version=row["model_version"],
        peak_score=row["peak_score"],
        peak_ns=row["peak_ns"],
        contributions=tuple(Contribution(**c) for c in json.loads(row["contributions"])),
        note=row["note"],
        end_ns=row["end_ns"],
        tags=json.loads(row["tags"]),
        id=row["id"],
    )
    return StoredEpisode(
        episode=episode,
        state=cast(State, row["state"]),  # the generated column yields only these three
        line=row["line"],
        acked_by=row["acked_by"],
        acked_ns=row["acked_ns"],
        verdict=cast(Verdict | None, row["verdict"]),  # a CHECK constraint holds it to two
        ack_note=row["ack_note"],
    )
