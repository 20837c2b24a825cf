"""CPU per reading of the northbound path: encode, spool append, and the forwarder's turn.

    .venv/bin/python benchmarks/bench_pipeline.py [--readings 200000] [--runs 5] [--no-http]

Readings of one CNC-like machine: 8 fields and 5 tags. Three value sets: "noisy" (8 full
17-digit doubles, what a float sensor or an OPC UA Double gives), "0.01" (8 values on a 0.01
grid, what a scaled Modbus register gives) and "typed" (6 noisy doubles, an integer counter
and a boolean, what a PLC's unscaled register and coil give); float formatting dominates
encoding and costs far more for noisy values. Each stage is timed in process CPU time and
reported as the median of the runs, in µs per reading:

- encode: ``Encoder.encode`` per reading (``float.__repr__``; and orjson when installed), and
  ``Encoder.encode_many`` of 50 (its batch twin; orjson formats the 50 in one call);
- append: ``Spool.append`` of 50 encoded readings at a time (a 100 ms flush of 500 readings/s),
  per reading, in each fsync mode: compressing them (:mod:`agent.deflate`) and storing the
  row; also the wall time of one append (it runs on the event loop);
- whole path: ``encode_many`` + compress and append (50 at a time) + the forwarder's peek,
  write and ack of 5,000-point batches (``Forwarder.drain``), fsync ``interval``: to a sink
  that does nothing (but takes the gzip body, as the InfluxDB sinks do at gzip level 1), and
  (unless ``--no-http``) through ``InfluxV2Sink`` (influxdb-client, HTTP) into a
  VictoriaMetrics started for the run (tests/servers.py), every point delivered, with 50,
  200 and 5,000 readings an append (a plant of 500, 2,000 or 50,000 readings/s flushing every
  100 ms: the per-append cost, ~30-60 µs of SQLite commit, is shared by more readings at the
  higher rates; the last is the sustained case, the path's own cost per reading). The sink's
  HTTP client is built before the timed window, as an agent builds it once at its first write
  (influxdb-client's async client loads the system's CA certificates even for ``http://``:
  ~30 ms once, not a cost per reading).

Target (issue: spool + encode + write): <= 3 µs CPU per reading of ~8 float fields, sustained
into VictoriaMetrics: the 5,000/append lines, the real write included; the 50 and 200/append
lines show what a smaller plant pays. The server's CPU is not counted (another process).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agent.forwarder import Forwarder  # noqa: E402
from agent.lineprotocol import Encoder  # noqa: E402
from agent.sinks.base import Sink  # noqa: E402
from agent.sinks.influxdb import InfluxV2Config, InfluxV2Sink  # noqa: E402
from agent.spool import FsyncMode, Spool  # noqa: E402
from connectors.types import FieldValue, Reading  # noqa: E402

SIGNALS = [
    "spindle_speed", "spindle_load", "bearing_temperature", "vibration_rms",
    "coolant_temperature", "coolant_flow", "axis_x_position", "power",
]  # fmt: skip
TAGS = {"site": "plant-a", "line": "line-1", "machine": "cnc-01", "device": "plc-1",
        "protocol": "opcua"}  # fmt: skip
FLUSH = 50  # readings per spool append: a 100 ms flush of a 500 readings/s plant
FLUSH_FAST = 200  # ... of 2,000 readings/s (the outage test): fewer, larger appends
FLUSH_SUSTAINED = 5000  # ... of 50,000 readings/s: the per-append cost nearly gone
BATCH = 5000  # points per write
TARGET_US = 3.0
KINDS = ("noisy", "0.01", "typed")


class NullSink:
    """Accepts everything at once: the forwarder's own cost, without HTTP."""

    name = "null"
    gzip_spool = True  # as the InfluxDB sinks at gzip level 1: the spool's rows as they are

    async def write(self, lines: bytes) -> None:
        pass

    async def write_gzip(self, body: bytes) -> None:
        pass

    async def close(self) -> None:
        pass


def make_chunks(
    n: int, *, kind: str = "noisy", seed: int = 1, flush: int = FLUSH
) -> Iterator[list[Reading]]:
    """``n`` readings 100 ms apart, ``flush`` at a time, each with a fresh tag dict.

    Made just before they are timed, as in the agent (a reading is encoded right after it was
    read): encoding a list of 200k readings made beforehand measures cache misses instead.
    """
    rng = random.Random(seed)
    t0 = 1_767_600_000_000_000_000
    for start in range(0, n, flush):
        chunk = []
        for i in range(start, min(n, start + flush)):
            values: dict[str, FieldValue] = {s: rng.uniform(0.0, 1000.0) for s in SIGNALS}
            if kind == "0.01":
                values = {s: round(float(v or 0), 2) for s, v in values.items()}
            elif kind == "typed":
                values = dict(list(values.items())[:6])
                values["parts_count"] = i // 7
                values["door_open"] = rng.random() < 0.1
            chunk.append(Reading("cnc-01", t0 + i * 100_000_000, values, dict(TAGS)))
        yield chunk


def bench_encode(n: int, kind: str, use_orjson: bool, many: bool = False) -> float:
    enc = Encoder(use_orjson=use_orjson)
    encode, cpu = enc.encode, 0.0
    for chunk in make_chunks(n, kind=kind):
        t = time.process_time()
        if many:
            enc.encode_many(chunk)
        else:
            for r in chunk:
                encode(r)
        cpu += time.process_time() - t
    return cpu / n * 1e6


def payloads(n: int, kind: str) -> list[bytes]:
    enc = Encoder()
    return [enc.encode_many(chunk) for chunk in make_chunks(n, kind=kind)]


def bench_append(bodies: list[bytes], fsync: FsyncMode) -> tuple[float, list[float]]:
    """(CPU µs per reading, wall ms of each append)."""
    with tempfile.TemporaryDirectory() as tmp:
        spool = Spool(Path(tmp) / "bench.db", fsync=fsync, max_bytes=4 << 30)
        walls: list[float] = []
        cpu = time.process_time()
        for body in bodies:
            t = time.perf_counter()
            spool.append(body, FLUSH)
            walls.append((time.perf_counter() - t) * 1e3)
        cpu = time.process_time() - cpu
        spool.close()
    return cpu / (len(bodies) * FLUSH) * 1e6, walls


async def measure_pipeline(
    sink: Sink,
    chunks: Iterable[list[Reading]],
    *,
    fsync: FsyncMode = "interval",
    many: bool = True,
) -> dict[str, float]:
    """Encode, spool (a chunk an append) and forward in 5,000-point batches through ``sink``.

    ``many``: encode a chunk with ``encode_many`` (else ``encode`` a reading at a time, as
    ``Pipeline.accept`` does today). Returns CPU µs per reading of the whole path (making the
    readings not counted) and the wall time; every reading is delivered first (``drain``
    after every 5,000 spooled points).
    """
    with tempfile.TemporaryDirectory() as tmp:
        spool = Spool(Path(tmp) / "bench.db", fsync=fsync, max_bytes=4 << 30)
        fwd = Forwarder(spool, sink, batch_points=BATCH)
        enc = Encoder()
        encode = enc.encode
        n, cpu, wall = 0, 0.0, 0.0
        for chunk in chunks:
            t, w = time.process_time(), time.perf_counter()
            if many:
                body = enc.encode_many(chunk)
                spool.append(body, body.count(b"\n") + 1)
            else:
                lines = [line for r in chunk if (line := encode(r)) is not None]
                spool.append(b"\n".join(lines), len(lines))
            if spool.stats.points >= BATCH and not await fwd.drain(60.0):
                raise RuntimeError(f"the sink did not take the batches: {fwd.stats.last_error}")
            cpu, wall, n = (
                cpu + time.process_time() - t,
                wall + time.perf_counter() - w,
                n + len(chunk),
            )
        t, w = time.process_time(), time.perf_counter()
        if not await fwd.drain(60.0):
            raise RuntimeError(f"the sink did not take the batches: {fwd.stats.last_error}")
        cpu, wall = cpu + time.process_time() - t, wall + time.perf_counter() - w
        assert fwd.stats.written_points == n, fwd.stats
        spool.close()
        await sink.close()
    return {"cpu_us_per_reading": cpu / n * 1e6, "wall_s": wall, "readings_per_s": n / wall}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--readings", type=int, default=200_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--no-http", action="store_true", help="skip the VictoriaMetrics runs")
    args = parser.parse_args()
    if args.no_http:
        return run(args, "")
    from tests.servers import VictoriaMetrics  # noqa: PLC0415 - only with HTTP

    with tempfile.TemporaryDirectory() as tmp, VictoriaMetrics(Path(tmp) / "vm") as vm:
        return run(args, vm.url)


def run(args: argparse.Namespace, vm_url: str) -> int:
    n, runs, med = args.readings, args.runs, statistics.median
    orjson = Encoder().uses_orjson
    print(f"{n} readings of {len(SIGNALS)} fields and {len(TAGS)} tags; medians of {runs} "
          f"runs; CPU µs per reading (process time); orjson installed: {orjson}")  # fmt: skip
    for kind in KINDS:
        size = len(Encoder().encode(next(make_chunks(1, kind=kind))[0]) or b"")
        print(f"\n[{kind}] {size} bytes of line protocol per reading")
        for use_orjson, many in [(False, False), (True, False), (True, True)][: 3 if orjson else 1]:
            us = med(bench_encode(n, kind, use_orjson, many) for _ in range(runs))
            name = (
                f"{'encode_many' if many else 'encode':11s}, {'orjson' if use_orjson else 'repr'}"
            )
            print(f"  {name:44s} {us:6.2f} µs")
        bodies = payloads(n, kind)
        for fsync in ("never", "interval", "always"):
            part = bodies if fsync != "always" else bodies[:400]  # an fsync an append: fewer
            results = [bench_append(part, fsync) for _ in range(runs)]
            us = med(r[0] for r in results)
            walls = sorted(w for r in results for w in r[1])
            p50, p99 = walls[len(walls) // 2], walls[int(len(walls) * 0.99)]
            print(f"  {'append, 50 a time (fsync ' + fsync + ')':44s} {us:6.2f} µs   "
                  f"wall per append p50 {p50:.3f} ms, p99 {p99:.3f} ms")  # fmt: skip
        for many in (False, True):
            runs_ = [
                asyncio.run(measure_pipeline(NullSink(), make_chunks(n, kind=kind), many=many))
                for _ in range(runs)
            ]
            name = f"whole path, {'encode_many' if many else 'encode'} (null sink)"
            report(name, runs_)
        for flush in (FLUSH, FLUSH_FAST, FLUSH_SUSTAINED) if vm_url else ():
            runs_ = [
                asyncio.run(into_vm(vm_url, make_chunks(n, kind=kind, flush=flush)))
                for _ in range(runs)
            ]
            report(f"whole path into VictoriaMetrics, {flush}/append", runs_)
    return 0


def report(name: str, runs: list[dict[str, float]]) -> None:
    us = statistics.median(r["cpu_us_per_reading"] for r in runs)
    rate = statistics.median(r["readings_per_s"] for r in runs)
    verdict = "meets" if us <= TARGET_US else "misses"
    print(f"  {name:44s} {us:6.2f} µs   ({rate:,.0f} readings/s; "
          f"{verdict} the <= {TARGET_US:g} µs target)")  # fmt: skip


def vm_sink(url: str) -> InfluxV2Sink:
    return InfluxV2Sink(InfluxV2Config(type="influxdb", url=url, org="bench", bucket="bench"))


async def into_vm(url: str, chunks: Iterable[list[Reading]]) -> dict[str, float]:
    """:func:`measure_pipeline` into VictoriaMetrics, the sink's client built (and the server
    pinged) before the timed window: once per agent, not per reading."""
    sink = vm_sink(url)
    await sink.check()
    return await measure_pipeline(sink, chunks)


if __name__ == "__main__":
    sys.exit(main())
