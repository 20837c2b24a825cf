"""The local history store: stores, queries, and stays within its age and size budgets."""

from __future__ import annotations

import doctest
import random
import sqlite3
from pathlib import Path

import pytest
import structlog

import agent.history
from agent.history import History
from connectors.types import Quality, Reading

SECOND = 10**9


def reading(machine: str, t: int, **fields: float | None) -> Reading:
    quality = {
        k: Quality.bad(0x808C0000, "BadSensorFailure") for k, v in fields.items() if v is None
    }
    return Reading(machine, t, dict(fields), {"line": "l1"}, quality)


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def rows_on_disk(path: Path) -> list[tuple[str, int]]:
    """(machine, time) of every committed row, read by another connection, in arrival order."""
    with sqlite3.connect(path) as db:
        return db.execute("SELECT machine, time_ns FROM readings ORDER BY rowid").fetchall()


def indexes(path: Path) -> set[str]:
    with sqlite3.connect(path) as db:
        rows = db.execute("SELECT name FROM sqlite_master WHERE type = 'index'").fetchall()
    return {name for (name,) in rows}


def expected_query(
    stream: list[Reading], machine: str, start: int, end: int
) -> list[tuple[int, dict[str, float | None], dict[str, list[object]]]]:
    """What ``History.query`` must return, from the readings themselves."""
    picked = sorted(
        (r for r in stream if r.machine == machine and start <= r.time_ns <= end),
        key=lambda r: r.time_ns,
    )
    return [
        (
            r.time_ns,
            dict(r.fields),
            {k: [q.level.value, q.code, q.text] for k, q in r.quality.items()},
        )
        for r in picked
    ]


def test_query_by_machine_time_and_fields(tmp_path: Path) -> None:
    h = History(tmp_path / "h.db")
    h.add(reading("a", t * SECOND, speed=float(t), temp=20.0 + t) for t in range(10))
    h.add([reading("b", 5 * SECOND, speed=1.0, temp=None)])
    rows = h.query("a", 3 * SECOND, 5 * SECOND, ["speed"])
    assert rows == [(t * SECOND, {"speed": float(t)}, {}) for t in (3, 4, 5)]
    (b,) = h.query("b", 0, 10 * SECOND)
    assert b[1] == {"speed": 1.0, "temp": None}
    assert b[2] == {"temp": ["bad", 0x808C0000, "BadSensorFailure"]}
    h.close()
    reopened = History(tmp_path / "h.db")
    assert reopened.span() == (0, 9 * SECOND)


def test_queries_of_several_machines_out_of_order_match_the_readings(tmp_path: Path) -> None:
    rng = random.Random(7)
    machines = ["m0", "m1", "m2", "press-10"]
    stream = [
        reading(m, t * SECOND + i, v=rng.uniform(0, 100), w=None if t % 7 == 0 else 1.5)
        for t in range(300)
        for i, m in enumerate(machines)
    ]
    rng.shuffle(stream)  # arrival order unrelated to time
    h = History(tmp_path / "h.db")
    for k in range(0, len(stream), 37):
        h.add(stream[k : k + 37])
    for m in [*machines, "unknown"]:
        for start, end in [(0, 400 * SECOND), (50 * SECOND, 120 * SECOND + 2), (299 * SECOND, 299 * SECOND + 3)]:  # fmt: skip
            assert h.query(m, start, end) == expected_query(stream, m, start, end)
    times = [r.time_ns for r in stream]
    assert h.span() == (min(times), max(times))
    h.close()


def test_retention_drops_what_is_older_than_the_window(tmp_path: Path) -> None:
    h = History(tmp_path / "h.db", retention_h=1.0)
    h.add(reading("a", t * 60 * SECOND, speed=1.0) for t in range(180))  # three hours
    h.prune()
    span = h.span()
    assert span is not None and span[1] - span[0] == 60 * 60 * SECOND
    assert h.rows_pruned == 119


def test_retention_goes_by_time_not_arrival_across_machines(tmp_path: Path) -> None:
    """Late readings with old times go, early ones with new times stay, whatever their rowid;
    the newest time of any machine sets the cut."""
    rng = random.Random(3)
    stream = [reading(m, t * SECOND, v=float(t)) for t in range(0, 7200, 10) for m in ("a", "b")]
    stream += [reading("c", t * SECOND, v=1.0) for t in range(0, 1000, 10)]  # all too old
    rng.shuffle(stream)
    first = [reading("a", 7300 * SECOND, v=2.0)]  # the newest, arrives first
    last = [reading("b", 5 * SECOND, v=3.0), reading("c", 7000 * SECOND, v=4.0)]
    h = History(tmp_path / "h.db", retention_h=1.0, prune_every_s=3600)
    h.add(first)
    for k in range(0, len(stream), 50):
        h.add(stream[k : k + 50])
    h.add(last)
    everything = first + stream + last
    cut = 7300 * SECOND - 3600 * SECOND
    pruned = h.prune()
    kept = [r for r in everything if r.time_ns >= cut]
    assert pruned == len(everything) - len(kept) == h.rows_pruned
    assert sorted(rows_on_disk(tmp_path / "h.db")) == sorted((r.machine, r.time_ns) for r in kept)
    for m in ("a", "b", "c"):
        assert h.query(m, 0, 10**6 * SECOND) == expected_query(kept, m, 0, 10**6 * SECOND)
    assert h.span() == (cut, 7300 * SECOND)
    assert h.prune() == 0  # nothing more is old
    h.close()


def test_size_budget_drops_the_oldest(tmp_path: Path) -> None:
    h = History(tmp_path / "h.db", max_bytes=200_000, prune_every_s=3600)
    for block in range(20):
        h.add(reading("a", (block * 500 + i) * SECOND, speed=float(i), temp=1.5, load=3.25)
              for i in range(500))  # fmt: skip
    h.prune()
    assert h.size_bytes() <= 200_000
    span = h.span()
    assert span is not None and span[1] == (19 * 500 + 499) * SECOND  # the newest is kept
    assert span[0] > 0 and h.rows_pruned > 0


def test_size_budget_keeps_the_newest_arrivals_of_every_machine(tmp_path: Path) -> None:
    rng = random.Random(5)
    stream = [
        reading(m, (t + rng.randrange(-30, 30)) * SECOND + k, v=rng.uniform(0, 1), w=2.0)
        for t in range(4000)
        for k, m in enumerate(("a", "b", "c"))
    ]
    h = History(tmp_path / "h.db", max_bytes=300_000, prune_every_s=3600)
    for k in range(0, len(stream), 300):
        h.add(stream[k : k + 300])
    pruned = h.prune()
    assert 0 < pruned < len(stream) and h.size_bytes() <= 300_000
    kept = stream[pruned:]  # the oldest arrivals went, the rest is whole
    assert rows_on_disk(tmp_path / "h.db") == [(r.machine, r.time_ns) for r in kept]
    for m in ("a", "b", "c"):
        assert h.query(m, 0, 10**5 * SECOND) == expected_query(kept, m, 0, 10**5 * SECOND)
    h.close()


def test_sustained_writes_reuse_freed_pages_instead_of_growing(tmp_path: Path) -> None:
    """No VACUUM (it stalled the agent ~2 s at 256 MB): freed pages take the new rows, so the
    file stops growing near its budget."""
    h = History(tmp_path / "h.db", max_bytes=300_000, prune_every_s=3600)
    sizes = []
    for block in range(200):
        h.add(reading("a", (block * 500 + i) * SECOND, speed=float(i), temp=1.5, load=3.25)
              for i in range(500))  # fmt: skip
        h.prune()
        assert h.size_bytes() <= 300_000
        h._db.execute("PRAGMA wal_checkpoint(PASSIVE)")
        sizes.append((tmp_path / "h.db").stat().st_size)
    assert max(sizes) <= 1.2 * 300_000
    assert max(sizes[100:]) == max(sizes[:100])  # steady state: no page past the early peak
    span = h.span()
    assert span is not None and span[1] == (199 * 500 + 499) * SECOND


def test_non_finite_values_are_stored_as_no_value(tmp_path: Path) -> None:
    h = History(tmp_path / "h.db")
    h.add([reading("a", 0, speed=float("nan"), temp=float("inf"), load=2.0)])
    assert h.query("a", 0, 0)[0][1] == {"speed": None, "temp": None, "load": 2.0}


def test_rows_wait_at_most_commit_every_s_for_other_readers(tmp_path: Path) -> None:
    path = tmp_path / "h.db"
    clock = Clock()
    h = History(path, commit_every_s=1.0, prune_every_s=3600, clock=clock)
    h.add([reading("a", 1 * SECOND, v=1.0)])
    clock.now += 0.5
    h.add([reading("b", 2 * SECOND, v=2.0)])
    assert rows_on_disk(path) == []  # another reader does not see them yet
    other = History(path)
    assert other.query("a", 0, 10 * SECOND) == []
    assert h.query("a", 0, 10 * SECOND) == [(1 * SECOND, {"v": 1.0}, {})]  # this one does
    assert rows_on_disk(path) == [("a", 1 * SECOND), ("b", 2 * SECOND)]  # it committed them
    h.add([reading("a", 3 * SECOND, v=3.0)])
    clock.now += 0.9
    h.add([reading("a", 4 * SECOND, v=4.0)])
    assert len(rows_on_disk(path)) == 2
    clock.now += 0.1  # 1 s since the oldest waiting reading
    h.add([reading("a", 5 * SECOND, v=5.0)])
    assert rows_on_disk(path)[2:] == [("a", t * SECOND) for t in (3, 4, 5)]
    assert other.span() == (1 * SECOND, 5 * SECOND)
    h.add([reading("c", 6 * SECOND, v=6.0)])
    h.close()  # commits what waits
    assert other.query("c", 0, 10 * SECOND) == [(6 * SECOND, {"v": 6.0}, {})]
    assert h.rows_added == 6 and len(rows_on_disk(path)) == 6
    other.close()


def test_add_prunes_old_rows_in_steps_until_done(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each add deletes at most a step of rows (the loop waits for no whole prune); the steps
    go on after each commit until the file holds what one whole prune would leave."""
    monkeypatch.setattr(agent.history, "PRUNE_STEP_ROWS", 1000)
    clock = Clock()
    stepped = History(tmp_path / "s.db", retention_h=1.0, prune_every_s=30, clock=clock)
    whole = History(tmp_path / "w.db", retention_h=1.0, prune_every_s=1e9)
    stream = [reading(m, t * SECOND, v=float(t)) for t in range(3 * 3600) for m in ("a", "b")]
    last = 3 * 3600 * SECOND
    stream += [reading("a", last, v=0.0)] * 20  # the newest time, again: the cut stays put
    steps = []
    for k in range(0, len(stream), 200):  # 200 rows a second: a step of 1,000 catches up
        clock.now += 1.0
        before = stepped.rows_pruned
        stepped.add(stream[k : k + 200])
        steps.append(stepped.rows_pruned - before)
    extra = [reading("b", last, v=1.0)]
    clock.now += 30.0  # a prune is due: the steps then go on after each commit until done
    while (len(extra) == 1 or stepped.prune_pending) and len(extra) < 40:  # a row a second
        clock.now += 1.0
        before = stepped.rows_pruned
        stepped.add(extra[:1])
        extra.append(extra[0])
        steps.append(stepped.rows_pruned - before)
    whole.add(stream + extra[1:])
    assert whole.prune() == stepped.rows_pruned > 2 * 3600
    assert max(steps) == 1000 and steps.count(1000) > 3  # in steps, each at most the limit
    assert not stepped.prune_pending
    stepped.close()
    whole.close()
    assert rows_on_disk(tmp_path / "s.db") == rows_on_disk(tmp_path / "w.db")


def test_add_prunes_over_the_budget_in_steps_down_to_90_percent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(agent.history, "PRUNE_STEP_ROWS", 200)
    clock = Clock()
    h = History(tmp_path / "h.db", max_bytes=400_000, prune_every_s=30, clock=clock)
    fields = {f"s{k}": 1234.5678901 + k for k in range(8)}
    h.add(Reading("a", t, dict(fields)) for t in range(5000))  # far over the budget
    used = h.size_bytes()
    assert used > 500_000 and h.rows_pruned == 200  # the first add made one step
    steps = []
    for t in range(5000, 5060):  # a row a second: the steps catch up
        clock.now += 1.0
        before = h.rows_pruned
        h.add([Reading("a", t, dict(fields))])
        steps.append(h.rows_pruned - before)
    assert max(steps) == 200 and steps.count(200) > 3
    # down to about 90 % of the budget (pages free up only when emptied), not just under it
    assert not h.prune_pending and h.size_bytes() <= 0.92 * 400_000
    h.close()
    kept = rows_on_disk(tmp_path / "h.db")
    assert kept == [("a", t) for t in range(5060 - len(kept), 5060)]  # the oldest went


def test_a_large_batch_is_committed_without_waiting(tmp_path: Path) -> None:
    path = tmp_path / "h.db"
    h = History(path, commit_every_s=3600, prune_every_s=3600, clock=Clock())
    fields = {f"signal_{k:02d}": 1234.5678901 + k for k in range(50)}
    big = [Reading(f"m{i % 100}", i, fields) for i in range(5000)]  # > 4 MB of JSON
    h.add(big[:10])
    assert rows_on_disk(path) == []
    h.add(big[10:])
    assert len(rows_on_disk(path)) == 5000
    h.close()


def test_file_of_the_old_schema_opens_keeps_its_rows_and_prunes(tmp_path: Path) -> None:
    """A file written before the by-time index was dropped: the index goes at open, the rows
    stay, and pruning by age and size still works on them."""
    path = tmp_path / "history.db"
    old = sqlite3.connect(path, isolation_level=None)
    old.execute("PRAGMA journal_mode=WAL")
    old.executescript("""
        CREATE TABLE readings (
            machine TEXT NOT NULL,
            time_ns INTEGER NOT NULL,
            fields TEXT NOT NULL,
            quality TEXT
        );
        CREATE INDEX readings_by_machine_time ON readings (machine, time_ns);
        CREATE INDEX readings_by_time ON readings (time_ns);
    """)
    old_rows = [
        (m, t * 60 * SECOND, f'{{"speed":{t}.5,"temp":null}}', '{"temp":["bad",2156658688,"x"]}')
        for t in range(240)  # four hours
        for m in ("a", "b")
    ]
    old.executemany("INSERT INTO readings VALUES (?, ?, ?, ?)", old_rows)
    old.close()
    assert "readings_by_time" in indexes(path)

    h = History(path, retention_h=3.0, prune_every_s=3600, clock=Clock())
    assert indexes(path) == {"readings_by_machine_time"}
    assert h.span() == (0, 239 * 60 * SECOND)
    assert h.query("b", 10 * 60 * SECOND, 11 * 60 * SECOND) == [
        (t * 60 * SECOND, {"speed": t + 0.5, "temp": None}, {"temp": ["bad", 2156658688, "x"]})
        for t in (10, 11)
    ]
    h.add([reading("a", 240 * 60 * SECOND, speed=1.0)])
    assert h.prune() == 2 * 60  # minutes 0..59 of both machines: over three hours before 240
    assert h.span() == (60 * 60 * SECOND, 240 * 60 * SECOND)
    assert len(rows_on_disk(path)) == len(old_rows) + 1 - 2 * 60
    h.close()

    reopened = History(path, retention_h=3.0, max_bytes=1_000_000)
    reopened.max_bytes = reopened.size_bytes() // 2
    assert reopened.prune() > 0 and reopened.size_bytes() <= reopened.max_bytes
    assert rows_on_disk(path)[-1] == ("a", 240 * 60 * SECOND)  # the newest arrival stays
    reopened.close()


def test_span_and_pruning_seek_the_index_instead_of_scanning(tmp_path: Path) -> None:
    """Without a by-time index, the oldest/newest time and the age cut must not read the whole
    table or index: every statement they run seeks in the index (SEARCH), none scans."""
    h = History(tmp_path / "h.db", retention_h=1.0, prune_every_s=3600, clock=Clock())
    h.add(reading(m, t * 60 * SECOND, v=1.0) for t in range(120) for m in ("a", "b", "c"))
    h.commit()
    statements: list[str] = []
    h._db.set_trace_callback(statements.append)
    assert h.span() == (0, 119 * 60 * SECOND)
    assert h.prune() == 3 * 59
    h._db.set_trace_callback(None)
    plans = [
        detail
        for sql in statements
        if not sql.lstrip().upper().startswith(("PRAGMA", "BEGIN", "COMMIT"))
        for *_, detail in h._db.execute("EXPLAIN QUERY PLAN " + sql)
    ]
    assert any("readings_by_machine_time" in p for p in plans)
    assert not [p for p in plans if p.startswith(("SCAN readings", "SCAN r "))], plans
    h.close()


def test_doctests() -> None:
    assert doctest.testmod(agent.history).failed == 0


# -- failures: the history never stops the agent -------------------------------------------------
def test_a_file_that_is_not_a_database_is_moved_aside_and_a_fresh_one_started(
    tmp_path: Path,
) -> None:
    path = tmp_path / "history.db"
    garbage = random.Random(7).randbytes(50_000)
    path.write_bytes(garbage)
    with structlog.testing.capture_logs() as logs:
        h = History(path)
    (aside,) = tmp_path.glob("history.db.damaged-*")
    assert aside.read_bytes() == garbage  # kept for a look, not salvaged
    (event,) = [e for e in logs if e["event"] == "history_damaged"]
    assert event["log_level"] == "error" and event["moved_to"] == str(aside)
    assert "not a database" in event["damage"]
    h.add([reading("cnc-01", 5 * SECOND, speed=1.0)])
    assert h.query("cnc-01", 0, 10 * SECOND) == [(5 * SECOND, {"speed": 1.0}, {})]
    h.close()


def test_a_full_disk_loses_that_commit_counted_and_logged_once_then_recovers(
    tmp_path: Path,
) -> None:
    h = History(tmp_path / "history.db", commit_every_s=0.0)  # every add commits
    h.add([reading("cnc-01", SECOND, speed=1.0)])
    pages = h._db.execute("PRAGMA page_count").fetchone()[0]
    h._db.execute(f"PRAGMA max_page_count = {pages}")  # SQLite's own "database or disk is full"
    big = {f"s{i}": float(i) for i in range(300)}  # more than the free room of those pages
    with structlog.testing.capture_logs() as logs:
        for t in (2, 3):
            h.add([Reading("cnc-01", t * SECOND, big), Reading("cnc-02", t * SECOND, big)])
    assert h.rows_lost == 4
    (failed,) = [e for e in logs if e["event"] == "history_write_failed"]  # once, not twice
    assert "full" in failed["error"] and failed["lost_rows"] == 2
    h._db.execute("PRAGMA max_page_count = 1073741823")  # room again
    with structlog.testing.capture_logs() as logs:
        h.add([reading("cnc-01", 4 * SECOND, speed=4.0)])
    assert [e["event"] for e in logs] == ["history_write_recovered"]
    assert [t for t, _, _ in h.query("cnc-01", 0, 10 * SECOND)] == [SECOND, 4 * SECOND]
    h.close()
