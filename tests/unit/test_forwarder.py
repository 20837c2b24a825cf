"""The forwarder against a scripted sink standing in for the HTTP server.

The real InfluxDB and VictoriaMetrics servers are exercised by the sink's integration tests;
here a sink answers what each test scripts (503 with Retry-After, 413, 400, 401...) so the
forwarder's reactions can be checked exactly and fast.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import structlog

from agent.forwarder import Forwarder
from agent.sinks.base import Sink, SinkError
from agent.spool import Spool

Outcome = Exception | None


class ScriptedSink:
    """Answers each write with the next scripted outcome (``None``: 204), then accepts."""

    def __init__(
        self, script: list[Outcome] | Callable[[bytes], Outcome] = (), delay_s: float = 0.0
    ) -> None:
        self.name = "scripted"
        self.script = script if callable(script) else list(script)
        self.delay_s = delay_s
        self.writes: list[tuple[float, bytes]] = []
        self.accepted: list[bytes] = []
        self.started = asyncio.Event()

    async def write(self, lines: bytes) -> None:
        self.writes.append((time.monotonic(), lines))
        self.started.set()
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if callable(self.script):
            outcome = self.script(lines)
        else:
            outcome = self.script.pop(0) if self.script else None
        if outcome is not None:
            raise outcome
        self.accepted.append(lines)

    async def close(self) -> None:
        pass

    def accepted_lines(self) -> list[bytes]:
        return [line for body in self.accepted for line in body.split(b"\n")]


class GzipSink(ScriptedSink):
    """Takes the spool's rows as one gzip body (as the InfluxDB sinks at gzip level 1)."""

    gzip_spool = True

    def __init__(self, gzip_script: list[Outcome] = (), **kw: Any) -> None:
        super().__init__(**kw)
        self.gzip_script = list(gzip_script)
        self.gzip_writes: list[bytes] = []  # decompressed: every body is checked to be gzip

    async def write_gzip(self, body: bytes) -> None:
        try:
            text = gzip.decompress(body)
        except (OSError, EOFError) as exc:  # as a real server answers a body it cannot read
            raise SinkError(f"gzip: {exc}", status=400) from None
        assert text.endswith(b"\n")
        self.gzip_writes.append(text)
        outcome = self.gzip_script.pop(0) if self.gzip_script else None
        if outcome is not None:
            raise outcome
        self.accepted.append(text[:-1])


def lines(row: int, n: int) -> list[bytes]:
    return [b"m,row=%04d n=%di %d" % (row, j, 1_700_000_000 + row) for j in range(n)]


def fill(spool: Spool, rows: int, points: int = 10, first: int = 0) -> list[bytes]:
    """Append ``rows`` rows of ``points`` lines; return all lines in order."""
    out: list[bytes] = []
    for row in range(first, first + rows):
        body = lines(row, points)
        spool.append(b"\n".join(body), points)
        out += body
    return out


@pytest.fixture
def spool(tmp_path: Path) -> Spool:
    return Spool(tmp_path / "scripted.db")


def forwarder(spool: Spool, sink: Sink, **kw: Any) -> Forwarder:
    kw = {"batch_interval_s": 0.0, "backoff_min_s": 0.01, "rng": random.Random(1), **kw}
    return Forwarder(spool, sink, **kw)


async def run_until(fwd: Forwarder, done: Callable[[], bool], timeout_s: float = 5.0) -> None:
    """Run the forwarder until ``done()`` (checked every 10 ms), then stop it."""
    stop = asyncio.Event()
    task = asyncio.create_task(fwd.run(stop))
    deadline = time.monotonic() + timeout_s
    while not done() and time.monotonic() < deadline:  # noqa: ASYNC110 (any condition)
        await asyncio.sleep(0.01)
    stop.set()
    await asyncio.wait_for(task, 5)
    assert done(), "condition not reached in time"


def error(status: int | None, retryable: bool = False, **kw: Any) -> SinkError:
    return SinkError(f"HTTP {status}", status=status, retryable=retryable, **kw)


# -- retryable --------------------------------------------------------------------------------
async def test_503_with_retry_after_then_204(spool: Spool) -> None:
    sent = fill(spool, 3)
    sink = ScriptedSink([error(503, True, retry_after_s=0.2)])
    fwd = forwarder(spool, sink)
    with structlog.testing.capture_logs() as logs:
        await run_until(fwd, lambda: spool.stats.points == 0)
    assert len(sink.writes) == 2
    assert sink.writes[1][0] - sink.writes[0][0] >= 0.2  # Retry-After honoured
    assert sink.writes[0][1] == sink.writes[1][1]  # the same batch, kept in the spool
    assert sink.accepted_lines() == sent
    s = fwd.stats
    assert (s.failed_writes, s.retried, s.written_points, s.written_batches) == (1, 1, 30, 1)
    assert not s.failing
    assert [e["event"] for e in logs] == ["sink_write_failed", "sink_recovered"]
    assert logs[0]["log_level"] == "warning" and logs[0]["status"] == 503


def test_backoff_is_exponential_capped_jittered_and_honours_retry_after(spool: Spool) -> None:
    fwd = forwarder(spool, ScriptedSink(), backoff_min_s=1.0, backoff_max_s=8.0)
    delays = [fwd._failed(error(503, True)) for _ in range(8)]
    for attempt, delay in enumerate(delays):
        full = min(8.0, 2.0**attempt)
        assert full / 2 <= delay <= full
    assert fwd._failed(error(429, True, retry_after_s=30.0)) == 30.0
    assert fwd._failed(error(429, True, retry_after_s=9999.0)) == 600.0  # retry_after_max_s
    slow = forwarder(spool, ScriptedSink(), config_backoff_s=5.0, config_backoff_max_s=60.0)
    delays = [slow._failed(error(401)) for _ in range(10)]
    assert 2.5 <= delays[0] <= 5.0 and all(30.0 <= d <= 60.0 for d in delays[4:])


async def test_a_sink_bug_is_logged_once_and_retried(spool: Spool) -> None:
    sent = fill(spool, 2)
    sink = ScriptedSink([RuntimeError("boom"), RuntimeError("boom")])
    fwd = forwarder(spool, sink)
    with structlog.testing.capture_logs() as logs:
        await run_until(fwd, lambda: spool.stats.points == 0)
    assert sink.accepted_lines() == sent
    events = [e["event"] for e in logs]
    assert events == ["sink_write_crashed", "sink_write_failed", "sink_recovered"]
    assert logs[0]["exc_info"] is True and "RuntimeError: boom" in logs[1]["reason"]


async def test_a_step_that_raises_is_logged_once_and_delivery_goes_on(spool: Spool) -> None:
    sent = fill(spool, 2)
    sink = ScriptedSink()
    fwd = forwarder(spool, sink, backoff_max_s=0.05)
    spool._db.close()  # every peek, ack and checkpoint now raises (as a failing disk would)

    async def repaired_later() -> None:
        await asyncio.sleep(0.4)
        spool._db = spool._open()

    with structlog.testing.capture_logs() as logs:
        repair = asyncio.create_task(repaired_later())
        await run_until(fwd, lambda: spool.stats.points == 0)
        await repair
    assert sink.accepted_lines() == sent
    events = [e["event"] for e in logs]
    assert events.count("forwarder_step_failed") == 1  # ~8 failed steps, logged once
    assert events.index("forwarder_step_failed") < events.index("forwarder_step_recovered")


# -- gzip bodies from the spool's rows --------------------------------------------------------
async def test_a_gzip_sink_gets_the_rows_as_one_body_per_batch(spool: Spool) -> None:
    sent = fill(spool, 7)
    sink = GzipSink()
    fwd = forwarder(spool, sink, batch_points=30)
    await run_until(fwd, lambda: spool.stats.points == 0)
    assert [t.count(b"\n") for t in sink.gzip_writes] == [30, 30, 10]
    assert sink.accepted_lines() == sent and sink.writes == []  # never as lines
    assert (fwd.stats.written_points, fwd.stats.written_batches) == (70, 3)


@pytest.mark.parametrize("status", [400, 413])
async def test_a_refused_gzip_body_is_sent_again_as_lines(spool: Spool, status: int) -> None:
    sent = fill(spool, 3)
    sink = GzipSink([error(status)])  # e.g. a server that cannot read this gzip
    fwd = forwarder(spool, sink)
    await run_until(fwd, lambda: spool.stats.points == 0)
    assert len(sink.gzip_writes) == 1 and len(sink.writes) == 1
    assert sink.accepted_lines() == sent and fwd.stats.rejected_points == 0
    assert (fwd.stats.failed_writes, fwd.stats.written_points) == (1, 30)


async def test_a_damaged_row_is_skipped_counted_and_the_rest_delivered(spool: Spool) -> None:
    sent = fill(spool, 3)
    spool._db.execute("UPDATE batches SET crc = crc + 1 WHERE id = 2")  # bit rot (the spool
    sink = GzipSink()  # holds the file's lock: changed through its own connection)
    fwd = forwarder(spool, sink)
    with structlog.testing.capture_logs() as logs:
        await run_until(fwd, lambda: spool.stats.points == 0)
    assert sink.gzip_writes == [] and len(sink.writes) == 1  # the body was refused (its CRC)
    assert sink.accepted_lines() == sent[:10] + sent[20:]
    assert spool.stats.recovered_loss == 10 and fwd.stats.written_points == 20
    (event,) = [e for e in logs if e["event"] == "spool_rows_damaged"]
    assert event["rows"] == [2] and event["lost_points"] == 10


# -- 413 --------------------------------------------------------------------------------------
async def test_413_splits_in_halves_and_later_batches_are_capped(spool: Spool) -> None:
    sent = fill(spool, 5)  # rows of 10 lines; the server takes at most 8 lines
    sink = ScriptedSink(lambda body: error(413) if body.count(b"\n") >= 8 else None)
    fwd = forwarder(spool, sink, batch_points=50)
    await run_until(fwd, lambda: spool.stats.points == 0)
    assert sink.accepted_lines() == sent  # every line once, in order
    assert all(body.count(b"\n") < 8 for body in sink.accepted)
    assert fwd.stats.split_batches >= 4
    assert fwd.stats.written_points == 50 and fwd.stats.rejected_points == 0
    assert fwd._limit_points <= 8


async def test_413_for_a_single_line_is_dead_lettered(spool: Spool, tmp_path: Path) -> None:
    sent = fill(spool, 1, points=2)
    sink = ScriptedSink(lambda body: error(413))
    fwd = forwarder(spool, sink)
    await run_until(fwd, lambda: spool.stats.points == 0)
    records = [json.loads(x) for x in fwd.dead_letter.read_text().splitlines()]
    assert [r["lines"] for r in records] == [[sent[0].decode()], [sent[1].decode()]]
    assert fwd.stats.rejected_points == 2 and fwd.stats.written_points == 0


# -- 400 / 422 --------------------------------------------------------------------------------
@pytest.mark.parametrize("status", [400, 422])
async def test_refused_lines_go_to_the_dead_letter_file_and_leave_the_spool(
    spool: Spool, tmp_path: Path, status: int
) -> None:
    sent = fill(spool, 4)
    reason = 'partial write: field type conflict: input field "n" is type integer'
    sink = ScriptedSink([SinkError(reason, status=status)])
    dead = tmp_path / "dead-letter" / "scripted.jsonl"
    fwd = forwarder(spool, sink, batch_points=20, dead_letter=dead)
    with structlog.testing.capture_logs() as logs:
        await run_until(fwd, lambda: spool.stats.points == 0)
    (record,) = [json.loads(x) for x in dead.read_text().splitlines()]
    assert record["sink"] == "scripted" and record["status"] == status
    assert record["reason"] == reason and record["points"] == 20
    assert record["lines"] == [x.decode() for x in sent[:20]]
    assert record["time"].endswith("+00:00")
    assert sink.accepted_lines() == sent[20:]
    assert (fwd.stats.rejected_points, fwd.stats.written_points) == (20, 20)
    assert not fwd.stats.failing  # the sink works; the data was bad
    assert [e["event"] for e in logs] == ["batch_rejected"]


def test_the_dead_letter_file_rotates(spool: Spool, tmp_path: Path) -> None:
    fwd = forwarder(spool, ScriptedSink(), dead_letter_max_bytes=10)
    for _ in range(3):
        fwd._reject(b"m x=1 1", 1, error(400))
    assert len(fwd.dead_letter.read_text().splitlines()) == 1
    old = fwd.dead_letter.with_name(fwd.dead_letter.name + ".1")
    assert len(old.read_text().splitlines()) == 1


# -- 401 / 403 / other configuration errors ---------------------------------------------------
@pytest.mark.parametrize(
    ("status", "event"),
    [(401, "sink_unauthorized"), (403, "sink_unauthorized"), (404, "sink_misconfigured")],
)
async def test_configuration_errors_keep_the_data_and_log_once(
    spool: Spool, status: int, event: str
) -> None:
    sent = fill(spool, 3)
    answers: list[Outcome] = [error(status)] * 5
    sink = ScriptedSink(answers)
    fwd = forwarder(spool, sink, config_backoff_s=0.01, config_backoff_max_s=0.02)
    with structlog.testing.capture_logs() as logs:
        await run_until(fwd, lambda: len(sink.writes) >= 4)
        assert spool.stats.points == 30  # nothing lost, nothing dead-lettered
        assert fwd.stats.failing and str(status) in (fwd.stats.last_error or "")
        assert fwd.snapshot()["failing"] is True
        await run_until(fwd, lambda: spool.stats.points == 0)
    assert sink.accepted_lines() == sent
    assert [e["event"] for e in logs] == [event, "sink_recovered"]
    assert logs[0]["log_level"] == "error" and logs[1]["failed_writes"] == 5
    assert fwd.stats.rejected_points == 0 and not fwd.dead_letter.exists()


# -- batching, order ----------------------------------------------------------------------------
async def test_a_partial_batch_waits_for_its_age(spool: Spool) -> None:
    fill(spool, 1)
    appended = time.monotonic()
    sink = ScriptedSink()
    fwd = forwarder(spool, sink, batch_interval_s=0.3)
    await run_until(fwd, lambda: spool.stats.points == 0)
    assert sink.writes[0][0] - appended >= 0.25


async def test_a_full_batch_goes_at_once_and_batches_never_exceed_the_limit(
    spool: Spool,
) -> None:
    sent = fill(spool, 12)
    sink = ScriptedSink()
    fwd = forwarder(spool, sink, batch_points=50, batch_interval_s=30.0)
    await run_until(fwd, lambda: spool.stats.points == 20)  # 2 x 50, 20 wait for their age
    assert [body.count(b"\n") + 1 for body in sink.accepted] == [50, 50]
    assert await fwd.drain(2.0) is True  # the rest goes on drain, whatever its age
    assert sink.accepted_lines() == sent


async def test_newest_first(spool: Spool) -> None:
    fill(spool, 6)
    sink = ScriptedSink()
    fwd = forwarder(spool, sink, batch_points=20, newest_first=True)
    await run_until(fwd, lambda: spool.stats.points == 0)
    rows = [
        sorted({int(x.split(b"row=")[1][:4]) for x in body.split(b"\n")}) for body in sink.accepted
    ]
    assert rows == [[4, 5], [2, 3], [0, 1]]


# -- drain ------------------------------------------------------------------------------------
async def test_drain_delivers_what_is_left(spool: Spool) -> None:
    sent = fill(spool, 30)
    sink = ScriptedSink()
    fwd = forwarder(spool, sink, batch_points=100)
    assert await fwd.drain(5.0) is True
    assert sink.accepted_lines() == sent and spool.stats.points == 0


async def test_drain_gives_up_at_the_timeout_and_keeps_the_rest(spool: Spool) -> None:
    fill(spool, 3)
    sink = ScriptedSink(lambda body: error(503, True))
    fwd = forwarder(spool, sink, backoff_min_s=0.05)
    start = time.monotonic()
    with structlog.testing.capture_logs() as logs:
        assert await fwd.drain(0.3) is False
    assert time.monotonic() - start < 1.0
    assert spool.stats.points == 30
    assert logs[-1]["event"] == "drain_timed_out" and logs[-1]["left_points"] == 30


async def test_drain_cuts_a_slow_write_at_the_timeout(spool: Spool) -> None:
    fill(spool, 3)
    sink = ScriptedSink(delay_s=5.0)
    fwd = forwarder(spool, sink)
    start = time.monotonic()
    assert await fwd.drain(0.2) is False
    assert time.monotonic() - start < 1.0 and spool.stats.points == 30


async def test_drain_after_stop_waits_for_the_write_in_flight(spool: Spool) -> None:
    sent = fill(spool, 10)
    sink = ScriptedSink(delay_s=0.2)
    fwd = forwarder(spool, sink, batch_points=30)
    stop = asyncio.Event()
    task = asyncio.create_task(fwd.run(stop))
    await asyncio.wait_for(sink.started.wait(), 5)
    stop.set()  # as the runtime does on SIGTERM: stop, then drain at once
    assert await fwd.drain(5.0) is True
    await asyncio.wait_for(task, 5)
    assert sink.accepted_lines() == sent  # nothing twice, nothing missing
    assert fwd.stats.written_points == 100


def test_snapshot_has_what_the_monitor_reads(spool: Spool) -> None:
    fill(spool, 2)
    snap = forwarder(spool, ScriptedSink()).snapshot()
    assert snap["sink"] == "scripted" and snap["spool_points"] == 20
    for key in ("written_points", "failed_writes", "rejected_points", "dropped_points"):
        assert snap[key] == 0
    assert snap["write_latency_seconds"] is None and snap["failing"] is False
