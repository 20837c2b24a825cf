"""The anomaly journal: upserts, derived states, acknowledgements, filters, training windows."""

from __future__ import annotations

import csv
import io
import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.journal import _MIGRATIONS, SCHEMA_VERSION, Journal, StoredEpisode, export_row, iso_utc
from analytics.types import Contribution, Episode

SECOND = 10**9
T0 = 1_767_592_800 * SECOND  # 2026-01-05T06:00:00Z


def episode(
    machine: str = "cnc-01",
    start_s: int = 0,
    end_s: int | None = None,
    *,
    score: float = 2.0,
    line: str = "line-1",
    contributions: tuple[Contribution, ...] = (),
) -> Episode:
    return Episode(
        machine,
        T0 + start_s * SECOND,
        "pca",
        "v3",
        peak_score=score,
        peak_ns=T0 + start_s * SECOND,
        contributions=contributions,
        end_ns=None if end_s is None else T0 + end_s * SECOND,
        tags={"line": line} if line else {},
    )


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[Journal]:
    j = Journal(tmp_path / "sub" / "journal.db")
    yield j
    j.close()


def got(j: Journal, id: str) -> StoredEpisode:
    stored = j.get(id)
    assert stored is not None
    return stored


def test_upsert_open_update_close(journal: Journal) -> None:
    contributions = (Contribution("vibration_rms", 0.71, 7.2, 2.1, 0.4, "mm/s"),)
    e = episode(score=1.5, contributions=contributions)
    journal.record(e)
    s = got(journal, e.id)
    assert s.state == "open" and s.line == "line-1" and s.episode == e
    assert s.episode.severity == e.severity and s.acked_by is None and s.verdict is None

    e.peak_score, e.peak_ns, e.note = 6.0, T0 + 5 * SECOND, "growing"
    journal.record(e)
    s = got(journal, e.id)
    assert s.state == "open" and s.episode.peak_score == 6.0 and s.episode.note == "growing"
    assert s.episode.peak_ns == T0 + 5 * SECOND and s.episode.severity == 717

    e.end_ns = T0 + 30 * SECOND
    journal.record(e)
    s = got(journal, e.id)
    assert s.state == "closed" and s.episode == e
    assert s.episode.contributions == contributions
    assert len(journal.list()) == 1
    assert journal.get("nope") is None


def test_ack_after_close_and_update_after_ack(journal: Journal) -> None:
    closed = episode("a", 0, 10)
    journal.record(closed)
    s = journal.acknowledge(closed.id, by="ana", verdict="confirmed", note="bearing", now_ns=7)
    assert (s.state, s.acked_by, s.acked_ns, s.verdict, s.ack_note) == (
        "acknowledged", "ana", 7, "confirmed", "bearing",
    )  # fmt: skip

    still_open = episode("b", 0)
    journal.record(still_open)
    assert journal.acknowledge(still_open.id, by="bo", verdict="false-alarm").state == (
        "acknowledged"
    )
    still_open.end_ns, still_open.peak_score = T0 + 20 * SECOND, 3.0
    journal.record(still_open)  # the agent closes it after the ack
    s = got(journal, still_open.id)
    assert s.state == "acknowledged" and s.verdict == "false-alarm" and s.acked_by == "bo"
    assert s.episode.end_ns == T0 + 20 * SECOND and s.episode.peak_score == 3.0
    assert [x.id for x in journal.list(state="acknowledged")] == [still_open.id, closed.id]


def test_filters(journal: Journal) -> None:
    journal.record(episode("a", 0, 10, score=1.0, line="line-1"))  # severity 200
    journal.record(episode("b", 100, 110, score=8.0, line="line-2"))  # severity 800
    journal.record(episode("a", 200, score=4.0, line="line-1"))  # open, severity 600
    journal.record(episode("c", 300, 310, score=2.0, line=""))  # no line tag

    def ids(**filters: object) -> list[str]:
        return [s.id for s in journal.list(**filters)]  # type: ignore[arg-type]

    assert ids() == [f"c-{T0 + 300 * SECOND}", f"a-{T0 + 200 * SECOND}", f"b-{T0 + 100 * SECOND}",
                     f"a-{T0}"]  # fmt: skip
    assert ids(machine="a") == [f"a-{T0 + 200 * SECOND}", f"a-{T0}"]
    assert ids(line="line-2") == [f"b-{T0 + 100 * SECOND}"]
    assert ids(line="") == [f"c-{T0 + 300 * SECOND}"]
    assert got(journal, f"c-{T0 + 300 * SECOND}").line == ""
    assert ids(min_severity=600) == [f"a-{T0 + 200 * SECOND}", f"b-{T0 + 100 * SECOND}"]
    assert ids(state="open") == [f"a-{T0 + 200 * SECOND}"]
    assert len(ids(state="closed")) == 3
    assert ids(limit=1) == [f"c-{T0 + 300 * SECOND}"]
    # time overlap, bounds included; the open episode reaches past any later interval
    assert ids(since_ns=T0 + 5 * SECOND, until_ns=T0 + 100 * SECOND) == [
        f"b-{T0 + 100 * SECOND}", f"a-{T0}",
    ]  # fmt: skip
    assert ids(since_ns=T0 + 50 * SECOND, until_ns=T0 + 60 * SECOND) == []
    assert ids(since_ns=T0 + 10_000 * SECOND) == [f"a-{T0 + 200 * SECOND}"]
    assert ids(until_ns=T0 + 150 * SECOND, machine="b") == [f"b-{T0 + 100 * SECOND}"]
    with pytest.raises(ValueError, match="state must be one of open, closed, acknowledged"):
        journal.list(state="gone")  # type: ignore[arg-type]


def test_acknowledge_rejects_unknown_ids_and_bad_arguments(journal: Journal) -> None:
    e = episode()
    journal.record(e)
    with pytest.raises(KeyError, match="nope"):
        journal.acknowledge("nope", by="ana", verdict="confirmed")
    with pytest.raises(ValueError, match="verdict must be 'confirmed' or 'false-alarm', got 'ok'"):
        journal.acknowledge(e.id, by="ana", verdict="ok")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="name of who acknowledges"):
        journal.acknowledge(e.id, by="  ", verdict="confirmed")
    assert got(journal, e.id).state == "open"
    assert journal.audit() == []


def test_every_ack_is_audited_and_the_last_one_wins(journal: Journal) -> None:
    e, other = episode("a", 0, 10), episode("b", 0, 10)
    journal.record(e)
    journal.record(other)
    journal.acknowledge(e.id, by="ana", verdict="false-alarm", note="tool change", now_ns=1)
    journal.acknowledge(other.id, by="bo", verdict="confirmed", now_ns=2)
    s = journal.acknowledge(e.id, by="carl", verdict="confirmed", note="it was real", now_ns=3)
    assert (s.acked_by, s.acked_ns, s.verdict, s.ack_note) == (
        "carl", 3, "confirmed", "it was real",
    )  # fmt: skip
    audit = journal.audit(e.id)
    assert [{k: a[k] for k in ("episode_id", "time_ns", "who", "verdict", "note")} for a in audit] == [
        {"episode_id": e.id, "time_ns": 1, "who": "ana", "verdict": "false-alarm", "note": "tool change"},
        {"episode_id": e.id, "time_ns": 3, "who": "carl", "verdict": "confirmed", "note": "it was real"},
    ]  # fmt: skip
    assert {a["action"] for a in audit} == {"acknowledge"}
    assert audit[0]["id"] < audit[1]["id"]
    assert [a["who"] for a in journal.audit()] == ["ana", "bo", "carl"]


def test_training_windows(journal: Journal) -> None:
    confirmed, false_alarm, unjudged = episode("a", 0, 10), episode("a", 20, 30), episode("a", 40)
    false_open, elsewhere = episode("a", 50), episode("b", 0, 100)
    for e in (confirmed, false_alarm, unjudged, false_open, elsewhere):
        journal.record(e)
    journal.acknowledge(confirmed.id, by="ana", verdict="confirmed")
    journal.acknowledge(false_alarm.id, by="ana", verdict="false-alarm")
    journal.acknowledge(false_open.id, by="ana", verdict="false-alarm")
    journal.acknowledge(elsewhere.id, by="ana", verdict="false-alarm")

    assert journal.false_alarm_windows("a") == [(T0 + 20 * SECOND, T0 + 30 * SECOND)]
    assert journal.false_alarm_windows("b") == [(T0, T0 + 100 * SECOND)]
    assert journal.false_alarm_windows("z") == []
    everything = journal.anomaly_windows("a", 0, T0 + 1000 * SECOND)
    assert everything == [(T0, T0 + 10 * SECOND), (T0 + 40 * SECOND, None)]
    assert journal.anomaly_windows("a", T0 + 11 * SECOND, T0 + 39 * SECOND) == []
    assert journal.anomaly_windows("a", T0 + 10 * SECOND, T0 + 40 * SECOND) == everything
    assert journal.anomaly_windows("b", 0, T0 + 1000 * SECOND) == []


def test_open_episodes(journal: Journal) -> None:
    journal.record(episode("a", 0, 10))
    journal.record(episode("b", 5))
    journal.record(episode("a", 20))
    journal.acknowledge(f"a-{T0 + 20 * SECOND}", by="ana", verdict="confirmed")
    assert [s.id for s in journal.open_episodes()] == [
        f"b-{T0 + 5 * SECOND}",
        f"a-{T0 + 20 * SECOND}",
    ]


def test_a_second_process_reads_and_acks_while_the_agent_writes(tmp_path: Path) -> None:
    path = tmp_path / "journal.db"
    with Journal(path) as agent, Journal(path) as cli:
        e = episode()
        agent.record(e)
        assert got(cli, e.id).state == "open"
        cli.acknowledge(e.id, by="ana", verdict="confirmed")
        e.end_ns = T0 + SECOND
        agent.record(e)
        s = got(cli, e.id)
        assert s.state == "acknowledged" and s.episode.end_ns == T0 + SECOND
        assert got(agent, e.id).acked_by == "ana"
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert db.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
    db.close()


def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "journal.db"
    Journal(path).close()
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    db.close()
    with pytest.raises(RuntimeError, match="newer than this agent supports"):
        Journal(path)


def test_export_rows(journal: Journal) -> None:
    contributions = (
        Contribution("motor_current", 0.18, 12.0, 10.0, 0.5, "A"),
        Contribution("vibration_rms", 0.71, 7.2, 2.1, 0.4, "mm/s"),
        Contribution("spindle_temp", 0.07, 41.0, 40.0, 1.0, "°C"),
        Contribution("feed_rate", 0.04, 1.0, 1.0, 0.1),
    )
    closed = episode("a", 0, 90, score=4.0, contributions=contributions)
    closed.end_ns = T0 + 90 * SECOND + 123_456_789
    journal.record(closed)
    journal.record(episode("b", 100, line=""))
    journal.acknowledge(closed.id, by="ana", verdict="false-alarm", note="tool change")

    rows = journal.export_rows()
    assert [r["id"] for r in rows] == [f"b-{T0 + 100 * SECOND}", closed.id]
    assert rows[1] == {
        "id": closed.id,
        "machine": "a",
        "line": "line-1",
        "state": "acknowledged",
        "start": "2026-01-05T06:00:00.000Z",
        "end": "2026-01-05T06:01:30.123Z",
        "duration_s": 90.123,
        "severity": 600,
        "peak_score": 4.0,
        "detector": "pca",
        "model_version": "v3",
        "top_signals": "vibration_rms 71 %, motor_current 18 %, spindle_temp 7 %",
        "acked_by": "ana",
        "verdict": "false-alarm",
        "ack_note": "tool change",
    }
    assert rows[0]["end"] is None and rows[0]["duration_s"] is None
    assert rows[0]["state"] == "open" and rows[0]["top_signals"] == "" and rows[0]["line"] == ""
    assert rows[1] == export_row(got(journal, closed.id))
    json.dumps(rows)  # flat and serialisable as they are
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    assert out.getvalue().count("\n") == 3


def test_iso_utc() -> None:
    assert iso_utc(T0 + 999_999_999) == "2026-01-05T06:00:00.999Z"
    assert iso_utc(0) == "1970-01-01T00:00:00.000Z"


def test_acknowledgements_wait_in_the_outbox_until_marked(journal: Journal) -> None:
    a, b = episode("a", 0, 60), episode("b", 10, line="")
    journal.record(a)
    journal.record(b)
    assert journal.pending_annotations() == []
    journal.acknowledge(a.id, by="ana", verdict="false-alarm", note="belt cleaning", now_ns=T0 + 7)
    journal.acknowledge(b.id, by="bo", verdict="confirmed", now_ns=T0 + 8)
    journal.acknowledge(a.id, by="cy", verdict="confirmed", note="no: bearing", now_ns=T0 + 9)
    pending = journal.pending_annotations()
    assert [(p.episode_id, p.who, p.verdict, p.time_ns) for p in pending] == [
        (a.id, "ana", "false-alarm", T0 + 7),
        (b.id, "bo", "confirmed", T0 + 8),
        (a.id, "cy", "confirmed", T0 + 9),
    ]  # every acknowledgement, not only the last verdict, oldest first
    first = pending[0]
    assert (first.machine, first.tags, first.episode_start_ns, first.episode_end_ns) == (
        "a", {"line": "line-1"}, T0, T0 + 60 * SECOND,
    )  # fmt: skip
    assert first.text() == "False alarm (ana): belt cleaning"
    assert pending[1].text() == "Confirmed fault (bo)" and pending[1].episode_end_ns is None
    journal.mark_annotated([p.audit_id for p in pending[:2]])
    assert [p.who for p in journal.pending_annotations()] == ["cy"]
    assert journal.pending_annotations(limit=0) == []
    assert len(journal.audit()) == 3  # the audit itself is untouched


def test_a_version_1_journal_is_migrated_and_its_acks_become_pending(tmp_path: Path) -> None:
    path = tmp_path / "journal.db"
    db = sqlite3.connect(path, isolation_level=None)
    for statement in _MIGRATIONS[0]:  # the schema as version 1 shipped it
        db.execute(statement)
    db.execute("PRAGMA user_version=1")
    e = episode("old", 0, 30)
    db.execute(
        "INSERT INTO episodes (id, machine, start_ns, end_ns, peak_score, peak_ns, severity,"
        " detector, model_version, acked_by, acked_ns, verdict) VALUES"
        " (?, 'old', ?, ?, 2.0, ?, 200, 'pca', 'v1', 'ana', ?, 'confirmed')",
        (e.id, e.start_ns, e.end_ns, e.start_ns, T0 + 99),
    )
    db.execute(
        "INSERT INTO audit (episode_id, time_ns, who, action, verdict) VALUES"
        " (?, ?, 'ana', 'acknowledge', 'confirmed')",
        (e.id, T0 + 99),
    )
    db.close()
    with Journal(path) as j:
        assert [p.episode_id for p in j.pending_annotations()] == [e.id]
        assert got(j, e.id).state == "acknowledged"
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
    db.close()
