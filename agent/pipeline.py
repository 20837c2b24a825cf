"""The pipeline: devices → analytics hook → spool per sink, never blocked by a slow sink.

One task per device under a supervisor: a device that fails is restarted on its own and never
stops the others. Readings are stamped at acquisition (the connector uses the source timestamp
when the device gives one), pass the analytics hook, and wait in memory; on a tick of
``flush_s`` (100 ms) where they are ``append_s`` old (0.5 s) or number :data:`APPEND_VALUES`
values, they are encoded to line protocol, compressed once and appended to every sink's spool:
only then do they count as collected. Each sink's forwarder delivers from its own spool
independently, and counts a batch's age (``batch_interval_s``) from its oldest reading's
arrival, not from the append.

Why wait: an append costs about the same for 100 values as for 5,000 (a compression call and
one SQLite commit: a dozen page writes to the WAL), and a process that sleeps between ticks runs
it with cold caches. A small plant (100 signals at 10 Hz) spent about a quarter of its CPU
appending every 100 ms; a large one fills :data:`APPEND_VALUES` every tick and appends as
before. The price: a crash of the agent (SIGKILL, power) loses up to ``append_s`` of readings
not yet spooled instead of up to ``flush_s``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import structlog

from agent.deflate import deflate
from agent.lineprotocol import Encoder
from connectors.base import Connector, ConnectorError
from connectors.types import Reading

#: Readings in, readings out: the analytics issue fills it; until then a pass-through.
AnalyticsHook = Callable[[Reading], Iterable[Reading]]

log = structlog.get_logger(__name__)

#: Values waiting in memory that make the next tick append, however young they are.
APPEND_VALUES = 5_000


def passthrough(reading: Reading) -> Iterable[Reading]:
    return (reading,)


@dataclass
class PipelineStats:
    readings_in: int = 0
    points_spooled: int = 0
    flushes: int = 0
    device_restarts: int = 0
    last_flush_s: float = 0.0
    by_device: dict[str, int] = field(default_factory=dict)


class Pipeline:
    """Runs the device tasks and the flusher; the forwarders run beside it (see runtime)."""

    def __init__(
        self,
        connectors: list[Connector],
        spools: list[Any],
        encoder: Encoder,
        *,
        tags: dict[str, str] | None = None,
        hook: AnalyticsHook = passthrough,
        history: Any = None,
        flush_s: float = 0.1,
        append_s: float = 0.5,
        restart_s: float = 5.0,
    ) -> None:
        self.connectors = connectors
        self.spools = spools
        self.encoder = encoder
        self.tags = tags or {}
        self.hook = hook
        self.history = history
        self.flush_s = flush_s
        self.append_s = append_s
        self.restart_s = restart_s
        self.stats = PipelineStats()
        self._buffer: list[bytes] = []  # encoded parts of the next flush
        self._emitted: list[bytes] = []  # self-metrics lines among them, one point each
        self._pending: list[Reading] = []
        self._pending_values = 0
        self._oldest_ns: int | None = None  # arrival of the oldest reading or line waiting
        self._history_failing = False
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = asyncio.Event()

    # -- acquisition ---------------------------------------------------------------------------
    def accept(self, reading: Reading) -> None:
        """Take one reading from a device: synchronous, so a device never waits on a sink."""
        if self.tags:
            for k, v in self.tags.items():
                reading.tags.setdefault(k, v)
        self.stats.readings_in += 1
        if self._oldest_ns is None:
            self._oldest_ns = time.time_ns()
        self._pending_values += len(reading.fields)
        self._pending.extend(self.hook(reading))

    async def _supervise(self, conn: Connector) -> None:
        name = conn.health.device
        while not self._stopping.is_set():
            try:
                await conn.connect()
                async for reading in conn.readings():
                    self.accept(reading)
                    self.stats.by_device[name] = self.stats.by_device.get(name, 0) + 1
                    if self._stopping.is_set():
                        break
                if self._stopping.is_set():
                    return
            except ConnectorError as exc:
                # A mistake waiting will not fix is logged once per attempt, loudly.
                log.error("device_failed", device=name, error=str(exc), retry_s=self.restart_s)
            except Exception:  # a bug in one device must not stop the others
                log.exception("device_crashed", device=name, retry_s=self.restart_s)
            self.stats.device_restarts += 1
            await conn.close()
            try:
                await asyncio.wait_for(self._stopping.wait(), self.restart_s)
            except TimeoutError:
                continue

    # -- spooling ------------------------------------------------------------------------------
    def flush(self) -> int:
        """Encode what was collected and append it to every spool; return the points appended."""
        pending, self._pending = self._pending, []
        oldest, self._oldest_ns = self._oldest_ns, None
        self._pending_values = 0
        if self.history is not None and pending:
            try:
                self.history.add(pending)
            except Exception:  # the history is for plots: it must never stop the spooling
                if not self._history_failing:
                    log.exception("history_add_failed", note="logged once until it works")
                self._history_failing = True
            else:
                self._history_failing = False
        parts = self._buffer
        self._buffer = []
        if pending:
            before = self.encoder.points
            encoded = self.encoder.encode_many(pending)
            if encoded:
                parts.append(encoded)
            n = len(self._emitted) + self.encoder.points - before
        else:
            n = len(self._emitted)
        self._emitted = []
        if not parts:
            return 0
        t0 = time.perf_counter()
        chunk = deflate(b"\n".join(parts))  # compressed once for every spool
        for spool in self.spools:
            spool.append(chunk, n, created_ns=oldest)
        self.stats.last_flush_s = time.perf_counter() - t0
        self.stats.points_spooled += n
        self.stats.flushes += 1
        return n

    def emit(self, lines: Iterable[bytes]) -> None:
        """Add lines the agent produces itself (self-metrics) to the next flush."""
        for line in lines:
            if self._oldest_ns is None:
                self._oldest_ns = time.time_ns()
            self._buffer.append(line)
            self._emitted.append(line)

    def due(self) -> bool:
        """Whether this tick appends: enough values wait, or the oldest waits ``append_s``."""
        if self._pending_values >= APPEND_VALUES:
            return True
        oldest = self._oldest_ns
        # half a tick early: a reading that came just after a tick is appended on the tick
        # append_s later, not one tick after that
        return oldest is not None and (time.time_ns() - oldest) / 1e9 >= (
            self.append_s - self.flush_s / 2
        )

    async def _flusher(self) -> None:
        # On the wall clock's multiples of flush_s, where the devices' poll ticks fall too
        # (connectors.base.Ticker): one wake-up of the process serves both. A process that
        # sleeps between wake-ups pays for each one (cold caches: see benchmarks/bench_wakeup.py).
        period_ns = max(1, round(self.flush_s * 1e9))
        while not self._stopping.is_set():
            now = time.time_ns()
            await asyncio.sleep((period_ns - now % period_ns) / 1e9)
            if self.due():
                self.flush()

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._supervise(c)) for c in self.connectors]
        self._tasks.append(asyncio.create_task(self._flusher()))

    async def stop(self, timeout_s: float = 2.0) -> None:
        """Stop reading, close the devices, and spool everything already collected."""
        self._stopping.set()
        await asyncio.gather(*(c.close() for c in self.connectors), return_exceptions=True)
        _, pending = await asyncio.wait(self._tasks, timeout=timeout_s)
        for t in pending:
            t.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        self.flush()
