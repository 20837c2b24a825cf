"""Assemble and run the agent: devices, pipeline, spools, forwarders, self-monitoring, HTTP.

SIGTERM (and Ctrl-C) stops within 5 s: devices are closed, everything collected is appended to
the spools, and the forwarders get what is left of the 5 s to deliver; the rest stays spooled
for the next start. SIGHUP reloads the configuration file: devices and forwarders are rebuilt,
the spools (one file per sink name) are kept, so no spooled data is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog

from agent.analysis import ANOMALY_MEASUREMENT, Analytics
from agent.annotations import ANNOTATION_MEASUREMENT, forward_annotations
from agent.config import AgentConfig, load_config
from agent.devices import build_connector
from agent.forwarder import Forwarder
from agent.history import History
from agent.journal import Journal
from agent.lineprotocol import Encoder
from agent.monitor import Snapshot
from agent.pipeline import AnalyticsHook, Pipeline, passthrough
from agent.sinks.base import Sink, SinkError
from agent.sinks.influxdb import build_sink
from agent.spool import Spool
from agent.web import WebServer
from connectors.base import Connector
from connectors.types import Reading, SignalInfo
from connectors.validation import ConfigErrors

log = structlog.get_logger(__name__)

STOP_BUDGET_S = 5.0
ANNOTATION_INTERVAL_S = 2.0  # how often acknowledgements are taken from the journal's outbox
LOCAL = "local"  # the spool name when no sink is configured: data stays on disk, counted


class Agent:
    """One running agent; :meth:`run` until stopped."""

    def __init__(
        self,
        config: AgentConfig,
        *,
        config_path: Path | None = None,
        hook: AnalyticsHook = passthrough,
        history: Any = None,
    ) -> None:
        self.config = config
        self.config_path = config_path
        self.hook = hook
        self.history = history
        self.started = time.monotonic()
        self.connectors: list[Connector] = []
        self.sinks: list[Sink] = []
        self.spools: dict[str, Spool] = {}
        self.forwarders: list[Forwarder] = []
        self.pipeline: Pipeline | None = None
        self.web: WebServer | None = None
        self.journal: Journal | None = None
        self.analytics: Analytics | None = None
        self._stop = asyncio.Event()
        self._reload = asyncio.Event()
        self._fwd_tasks: list[asyncio.Task[None]] = []
        self._fwd_stop = asyncio.Event()

    # -- assembly ------------------------------------------------------------------------------
    def _spool(self, name: str) -> Spool:
        spool = self.spools.get(name)
        if spool is None:
            c = self.config.spool
            path = self.config.data_path("spool", f"{name}.db")
            path.parent.mkdir(parents=True, exist_ok=True)
            spool = Spool(path, max_bytes=c.max_bytes, fsync=c.fsync,
                          fsync_interval_s=c.fsync_interval_s)  # fmt: skip
            self.spools[name] = spool
        return spool

    def _build(self, sinks: list[Sink]) -> None:
        """Connectors, forwarders and the pipeline of ``self.config``, with its ``sinks``
        (built first, by :func:`build_sink`: it raises for a secret file it cannot read)."""
        cfg = self.config
        data_dir = cfg.agent.data_dir
        self.connectors = [build_connector(d, data_dir) for d in cfg.devices if d.enabled]
        self.sinks = sinks
        spools = [self._spool(s.name) for s in self.sinks]
        self.forwarders = [
            Forwarder(self._spool(s.name), s, batch_points=cfg.spool.batch_points,
                      batch_interval_s=cfg.spool.batch_interval_s,
                      newest_first=cfg.spool.newest_first,
                      dead_letter=cfg.data_path("dead-letter", f"{s.name}.jsonl"))
            for s in self.sinks
        ]  # fmt: skip
        self.pipeline = Pipeline(
            self.connectors, spools, Encoder(cfg.agent.measurement),
            tags=cfg.agent.tags, hook=self._hook(), history=self.history,
            append_s=cfg.spool.append_interval_s,
        )  # fmt: skip
        self._monitor_encoder = Encoder(cfg.monitor.measurement, machine_tag=None)
        self._annotation_encoder = Encoder(ANNOTATION_MEASUREMENT)
        self._episode_encoder = Encoder(ANOMALY_MEASUREMENT)

    def _signals(self, machine: str) -> dict[str, SignalInfo] | None:
        for conn in self.connectors:
            table = getattr(conn, "signals", None)
            if isinstance(table, dict) and machine in table:
                return dict(table[machine])
        return None

    def _emit(self, lines: list[bytes]) -> None:
        if self.pipeline is not None:
            self.pipeline.emit(lines)

    def _hook(self) -> AnalyticsHook:
        """The analytics (when enabled), then the hook given to the agent (e.g. the demo's)."""
        cfg = self.config
        if not cfg.analytics.enabled:
            if self.analytics is not None:
                self.analytics.close()
            self.analytics = None
            return self.hook
        if self.analytics is None or self.analytics.cfg != cfg.analytics:
            if self.analytics is not None:
                self.analytics.close()
            if self.journal is None:
                self.journal = Journal(cfg.data_path("journal.db"))
            self.analytics = Analytics(cfg.analytics, models_dir=cfg.data_path("models"),
                                       journal=self.journal, emit=self._emit,
                                       signals=self._signals)  # fmt: skip
        else:
            self.analytics.reload_models()
        analytics, extra = self.analytics, self.hook
        if extra is passthrough:
            return analytics

        def both(reading: Reading) -> tuple[Reading, ...]:
            analytics(reading)
            return tuple(extra(reading))

        return both

    def _start_forwarders(self) -> None:
        self._fwd_stop = asyncio.Event()
        self._fwd_tasks = [asyncio.create_task(f.run(self._fwd_stop)) for f in self.forwarders]

    async def _stop_forwarders(self, budget_s: float) -> None:
        """Give the forwarders ``budget_s`` to deliver what is spooled, then stop them."""
        deadline = time.monotonic() + budget_s
        self._fwd_stop.set()
        await asyncio.gather(
            *(f.drain(max(0.0, deadline - time.monotonic())) for f in self.forwarders),
            return_exceptions=True,
        )
        for t in self._fwd_tasks:
            t.cancel()
        await asyncio.gather(*self._fwd_tasks, return_exceptions=True)
        await asyncio.gather(*(s.close() for s in self.sinks), return_exceptions=True)

    # -- self-monitoring -----------------------------------------------------------------------
    def snapshot(self) -> Snapshot:
        p = self.pipeline
        devices = [c.health.snapshot() for c in self.connectors]
        sinks = []
        for f in self.forwarders:
            st = f.snapshot()
            sinks.append({"sink": f.sink.name, **st})
        return Snapshot(
            agent=self.config.agent.name, time_ns=time.time_ns(),
            uptime_s=time.monotonic() - self.started,
            readings_in=p.stats.readings_in if p else 0,
            points_spooled=p.stats.points_spooled if p else 0,
            devices=devices, sinks=sinks,
        )  # fmt: skip

    async def _monitor(self) -> None:
        interval = self.config.monitor.interval_s
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), interval)
            if self.pipeline is not None and not self._stop.is_set():
                snap = self.snapshot()
                lines = [self._monitor_encoder.encode(r) for r in snap.readings()]
                self.pipeline.emit(line for line in lines if line is not None)

    def _forward_annotations(self) -> int:
        """Acknowledgements from the journal's outbox into the spools (when there is a sink)."""
        if self.pipeline is None or not self.sinks:
            return 0  # no InfluxDB: they wait in the outbox for one to be configured
        if self.journal is None:
            path = self.config.data_path("journal.db")
            if not path.exists():
                return 0
            self.journal = Journal(path)  # analytics off, but acks are given to older episodes

        def spool(lines: list[bytes]) -> None:
            assert self.pipeline is not None
            self.pipeline.emit(lines)
            self.pipeline.flush()

        try:
            n = forward_annotations(
                self.journal, spool, self._annotation_encoder, self._episode_encoder
            )
        except Exception as exc:  # a busy or damaged journal must not stop the agent
            log.error("annotations_failed", error=str(exc))
            return 0
        if n:
            log.info("annotations_spooled", count=n)
        return n

    async def _annotations(self) -> None:
        while not self._stop.is_set():
            self._forward_annotations()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), ANNOTATION_INTERVAL_S)

    # -- lifecycle -----------------------------------------------------------------------------
    def request_stop(self) -> None:
        self._stop.set()

    def request_reload(self) -> None:
        self._reload.set()

    def install_signals(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self.request_stop)
        loop.add_signal_handler(signal.SIGINT, self.request_stop)
        loop.add_signal_handler(signal.SIGHUP, self.request_reload)

    async def run(self, on_started: Callable[[Agent], None] | None = None) -> None:
        sinks: list[Sink] = [build_sink(s) for s in self.config.sinks]  # SinkError: a secret file
        h = self.config.history
        if self.history is None and h.enabled:
            self.history = History(self.config.data_path("history.db"), max_bytes=h.max_bytes,
                                   retention_h=h.retention_h)  # fmt: skip
        self._build(sinks)
        assert self.pipeline is not None
        if self.config.http.enabled:
            self.web = WebServer(self.config, self.snapshot)
            await self.web.start()
        self.pipeline.start()
        self._start_forwarders()
        monitor = asyncio.create_task(self._monitor())
        annotations = asyncio.create_task(self._annotations())
        log.info("agent_started", devices=len(self.connectors), sinks=len(self.sinks),
                 data_dir=str(self.config.agent.data_dir))  # fmt: skip
        if on_started is not None:
            on_started(self)
        try:
            while not self._stop.is_set():
                waiters = [asyncio.create_task(self._stop.wait()),
                           asyncio.create_task(self._reload.wait())]  # fmt: skip
                await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
                for w in waiters:
                    w.cancel()
                if self._reload.is_set() and not self._stop.is_set():
                    self._reload.clear()
                    await self._reload_config()
        finally:
            t0 = time.monotonic()
            self._stop.set()
            await self.pipeline.stop(timeout_s=1.5)
            if self.analytics is not None:
                self.analytics.close()
                self.pipeline.flush()
            annotations.cancel()
            await asyncio.gather(annotations, return_exceptions=True)
            self._forward_annotations()  # an ack given just before the stop
            await self._stop_forwarders(STOP_BUDGET_S - 0.5 - (time.monotonic() - t0))
            monitor.cancel()
            await asyncio.gather(monitor, return_exceptions=True)
            if self.web is not None:
                await self.web.stop()
            for spool in self.spools.values():
                spool.close()
            if self.history is not None:
                self.history.close()
            if self.journal is not None:
                self.journal.close()
            log.info("agent_stopped", seconds=round(time.monotonic() - t0, 2),
                     spooled={n: s.stats.points for n, s in self.spools.items()})  # fmt: skip

    async def _reload_config(self) -> None:
        if self.config_path is None:
            return
        try:
            new = load_config(self.config_path, data_dir=self.config.agent.data_dir)
            sinks: list[Sink] = [build_sink(s) for s in new.sinks]
        except ConfigErrors as exc:
            log.error("config_reload_failed", errors=exc.render())  # keep running as we are
            return
        except SinkError as exc:  # a secret file it cannot read: keep running as we are
            log.error("config_reload_failed", errors=str(exc))
            return
        assert self.pipeline is not None
        await self.pipeline.stop(timeout_s=1.5)
        await self._stop_forwarders(1.0)
        stats = self.pipeline.stats
        self.config = new
        self._build(sinks)
        self.pipeline.stats = stats  # counters continue across a reload (Prometheus counters)
        self.pipeline.start()
        self._start_forwarders()
        log.info("config_reloaded", devices=len(self.connectors), sinks=len(self.sinks))
