"""The spool: order, budget, restarts, damaged files, and SIGKILL in every fsync mode."""

from __future__ import annotations

import gzip
import os
import random
import signal
import sqlite3
import string
import subprocess
import sys
import time
from pathlib import Path

import pytest
import structlog

from agent.deflate import ChunkError, deflate
from agent.spool import Spool, SpoolError

ROOT = Path(__file__).resolve().parents[2]


def payload(i: int, n_points: int = 10, width: int = 0) -> bytes:
    """``n_points`` lines tagged with the row number ``i`` (padded to ``width`` bytes a line).

    The padding is random letters, so that rows stay about that large once compressed.
    """
    rng = random.Random(i)
    pads = ["".join(rng.choices(string.ascii_letters, k=width)) for _ in range(n_points)]
    lines = [f'm,row={i:04d} n={j}i,pad="{pads[j]}" 1{i:04d}' for j in range(n_points)]
    return "\n".join(lines).encode()


def stored(i: int, n_points: int = 10, width: int = 0) -> int:
    """Bytes the spool stores (and budgets) for ``payload(i, ...)``: compressed."""
    return len(deflate(payload(i, n_points, width)).data)


def rows_of(batch_payload: bytes) -> list[int]:
    """The row numbers in a merged payload, in order, once each."""
    seen: list[int] = []
    for line in batch_payload.split(b"\n"):
        row = int(line.split(b",row=")[1].split(b" ")[0])
        if not seen or seen[-1] != row:
            seen.append(row)
    return seen


@pytest.fixture
def spool(tmp_path: Path) -> Spool:
    return Spool(tmp_path / "s.db")


# -- order ------------------------------------------------------------------------------------
def test_peek_merges_oldest_rows_and_ack_removes_them(spool: Spool) -> None:
    for i in range(10):
        spool.append(payload(i), 10)
    assert (spool.stats.rows, spool.stats.points) == (10, 100)
    batch = spool.peek(max_points=35)
    assert batch is not None
    assert rows_of(batch.payload) == [0, 1, 2]  # a fourth row would pass 35 points
    assert batch.n_points == 30 and batch.payload.count(b"\n") == 29
    assert batch.n_bytes == sum(stored(i) for i in range(3))
    assert spool.peek(max_points=35) == batch  # peek does not consume
    assert spool.ack(batch) == 30
    assert spool.ack(batch) == 0  # acking twice removes nothing more
    assert (spool.stats.rows, spool.stats.points, spool.stats.acked_points) == (7, 70, 30)
    batch = spool.peek(max_points=1)  # always at least one row
    assert batch is not None and rows_of(batch.payload) == [3]


def test_newest_first(spool: Spool) -> None:
    for i in range(10):
        spool.append(payload(i), 10)
    delivered = []
    while (batch := spool.peek(max_points=40, newest_first=True)) is not None:
        delivered.append(rows_of(batch.payload))  # each batch in time order inside
        spool.ack(batch)
    assert delivered == [[6, 7, 8, 9], [2, 3, 4, 5], [0, 1]]
    assert spool.peek() is None and spool.stats.bytes == 0


def test_peek_respects_max_bytes(spool: Spool) -> None:
    for i in range(5):
        spool.append(payload(i), 10)
    batch = spool.peek(max_bytes=stored(0) + stored(1) + 1)
    assert batch is not None and rows_of(batch.payload) == [0, 1]


def test_reopened_spool_delivers_what_it_held(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s.db")
    for i in range(5):
        spool.append(payload(i), 10)
    batch = spool.peek(max_points=20)
    assert batch is not None
    spool.ack(batch)
    spool.close()
    assert not Path(f"{tmp_path / 's.db'}-wal").exists()  # closed cleanly: checkpointed
    again = Spool(tmp_path / "s.db")
    assert (again.stats.rows, again.stats.points) == (3, 30)
    batch = again.peek()
    assert batch is not None and rows_of(batch.payload) == [2, 3, 4]
    assert again.append(payload(5), 10) == 6  # ids keep growing, never reused


def test_a_second_process_cannot_open_a_spool_in_use(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s.db")
    spool.append(payload(0), 10)
    code = f"from agent.spool import Spool; Spool({str(tmp_path / 's.db')!r})"
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=30,
        check=False,
    )  # fmt: skip
    assert proc.returncode != 0
    assert "SpoolError" in proc.stderr and "locked" in proc.stderr
    assert spool.stats.rows == 1 and not list(tmp_path.glob("*.damaged-*"))


# -- budget -----------------------------------------------------------------------------------
def test_budget_drops_the_oldest_and_counts_exactly_what_is_missing(tmp_path: Path) -> None:
    size = stored(0, width=40)
    spool = Spool(tmp_path / "s.db", max_bytes=10 * size + size // 2)
    with structlog.testing.capture_logs() as logs:
        for i in range(40):
            spool.append(payload(i, width=40), 10)
    s = spool.stats
    assert (s.rows, s.bytes) == (10, sum(stored(i, width=40) for i in range(30, 40)))
    held = []
    while (batch := spool.peek(max_points=25)) is not None:
        held += rows_of(batch.payload)
        spool.ack(batch)
    assert held == list(range(30, 40))  # the newest survive, in order
    assert s.dropped_points == 40 * 10 - len(held) * 10 == s.appended_points - s.acked_points
    assert s.dropped_bytes == sum(stored(i, width=40) for i in range(30))
    events = [e["event"] for e in logs]
    assert events == ["spool_overflowed"]  # once for the whole episode, not per row
    with structlog.testing.capture_logs() as logs:
        spool.append(payload(99), 10)
        batch = spool.peek()
        assert batch is not None
        spool.ack(batch)
    assert logs == []  # the episode ended with the previous acks (logged then)


def test_budget_episode_end_is_logged_with_totals(tmp_path: Path) -> None:
    size = stored(0)
    spool = Spool(tmp_path / "s.db", max_bytes=3 * size)
    with structlog.testing.capture_logs() as logs:
        for i in range(6):
            spool.append(payload(i), 10)
        while (batch := spool.peek()) is not None:
            spool.ack(batch)
    assert [e["event"] for e in logs] == ["spool_overflowed", "spool_overflow_ended"]
    assert logs[1]["dropped_points"] == 30
    assert logs[1]["dropped_bytes"] == sum(stored(i) for i in range(3))


def test_rows_being_delivered_are_not_dropped(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s.db", max_bytes=4 * stored(0))
    for i in range(4):
        spool.append(payload(i), 10)
    batch = spool.peek(max_points=20)  # rows 0 and 1 are in flight
    assert batch is not None
    spool.append(payload(4), 10)  # over budget: row 2 goes, not the leased 0 and 1
    assert spool.ack(batch) == 20
    rest = spool.peek()
    assert rest is not None and rows_of(rest.payload) == [3, 4]
    assert spool.stats.dropped_points == 10


def test_a_payload_larger_than_the_budget_is_dropped_and_counted(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s.db", max_bytes=100)  # compressed, the payload is ~1.4 kB
    assert spool.append(payload(0, width=200), 10) is None
    assert (spool.stats.dropped_points, spool.stats.rows) == (10, 0)


def test_a_lowered_budget_applies_at_open(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s.db")
    for i in range(10):
        spool.append(payload(i), 10)
    spool.close()
    smaller = Spool(tmp_path / "s.db", max_bytes=4 * stored(0))
    assert (smaller.stats.rows, smaller.stats.dropped_points) == (4, 60)


# -- damage -----------------------------------------------------------------------------------
def _damaged(tmp_path: Path) -> list[Path]:
    return sorted(p for p in tmp_path.iterdir() if ".damaged-" in p.name)


def test_garbage_file_is_moved_aside_and_the_spool_starts(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    path.write_bytes(os.urandom(50_000))
    with structlog.testing.capture_logs() as logs:
        spool = Spool(path)
    assert spool.stats.rows == 0
    assert spool.stats.recovered_loss > 0  # unknown content: an estimate, flagged as one
    assert [p.name.split(".damaged-")[0] for p in _damaged(tmp_path)] == ["s.db"]
    (event,) = logs
    assert event["event"] == "spool_damaged" and event["loss_exact"] is False
    assert spool.append(payload(0), 10) is not None


def _fill_and_close(path: Path, rows: int, width: int = 300) -> int:
    spool = Spool(path)
    for i in range(rows):
        spool.append(payload(i, n_points=4, width=width), 4)
    spool.close()
    return stored(0, n_points=4, width=width)


def test_a_bad_page_loses_only_its_rows_and_the_loss_is_counted(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    _fill_and_close(path, 300)  # ~1.2 kB rows: three per 4 kB page, 100 leaf pages
    data = bytearray(path.read_bytes())
    page = 4096
    middle = (len(data) // page // 2) * page
    data[middle : middle + page] = random.Random(1).randbytes(page)  # one leaf page of garbage
    path.write_bytes(bytes(data))
    spool = Spool(path)
    got = []
    while (batch := spool.peek()) is not None:
        got += rows_of(batch.payload)
        spool.ack(batch)
    lost_rows = 300 - len(got)
    assert 1 <= lost_rows <= 10  # the rows of the damaged page (and only those)
    assert got == sorted(got) and set(got) <= set(range(300))
    assert spool.stats.salvaged_points == 4 * len(got)
    assert spool.stats.recovered_loss == 4 * lost_rows
    assert len(_damaged(tmp_path)) == 1


def test_a_truncated_file_is_salvaged(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    _fill_and_close(path, 200)
    size = path.stat().st_size
    with path.open("r+b") as f:
        f.truncate(size // 2)
    spool = Spool(path)
    assert 0 < spool.stats.rows < 200
    assert spool.stats.salvaged_points + spool.stats.recovered_loss == pytest.approx(800, rel=0.1)
    batch = spool.peek(max_points=10_000)
    assert batch is not None and batch.n_points == spool.stats.points


def test_a_torn_wal_tail_is_not_damage(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    code = (
        "import os, sys\n"
        "from agent.spool import Spool\n"
        f"s = Spool({str(path)!r}, fsync='never')\n"
        "for i in range(20):\n"
        "    s.append(b'm x=1 %d' % i * 30, 30)\n"
        "os._exit(0)\n"  # no close: everything stays in the WAL
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=60)
    wal = Path(f"{path}-wal")
    full = wal.stat().st_size
    with wal.open("r+b") as f:
        f.truncate(full - 1000)  # the last commit's frames are torn
    spool = Spool(path)
    assert spool.stats.rows == 19  # the last append is gone, the file is consistent
    assert not _damaged(tmp_path)


def test_not_a_spool_is_moved_aside(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE batches (x TEXT)")
    db.commit()
    db.close()
    spool = Spool(path)
    assert spool.stats.rows == 0 and len(_damaged(tmp_path)) == 1


# -- the stored format -------------------------------------------------------------------------
def test_rows_are_stored_compressed_with_their_checksum(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s.db")
    for i in range(3):
        spool.append(payload(i), 10)
    spool.append(deflate(payload(3)), 10)  # compressed by the caller: stored as is
    assert spool.stats.bytes == sum(stored(i) for i in range(4))
    assert spool.stats.bytes < sum(len(payload(i)) for i in range(4)) / 3  # repetitive lines
    batch = spool.peek()
    assert batch is not None
    assert batch.payload == b"\n".join(payload(i) for i in range(4))
    assert gzip.decompress(batch.gzip_body()) == batch.payload + b"\n"
    assert batch.points == (10, 10, 10, 10)


def _legacy_spool(path: Path, rows: range) -> None:
    """A spool as agents before the compressed format wrote it: five columns, plain lines."""
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute(
        "CREATE TABLE batches (id INTEGER PRIMARY KEY AUTOINCREMENT, created_ns INTEGER NOT NULL,"
        " n_points INTEGER NOT NULL, n_bytes INTEGER NOT NULL, payload BLOB NOT NULL)"
    )
    for i in rows:
        db.execute(
            "INSERT INTO batches (created_ns, n_points, n_bytes, payload) VALUES (?, 10, ?, ?)",
            (time.time_ns(), len(payload(i)), payload(i)),
        )
    db.close()


def test_a_spool_of_the_previous_format_is_delivered_after_an_upgrade(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    _legacy_spool(path, range(3))
    spool = Spool(path)  # the columns are added; the plain rows stay as they are
    assert (spool.stats.rows, spool.stats.points) == (3, 30)
    assert not _damaged(tmp_path)
    spool.append(payload(3), 10)  # a new row, compressed, after the old ones
    batch = spool.peek()
    assert batch is not None and rows_of(batch.payload) == [0, 1, 2, 3]
    assert gzip.decompress(batch.gzip_body()) == batch.payload + b"\n"
    spool.ack(batch)
    spool.close()
    assert Spool(path).stats.rows == 0


def test_a_damaged_spool_of_the_previous_format_is_salvaged(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    _legacy_spool(path, range(200))
    with path.open("r+b") as f:
        f.truncate(path.stat().st_size // 2)
    spool = Spool(path)
    assert 0 < spool.stats.rows < 200 and len(_damaged(tmp_path)) == 1
    batch = spool.peek(max_points=10_000)
    assert batch is not None
    got = rows_of(batch.payload)  # the plain rows that could be read, in order
    assert got == sorted(got) and len(got) == spool.stats.rows and set(got) <= set(range(200))


def _corrupt_row(path: Path, row_id: int) -> None:
    """Flip a byte inside one stored row's compressed payload, as bit rot would."""
    db = sqlite3.connect(path, isolation_level=None)
    (data,) = db.execute("SELECT payload FROM batches WHERE id = ?", (row_id,)).fetchone()
    data = bytearray(data)
    data[len(data) // 2] ^= 0x10
    db.execute("UPDATE batches SET payload = ? WHERE id = ?", (bytes(data), row_id))
    db.close()


def test_a_row_failing_its_checksum_is_found_and_skipped(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    spool = Spool(path)
    for i in range(4):
        spool.append(payload(i, width=30), 10)
    spool.close()
    _corrupt_row(path, 2)
    spool = Spool(path)  # SQLite sees nothing wrong: the row is found when read
    batch = spool.peek()
    assert batch is not None and batch.ids == (1, 2, 3, 4)
    text, points, damaged = batch.text()
    assert damaged == (2,) and points == 30
    assert rows_of(text) == [0, 2, 3]  # row numbers are 0-based, ids 1-based
    with pytest.raises(ChunkError):
        _ = batch.payload


def test_salvage_keeps_no_row_that_fails_its_checksum(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    _fill_and_close(path, 200)
    _corrupt_row(path, 7)
    with path.open("r+b") as f:  # and damage the file, so that it is salvaged
        f.truncate(path.stat().st_size * 3 // 4)
    spool = Spool(path)
    batch = spool.peek(max_points=10_000)
    assert batch is not None
    got = rows_of(batch.payload)  # inflates every row: none is damaged
    assert 6 not in got and got[:6] == [0, 1, 2, 3, 4, 5]
    assert spool.stats.salvaged_points == 4 * len(got)


# -- SIGKILL ----------------------------------------------------------------------------------
CHILD = """
import sys
from agent.spool import Spool
spool = Spool(sys.argv[1], fsync=sys.argv[2], max_bytes=1 << 30)
line = b"m,machine=cnc-01 a=1.5,b=2.5,c=3.5 1700000000000000000"
body = b"\\n".join([line] * 50)
while True:
    print(spool.append(body, 50), flush=True)
"""


@pytest.mark.parametrize("fsync", ["always", "interval", "never"])
def test_sigkill_mid_append_loses_nothing_acknowledged(tmp_path: Path, fsync: str) -> None:
    path = tmp_path / "s.db"
    with subprocess.Popen(
        [sys.executable, "-c", CHILD, str(path), fsync],
        cwd=ROOT, stdout=subprocess.PIPE, text=True,
    ) as proc:  # fmt: skip
        assert proc.stdout is not None
        printed: list[int] = []
        deadline = time.monotonic() + 30
        while len(printed) < 300 and time.monotonic() < deadline:
            printed.append(int(proc.stdout.readline()))
        os.kill(proc.pid, signal.SIGKILL)  # while it appends
        printed += [int(line) for line in proc.stdout.read().split()]
    assert proc.returncode == -signal.SIGKILL
    assert len(printed) >= 300
    spool = Spool(path)
    batch = spool.peek(max_points=10**9, max_bytes=1 << 40)
    assert batch is not None
    assert set(printed) <= set(batch.ids)  # every acknowledged append is there
    assert len(batch.ids) - len(printed) in (0, 1)  # at most the one not yet printed
    assert batch.payload.count(b"\n") + 1 == 50 * len(batch.ids)


def test_sync_and_close_modes(tmp_path: Path) -> None:
    for mode in ("always", "interval", "never"):
        spool = Spool(tmp_path / f"{mode}.db", fsync=mode, fsync_interval_s=0.0)  # type: ignore[arg-type]
        spool.append(payload(0), 10)
        spool.sync_if_due()
        spool.sync()
        spool.close()
        assert Spool(tmp_path / f"{mode}.db").stats.rows == 1
    with pytest.raises(ValueError, match="fsync"):
        Spool(tmp_path / "x.db", fsync="sometimes")  # type: ignore[arg-type]


def test_a_checkpoint_that_fails_never_raises_is_logged_once_and_retried(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s.db", fsync_interval_s=3600.0)
    spool.append(payload(0), 10)  # not synced yet
    spool.fsync_interval_s = 0.0  # from now on, every call syncs
    db, spool._db = spool._db, sqlite3.connect(":memory:")
    spool._db.close()  # every call on it raises, as a failing disk would
    with structlog.testing.capture_logs() as logs:
        spool.sync()
        spool.sync_if_due()  # still dirty: tried again
        assert spool.append(payload(1), 10) is None  # the append and its sync: no exception
    events = [e["event"] for e in logs]
    assert events.count("spool_sync_failed") == 1 and "spool_append_failed" in events
    spool._db = db
    with structlog.testing.capture_logs() as logs:
        spool.sync_if_due()
    assert [e["event"] for e in logs] == ["spool_sync_recovered"]
    spool.close()
    assert Spool(tmp_path / "s.db").stats.rows == 1


def test_an_unusable_directory_is_an_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(SpoolError):
        Spool(blocker / "s.db")
