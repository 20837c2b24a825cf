"""Write throughput and CPU per point of the InfluxDB sinks, against real servers.

    .venv/bin/python benchmarks/bench_sinks.py [--points 200000] [--batch 5000] [--runs 5]
                                               [--gzip-level 1]

200k points of 8 float fields each, in batches of 5,000, one batch in flight (as the forwarder
sends them): InfluxV2Sink (influxdb-client, /api/v2/write) into VictoriaMetrics and InfluxV1Sink
(aiohttp, /write) into influxd 1.x, both started from their Debian binaries on free loopback
ports by tests/servers.py. Figures are medians of the runs: points/s (wall clock, so the
server's speed counts) and CPU µs per point of this process only (process time: serialising
nothing, since the lines are prepared up front; gzip, HTTP, event loop). The server's CPU is
not counted.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agent.sinks.influxdb import (  # noqa: E402
    InfluxV1Config,
    InfluxV1Sink,
    InfluxV2Config,
    InfluxV2Sink,
)
from tests.servers import InfluxDB1, VictoriaMetrics  # noqa: E402


def batches(points: int, size: int, seed: int = 1) -> list[bytes]:
    """Line protocol like the agent's: 50 machines, 8 float fields, 1 s apart, ms timestamps."""
    rng = random.Random(seed)
    start_ns = (time.time_ns() // 1_000_000 - points * 20) * 1_000_000
    lines = []
    for i in range(points):
        fields = ",".join(f"f{k}={rng.uniform(0, 1000):.4f}" for k in range(8))
        ts = start_ns + (i // 50) * 1_000_000_000 + (i % 50) * 1_000_000
        lines.append(f"bench,machine=m{i % 50:03d},line=line-{i % 5} {fields} {ts}")
    return ["\n".join(lines[i : i + size]).encode() for i in range(0, points, size)]


async def run(sink: Any, data: list[bytes]) -> tuple[float, float]:
    """(wall s, CPU s) of writing every batch, one after the other."""
    await sink.write(data[0])  # connection set up outside the measurement
    wall, cpu = time.perf_counter(), time.process_time()
    for body in data:
        await sink.write(body)
    return time.perf_counter() - wall, time.process_time() - cpu


async def measure(name: str, sink: Any, data: list[bytes], points: int, runs: int) -> None:
    try:
        results = [await run(sink, data) for _ in range(runs)]
    finally:
        await sink.close()
    wall = statistics.median(r[0] for r in results)
    cpu = statistics.median(r[1] for r in results)
    print(
        f"{name:44s} {points / wall:>10,.0f} points/s   {cpu / points * 1e6:5.2f} µs CPU/point"
        f"   (wall {wall:.2f} s, median of {runs})"
    )


def gzip_cost(data: list[bytes], level: int, points: int) -> None:
    if level == 0:
        return
    cpu = time.process_time()
    size = sum(len(gzip.compress(b, level)) for b in data)
    cpu = time.process_time() - cpu
    raw = sum(len(b) for b in data)
    print(
        f"{'  of which gzip level ' + str(level):44s} {'':>10s}            "
        f"{cpu / points * 1e6:5.2f} µs CPU/point   ({raw / size:.1f}x: {raw / points:.0f} -> "
        f"{size / points:.0f} bytes/point)"
    )


async def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--points", type=int, default=200_000)
    p.add_argument("--batch", type=int, default=5_000)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--gzip-level", type=int, default=1)
    args = p.parse_args()
    data = batches(args.points, args.batch)
    common = {"gzip_level": args.gzip_level, "timeout_s": 30.0}
    print(f"{args.points:,} points x 8 fields, batches of {args.batch:,}, gzip {args.gzip_level}")
    with tempfile.TemporaryDirectory() as tmp:
        with VictoriaMetrics(Path(tmp) / "vm") as vm:
            config = InfluxV2Config(
                type="influxdb", url=vm.url, org="bench", bucket="bench", **common
            )
            await measure(
                "InfluxV2Sink -> VictoriaMetrics /api/v2/write",
                InfluxV2Sink(config), data, args.points, args.runs,
            )  # fmt: skip
        with InfluxDB1(Path(tmp) / "influxd") as influxd:
            influxd.create_database("bench")
            v1 = InfluxV1Config(type="influxdb_v1", url=influxd.url, database="bench", **common)
            await measure(
                "InfluxV1Sink -> influxd 1.x /write",
                InfluxV1Sink(v1), data, args.points, args.runs,
            )  # fmt: skip
    gzip_cost(data, args.gzip_level, args.points)


if __name__ == "__main__":
    asyncio.run(main())
