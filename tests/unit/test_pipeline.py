"""When the pipeline appends to the spool: on a tick where enough values wait or the oldest has
waited ``append_s``, and a batch's age counts from its oldest reading's arrival."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
import structlog

from agent.history import History
from agent.lineprotocol import Encoder
from agent.pipeline import APPEND_VALUES, Pipeline
from agent.spool import Spool
from connectors.types import Reading


def reading(machine: str = "m1", n_fields: int = 50) -> Reading:
    return Reading(machine, time.time_ns(), {f"s{i}": float(i) for i in range(n_fields)})


@pytest.fixture
def spool(tmp_path: Path):
    s = Spool(tmp_path / "sink.db")
    yield s
    s.close()


def pipeline(spool: Spool, **kw: float) -> Pipeline:
    return Pipeline([], [spool], Encoder("machine"), **kw)  # type: ignore[arg-type]


def test_nothing_waiting_is_never_due(spool: Spool) -> None:
    p = pipeline(spool, append_s=0.0)
    assert not p.due()
    assert p.flush() == 0
    assert spool.peek() is None


def test_young_readings_wait_until_append_s_less_half_a_tick(spool: Spool) -> None:
    p = pipeline(spool, flush_s=0.1, append_s=0.4)
    p.accept(reading())
    assert not p.due()  # 50 values, just arrived
    time.sleep(0.2)
    p.accept(reading("m2"))
    assert not p.due()  # the oldest is 0.2 s old
    time.sleep(0.16)
    assert p.due()  # 0.36 s: the tick at 0.4 s after the one before its arrival
    assert p.flush() == 2
    assert not p.due()  # the clock starts again with the next reading
    p.accept(reading())
    assert not p.due()


def test_enough_values_are_due_at_once(spool: Spool) -> None:
    p = pipeline(spool, append_s=60.0)
    for _ in range(APPEND_VALUES // 50 - 1):
        p.accept(reading())
    assert not p.due()
    p.accept(reading())
    assert p.due()
    p.flush()
    assert not p.due()  # the count starts again


def test_emitted_lines_count_as_waiting(spool: Spool) -> None:
    p = pipeline(spool, flush_s=0.1, append_s=0.1)
    p.emit([b"agent,sink=x points=1i 1"])
    time.sleep(0.06)
    assert p.due()
    assert p.flush() == 1


def test_the_batch_age_counts_from_the_oldest_arrival(spool: Spool) -> None:
    p = pipeline(spool)
    before = time.time_ns()
    p.accept(reading())
    after = time.time_ns()
    time.sleep(0.05)
    p.accept(reading())
    p.flush()
    batch = spool.peek()
    assert batch is not None and batch.n_points == 2
    assert before <= batch.oldest_ns <= after  # not the append's time, 50 ms later


def test_the_flusher_appends_on_the_tick_after_append_s(spool: Spool) -> None:
    async def main() -> list[float]:
        p = pipeline(spool, flush_s=0.05, append_s=0.3)
        p.start()
        t0 = time.monotonic()
        p.accept(reading())
        seen: list[float] = []
        while time.monotonic() - t0 < 1.0:
            await asyncio.sleep(0.01)
            if spool.stats.points and not seen:
                seen.append(time.monotonic() - t0)
        p.accept(reading("late"))  # arrives after the append: spooled by stop()
        await p.stop()
        return seen

    seen = asyncio.run(main())
    assert len(seen) == 1
    assert 0.2 <= seen[0] <= 0.8  # not on the next 50 ms tick; at about 0.3 s
    assert spool.stats.points == 2


def test_a_history_that_fails_does_not_stop_the_spooling(spool: Spool, tmp_path: Path) -> None:
    history = History(tmp_path / "history.db", commit_every_s=0.0)
    p = Pipeline([], [spool], Encoder("machine"), history=history)  # type: ignore[arg-type]
    # an integer beyond 64 bits: the encoder skips that field, the history's JSON cannot take it
    p.accept(Reading("m1", time.time_ns(), {"speed": 1.0, "count": 2**70}))
    with structlog.testing.capture_logs() as logs:
        assert p.flush() == 1
        p.accept(Reading("m1", time.time_ns(), {"speed": 2.0, "count": 2**70}))
        assert p.flush() == 1
    assert [e["event"] for e in logs].count("history_add_failed") == 1  # once, not every flush
    assert spool.stats.points == 2
    p.accept(reading())
    assert p.flush() == 1
    assert len(history.query("m1", 0, time.time_ns())) == 1  # the history works again
    history.close()
