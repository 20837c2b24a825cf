"""The forwarder: one per sink, it delivers the sink's spool (Telegraf's RunningOutput).

A batch is taken from the spool when it holds ``batch_points`` (5,000) or when its oldest row
is ``batch_interval_s`` (1 s) old, written, and deleted from the spool only after the sink
accepted it. A sink that takes gzip at level 1 (``gzip_spool``) gets the spool's compressed rows
joined into one gzip body (:meth:`Sink.write_gzip <agent.sinks.base.Sink.write_gzip>`: nothing
compressed twice); any other gets the lines (:meth:`Sink.write <agent.sinks.base.Sink.write>`),
as does every retry of a refused batch below. Delivery is
at least once: a batch interrupted mid-way is sent again, which InfluxDB absorbs (a point with
the same series and timestamp overwrites itself).

=====================  ==========================================================================
outcome                what the forwarder does
=====================  ==========================================================================
2xx                    ack: the rows leave the spool
429, 5xx, timeout,     keep the batch; retry after a capped exponential backoff with jitter
connection error       (``backoff_min_s`` .. ``backoff_max_s``: 0.5 .. 5 s, so a sink that comes
                       back after a long outage is retried within 5 s), at least the server's
                       Retry-After
413                    split the batch in halves by lines and send each, down to one line; later
                       batches are capped at the size that went through
400, 422               the server refuses the lines: they go to the dead-letter file (JSON lines:
                       time, sink, status, reason, lines) beside the spool, and are acked. A
                       gzip body is first sent again as lines without any row that fails its
                       CRC-32 (such rows are counted in ``recovered_loss`` and logged)
401, 403, other        configuration (token, grants, bucket): keep the data, log an error once
non-retryable          per episode (``sink_unauthorized`` / ``sink_misconfigured``) and retry
                       slowly (``config_backoff_s`` .. ``config_backoff_max_s``)
=====================  ==========================================================================

A failing sink is logged when it starts failing and when it recovers, not on every retry.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import statistics
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog

from agent.sinks.base import Sink, SinkError
from agent.spool import Batch, Spool

log = structlog.get_logger(__name__)

REJECTED = frozenset({400, 422})
UNAUTHORIZED = frozenset({401, 403})


@dataclass(slots=True)
class ForwarderStats:
    """Counters since start; ``failing`` and ``last_error`` describe the current episode."""

    written_points: int = 0
    written_batches: int = 0
    failed_writes: int = 0
    retried: int = 0
    rejected_points: int = 0
    split_batches: int = 0
    last_latency_s: float | None = None
    failing: bool = False
    last_error: str | None = None


class Forwarder:
    """Delivers one spool to one sink; see the module docstring for the rules."""

    def __init__(
        self,
        spool: Spool,
        sink: Sink,
        *,
        batch_points: int = 5000,
        batch_interval_s: float = 1.0,
        batch_bytes: int = 16 << 20,
        newest_first: bool = False,
        dead_letter: Path | None = None,
        dead_letter_max_bytes: int = 64 << 20,
        backoff_min_s: float = 0.5,
        backoff_max_s: float = 5.0,
        config_backoff_s: float = 5.0,
        config_backoff_max_s: float = 60.0,
        retry_after_max_s: float = 600.0,
        log_interval_s: float = 60.0,
        rng: random.Random | None = None,
    ) -> None:
        self.sink = sink
        self.spool = spool
        self.batch_points = batch_points
        self.batch_interval_s = batch_interval_s
        self.batch_bytes = batch_bytes
        self.newest_first = newest_first
        self.dead_letter = dead_letter or spool.path.with_name(
            f"{spool.path.stem}.deadletter.jsonl"
        )
        self.dead_letter_max_bytes = dead_letter_max_bytes
        self.backoff_min_s = backoff_min_s
        self.backoff_max_s = backoff_max_s
        self.config_backoff_s = config_backoff_s
        self.config_backoff_max_s = config_backoff_max_s
        self.retry_after_max_s = retry_after_max_s
        self.log_interval_s = log_interval_s
        self.stats = ForwarderStats()
        self._rng = rng or random.Random()
        self._latencies: deque[float] = deque(maxlen=64)
        self._limit_points = batch_points
        self._attempts = 0  # consecutive failed attempts
        self._episode: dict[str, Any] | None = None
        self._rejections_logged = (0.0, 0)  # (monotonic time, rejections since)
        self._step_failing = False  # a step raised (not a sink's error: those are handled)
        self._log = log.bind(sink=sink.name)
        self._busy = asyncio.Lock()  # one delivery at a time, when drain() overlaps run()

    # -- loop ---------------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        """Deliver until ``stop`` is set (a write in flight finishes first); then return."""
        loop = asyncio.get_running_loop()
        idle_s = min(self.batch_interval_s, self.spool.fsync_interval_s)
        not_before = 0.0
        while not stop.is_set():
            if (wait := not_before - loop.time()) > 0:  # backing off, or letting a batch fill
                self.spool.sync_if_due()  # the fsync interval holds meanwhile
                await _sleep(stop, min(wait, idle_s))
                continue
            try:
                async with self._busy:
                    delay = await self._step(wait_for_age=True)
            except Exception:  # the spool's disk, or a bug: delivery must not end for good
                if not self._step_failing:
                    self._log.exception("forwarder_step_failed", retry_s=self.backoff_max_s,
                                        note="logged once until a step works")  # fmt: skip
                self._step_failing = True
                self.stats.failing = True
                await _sleep(stop, self.backoff_max_s)
                continue
            else:
                if self._step_failing:
                    self._log.info("forwarder_step_recovered")
                self._step_failing = False
            if delay is None:
                await _sleep(stop, idle_s)
            elif delay:
                not_before = loop.time() + delay
            else:
                await asyncio.sleep(0)  # a backlog must not starve the loop

    async def drain(self, timeout_s: float) -> bool:
        """Send what the spool holds within ``timeout_s``; the rest stays. True if emptied.

        Safe to call while :meth:`run` is finishing a write: deliveries take turns.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while (remaining := deadline - loop.time()) > 0:
            try:
                delay = await asyncio.wait_for(self._locked_step(), remaining)
            except TimeoutError:
                break
            if delay is None:
                return True
            if loop.time() + delay >= deadline:
                break
            await asyncio.sleep(delay)
        self._log.warning(
            "drain_timed_out",
            timeout_s=timeout_s,
            left_points=self.spool.stats.points,
            last_error=self.stats.last_error,
        )
        return False

    def snapshot(self) -> dict[str, Any]:
        """Counters and gauges for self-monitoring (``agent.monitor``)."""
        s, spool = self.stats, self.spool.stats
        return {
            "sink": self.sink.name,
            "written_points": s.written_points,
            "written_batches": s.written_batches,
            "failed_writes": s.failed_writes,
            "retried": s.retried,
            "rejected_points": s.rejected_points,
            "split_batches": s.split_batches,
            "dropped_points": spool.dropped_points,
            "recovered_loss": spool.recovered_loss,
            "spool_points": spool.points,
            "spool_bytes": spool.bytes,
            "write_latency_seconds": s.last_latency_s,
            "write_latency_median_seconds": (
                statistics.median(self._latencies) if self._latencies else None
            ),
            "failing": s.failing,
            "last_error": s.last_error,
        }

    # -- one batch ----------------------------------------------------------------------------
    def _peek(self) -> Batch | None:
        return self.spool.peek(self._limit_points, self.batch_bytes, newest_first=self.newest_first)

    async def _locked_step(self) -> float | None:
        async with self._busy:
            return await self._step(wait_for_age=False)

    async def _step(self, *, wait_for_age: bool) -> float | None:
        """Deliver the next batch if due; return the wait before the next step, None if empty.

        Called with ``_busy`` held, so that a batch is peeked and acked in one turn.
        """
        self.spool.sync_if_due()
        batch = self._peek()
        if batch is None:
            return None
        if wait_for_age and batch.n_points < self._limit_points:
            age_s = (time.time_ns() - batch.oldest_ns) / 1e9
            if age_s < self.batch_interval_s:
                return self.batch_interval_s - age_s
        return await self._deliver(batch)

    async def _deliver(self, batch: Batch) -> float:
        """Write one batch; ack it when done. Return the delay before the next attempt."""
        if self._attempts:
            self.stats.retried += 1
        try:
            await self._send_batch(batch)
        except SinkError as exc:
            return self._failed(exc)
        except Exception as exc:  # a bug in a sink must not stop the delivery for good
            if self._episode is None or "crash" not in self._episode["kinds"]:
                self._log.exception("sink_write_crashed", backlog_points=self.spool.stats.points)
            delay = self._failed(SinkError(f"{type(exc).__name__}: {exc}", retryable=True))
            assert self._episode is not None
            self._episode["kinds"].add("crash")
            return delay
        self.spool.ack(batch)
        if self._episode is not None:
            self._log.info(
                "sink_recovered",
                failed_writes=self._episode["failed_writes"],
                duration_s=round(time.monotonic() - self._episode["since"], 1),
            )
        self._episode = None
        self._attempts = 0
        self.stats.failing = False
        return 0.0

    async def _send_batch(self, batch: Batch) -> None:
        """Write a batch: as one gzip body when the sink takes it, else (or if refused) as lines."""
        sink = self.sink
        write_gzip: Callable[[bytes], Awaitable[None]] | None = (
            getattr(sink, "write_gzip", None) if getattr(sink, "gzip_spool", False) else None
        )
        if write_gzip is not None:
            start = time.perf_counter()
            try:
                await write_gzip(batch.gzip_body())
            except SinkError as exc:
                self.stats.failed_writes += 1
                if exc.status != 413 and exc.status not in REJECTED:
                    raise
            else:
                self._written(start, batch.n_points)
                return
        payload, n_points, damaged = batch.text()
        if damaged:
            self.spool.stats.recovered_loss += batch.n_points - n_points
            self._log.error(
                "spool_rows_damaged", rows=list(damaged), lost_points=batch.n_points - n_points,
                reason="a stored row does not match its CRC-32",
            )  # fmt: skip
        if n_points:
            await self._send(payload, n_points)

    def _written(self, start: float, n_points: int) -> None:
        latency = time.perf_counter() - start
        self.stats.last_latency_s = latency
        self._latencies.append(latency)
        self.stats.written_points += n_points
        self.stats.written_batches += 1

    async def _send(self, payload: bytes, n_points: int) -> None:
        """Write ``payload``: split on 413, dead-letter on 400/422, raise on anything else."""
        start = time.perf_counter()
        try:
            await self.sink.write(payload)
        except SinkError as exc:
            self.stats.failed_writes += 1
            if exc.status == 413:
                lines = [line for line in payload.split(b"\n") if line]
                if len(lines) > 1:
                    await self._split(lines)
                    return
            if exc.status == 413 or exc.status in REJECTED:
                self._reject(payload, n_points, exc)
                return
            raise
        self._written(start, n_points)

    async def _split(self, lines: list[bytes]) -> None:
        self.stats.split_batches += 1
        half = len(lines) // 2
        if half < self._limit_points:
            self._limit_points = half
            self._log.info("batch_size_reduced", batch_points=half, reason="413 from the server")
        await self._send(b"\n".join(lines[:half]), half)
        await self._send(b"\n".join(lines[half:]), len(lines) - half)

    def _reject(self, payload: bytes, n_points: int, exc: SinkError) -> None:
        """Put refused lines in the dead-letter file; they are acked with their batch."""
        record = {
            "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "sink": self.sink.name,
            "status": exc.status,
            "reason": exc.reason,
            "points": n_points,
            "lines": payload.decode("utf-8", "replace").split("\n"),
        }
        path = self.dead_letter
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            if path.exists() and path.stat().st_size > self.dead_letter_max_bytes:
                os.replace(path, path.with_name(path.name + ".1"))  # one old generation kept
            with path.open("a", encoding="utf-8") as f:
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
                f.flush()
                os.fsync(f.fileno())
        except OSError as err:  # keep the batch: it is tried again after a backoff
            raise SinkError(f"cannot write dead-letter file {path}: {err}", retryable=True) from err
        self.stats.rejected_points += n_points
        now = time.monotonic()
        last, since = self._rejections_logged
        if now - last >= self.log_interval_s:
            self._log.error(
                "batch_rejected",
                status=exc.status,
                reason=exc.reason,
                points=n_points,
                rejected_since_last_log=since + 1,
                dead_letter=str(path),
            )
            self._rejections_logged = (now, 0)
        else:
            self._rejections_logged = (last, since + 1)

    # -- failures -----------------------------------------------------------------------------
    def _failed(self, exc: SinkError) -> float:
        """Count, log once per episode and kind, and return the backoff delay."""
        self._attempts += 1
        self.stats.failing = True
        self.stats.last_error = f"{exc.status or 'no answer'}: {exc.reason}"
        if exc.retryable:
            kind = "sink_write_failed"
            base, cap = self.backoff_min_s, self.backoff_max_s
        else:
            unauthorized = exc.status in UNAUTHORIZED
            kind = "sink_unauthorized" if unauthorized else "sink_misconfigured"
            base, cap = self.config_backoff_s, self.config_backoff_max_s
        delay = min(cap, base * 2.0 ** min(self._attempts - 1, 30))
        delay = delay / 2 + self._rng.uniform(0, delay / 2)  # "equal jitter": never near zero
        if exc.retry_after_s is not None:
            delay = max(delay, min(exc.retry_after_s, self.retry_after_max_s))
        if self._episode is None:
            self._episode = {"since": time.monotonic(), "failed_writes": 0, "kinds": set()}
        self._episode["failed_writes"] += 1
        if kind not in self._episode["kinds"]:
            self._episode["kinds"].add(kind)
            details = {
                "status": exc.status,
                "reason": exc.reason,
                "retry_in_s": round(delay, 2),
                "backlog_points": self.spool.stats.points,
            }
            if exc.retryable:
                self._log.warning(kind, **details)
            else:
                self._log.error(kind, **details, keeping_data=True)
        return delay


async def _sleep(stop: asyncio.Event, seconds: float) -> None:
    """Sleep, or return at once when ``stop`` is set."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
