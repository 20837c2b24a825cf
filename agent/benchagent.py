"""The agent process of ``factory-agent bench``: the real agent, plus what the bench reads of it.

    python -m agent.benchagent CONFIG.yaml [--null-sink]

Runs :class:`agent.runtime.Agent` on ``CONFIG.yaml`` as ``factory-agent run`` does (devices,
analytics, spool, forwarders, self-monitoring, HTTP), in a process of its own so that its CPU
time and peak RSS are the agent's alone, with three additions that cost next to nothing:

- each sink write is timed: after the sink's 2xx, the acquisition times of up to
  :data:`SAMPLES` machine lines spread over the batch are read back from the line protocol, and
  their age goes into a histogram (log-spaced buckets, 4.7 % wide), each standing for its share
  of the batch's machine lines;
- the values the devices hand to the pipeline are counted (one hook call per reading, after the
  analytics);
- with ``--null-sink`` (the bench's ``--sink none``) a sink that takes every batch at once
  replaces the server, so the spool and the forwarder still do their work; it counts the values
  it is given, which stand for the values in the sink.

Commands on stdin, one per line, each answered by one JSON line on stdout: ``snap`` (counters
now), ``quiesce`` (stop reading the devices and deliver what is spooled), ``stop`` (stop, then a
last snap, then exit). End of input stops too.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import resource
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import IO, Any

from agent.config import AgentConfig, load_config
from agent.deflate import gunzip
from agent.forwarder import Forwarder
from agent.runtime import Agent
from agent.sinks.base import Sink
from connectors import logs
from connectors.types import Reading

#: Lines sampled per delivered batch for the latency histogram.
SAMPLES = 16
#: Histogram buckets: 50 per decade from 0.1 ms to 1000 s (bucket i ends at 10**(i/50 - 4) s).
PER_DECADE = 50
LOW_EXP = -4
BUCKETS = PER_DECADE * 7


def bucket_of(seconds: float) -> int:
    """The histogram bucket of a latency (clamped to the first and last bucket).

    >>> bucket_of(0.5), bucket_of(1.0), bucket_of(-1.0), bucket_of(1e9)
    (185, 200, 0, 349)
    """
    if seconds <= 10.0**LOW_EXP:
        return 0
    i = math.ceil((math.log10(seconds) - LOW_EXP) * PER_DECADE)
    return min(max(i, 0), BUCKETS - 1)


def bucket_upper_s(i: int) -> float:
    """The upper edge of bucket ``i`` in seconds (what a percentile read from it reports)."""
    return float(10.0 ** (i / PER_DECADE + LOW_EXP))


class Probe:
    """What the timed sinks saw: machine lines and values delivered, and their ages."""

    def __init__(self, measurement: str, *, count_values: bool) -> None:
        self.prefix = measurement.replace(",", "\\,").replace(" ", "\\ ").encode() + b","
        self.count_values = count_values
        self.lines = 0
        self.values = 0
        self.first_ns: int | None = None
        self.hist: dict[int, float] = {}

    def delivered(self, payload: bytes) -> None:
        """Record a batch the sink accepted (called right after its 2xx)."""
        now = time.time_ns()
        prefix = self.prefix
        n = payload.count(b"\n" + prefix) + payload.startswith(prefix)
        if not n:
            return
        if self.first_ns is None:
            self.first_ns = now
        self.lines += n
        if self.count_values:
            self.values += _count_values(payload, prefix)
        ages = _sample_ages(payload, prefix, now)
        if ages:
            weight = n / len(ages)
            hist = self.hist
            for age in ages:
                b = bucket_of(age)
                hist[b] = hist.get(b, 0.0) + weight


def _sample_ages(payload: bytes, prefix: bytes, now_ns: int) -> list[float]:
    """Ages in seconds of up to SAMPLES machine lines spread evenly over ``payload``."""
    out: list[float] = []
    size = len(payload)
    last_start = -1
    for k in range(SAMPLES):
        start = 0
        if k:
            newline = payload.find(b"\n", size * k // SAMPLES)
            if newline < 0:
                break
            start = newline + 1
        if start <= last_start:
            continue
        last_start = start
        end = payload.find(b"\n", start)
        if end < 0:
            end = size
        if not payload.startswith(prefix, start):
            continue
        space = payload.rfind(b" ", start, end)
        try:
            out.append((now_ns - int(payload[space + 1 : end])) / 1e9)
        except ValueError:
            continue
    return out


def _count_values(payload: bytes, prefix: bytes) -> int:
    """Fields of the machine lines in ``payload`` (names and tags of the bench need no escapes)."""
    total = 0
    for line in payload.split(b"\n"):
        if line.startswith(prefix):
            first, last = line.find(b" "), line.rfind(b" ")
            total += line.count(b",", first, last) + 1
    return total


class TimedSink:
    """Wraps a sink: every accepted write is shown to the :class:`Probe`."""

    def __init__(self, inner: Sink, probe: Probe) -> None:
        self.inner = inner
        self.name = inner.name
        self.probe = probe

    @property
    def gzip_spool(self) -> bool:
        return bool(getattr(self.inner, "gzip_spool", False))

    async def write(self, lines: bytes) -> None:
        await self.inner.write(lines)
        self.probe.delivered(lines)

    async def write_gzip(self, body: bytes) -> None:
        await self.inner.write_gzip(body)  # type: ignore[attr-defined]
        self.probe.delivered(gunzip(body))  # ~1 ms for 5,000 8-float points: the probe's cost

    async def close(self) -> None:
        await self.inner.close()


class NullSink:
    """Accepts every batch at once: the agent's own cost, without HTTP or a server."""

    name = "null"
    gzip_spool = True  # as the InfluxDB sinks at the default gzip level

    async def write(self, lines: bytes) -> None:
        return None

    async def write_gzip(self, body: bytes) -> None:
        return None

    async def close(self) -> None:
        return None


class ValueCounter:
    """The pipeline hook after the analytics: counts the values the devices delivered."""

    def __init__(self) -> None:
        self.values = 0

    def __call__(self, reading: Reading) -> Iterable[Reading]:
        self.values += len(reading.fields)
        return (reading,)


class BenchAgent(Agent):
    """The agent with timed sinks (and the null sink for ``--sink none``)."""

    def __init__(self, config: AgentConfig, *, null_sink: bool) -> None:
        self.counter = ValueCounter()
        super().__init__(config, hook=self.counter)
        self.null_sink = null_sink
        self.probe = Probe(config.agent.measurement, count_values=null_sink)

    def _build(self, sinks: list[Sink]) -> None:
        super()._build(sinks)
        cfg = self.config
        if self.null_sink:
            sink = NullSink()
            spool = self._spool(sink.name)
            self.sinks = [sink]
            self.forwarders = [
                Forwarder(spool, sink, batch_points=cfg.spool.batch_points,
                          batch_interval_s=cfg.spool.batch_interval_s,
                          newest_first=cfg.spool.newest_first)
            ]  # fmt: skip
            assert self.pipeline is not None
            self.pipeline.spools = [spool]
        for f in self.forwarders:
            f.sink = TimedSink(f.sink, self.probe)

    def bench_snapshot(self) -> dict[str, Any]:
        """Counters for the bench: cumulative since start, so the bench takes differences."""
        t = os.times()
        p, probe = self.pipeline, self.probe
        conns = self.connectors
        fwd = [f.snapshot() for f in self.forwarders]
        analyzers = list(self.analytics.analyzers.values()) if self.analytics else []
        stats = [s for c in conns if (s := getattr(c, "stats", None)) is not None]
        data_changes = [s.data_changes for s in stats]
        return {
            "time_ns": time.time_ns(),
            "cpu_s": t.user + t.system,
            "rss_peak_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
            "values_in": self.counter.values,
            "data_changes": sum(data_changes) if data_changes else None,
            "readings_in": p.stats.readings_in if p else 0,
            "points_spooled": p.stats.points_spooled if p else 0,
            "devices": len(conns),
            "connected": sum(1 for c in conns if c.health.connected),
            "missed_polls": sum(c.health.missed_polls for c in conns),
            "failed_polls": sum(c.health.failed_polls for c in conns),
            "connector_dropped": sum(s.dropped for s in stats),
            "written_points": sum(s["written_points"] for s in fwd),
            "failed_writes": sum(s["failed_writes"] for s in fwd),
            "rejected_points": sum(s["rejected_points"] for s in fwd),
            "dropped_points": sum(s["dropped_points"] for s in fwd),
            "spool_points": sum(s["spool_points"] for s in fwd),
            "machine_lines_delivered": probe.lines,
            "values_delivered": probe.values if self.null_sink else None,
            "first_delivery_ns": probe.first_ns,
            "latency_hist": {str(k): v for k, v in probe.hist.items()},
            "analyzers": len(analyzers),
            "learning": sum(1 for a in analyzers if a.warming_up),
            "episodes": sum(a.alarm.stats.opened for a in analyzers),
        }

    async def quiesce(self, timeout_s: float = 120.0) -> bool:
        """Take in what the devices still hold, stop reading them, deliver it all.

        The bench stops the simulator first; readings a connector has queued (OPC UA) still
        reach the pipeline until the count holds still for half a second. True when the
        spools were emptied.
        """
        assert self.pipeline is not None
        deadline = time.monotonic() + 30.0
        last = -1
        while self.counter.values != last and time.monotonic() < deadline:
            last = self.counter.values
            await asyncio.sleep(0.5)
        await self.pipeline.stop(timeout_s=5.0)
        done = await asyncio.gather(*(f.drain(timeout_s) for f in self.forwarders))
        return all(done)


async def run(cfg: AgentConfig, null_sink: bool, out: IO[str]) -> None:
    agent = BenchAgent(cfg, null_sink=null_sink)
    agent.install_signals()
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)

    def say(doc: dict[str, Any]) -> None:
        out.write(json.dumps(doc) + "\n")
        out.flush()

    async def commands() -> None:
        while line := (await reader.readline()).strip():
            if line == b"snap":
                say(agent.bench_snapshot())
            elif line == b"quiesce":
                drained = await agent.quiesce()
                say({**agent.bench_snapshot(), "drained": drained})
            elif line == b"stop":
                break
        agent.request_stop()

    task = asyncio.create_task(agent.run())
    listener = asyncio.create_task(commands())
    await task
    listener.cancel()
    await asyncio.gather(listener, return_exceptions=True)
    say({**agent.bench_snapshot(), "final": True})


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m agent.benchagent", description=__doc__)
    p.add_argument("config", type=Path)
    p.add_argument("--null-sink", action="store_true", help="a sink that accepts everything")
    args = p.parse_args(argv)
    cfg = load_config(args.config)
    logs.configure(level=cfg.agent.log_level)  # stderr: stdout carries the JSON lines
    asyncio.run(run(cfg, args.null_sink, sys.stdout))
    return 0


if __name__ == "__main__":
    sys.exit(main())
