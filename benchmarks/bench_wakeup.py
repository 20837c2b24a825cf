"""What a wake-up costs: the same work, in CPU µs, done back to back or after a sleep.

    .venv/bin/python benchmarks/bench_wakeup.py [--runs 5]

Why: the sizing bench (``factory-agent bench --sweep``) shows a small plant costing more CPU
per reading than a large one. A small plant's agent sleeps between polls, and on this machine a
process that wakes from a sleep runs the same code slower (cold caches and branch predictors,
a vCPU woken from idle), so every wake-up adds a roughly fixed cost. Two pieces of work are
timed after sleeps of 0, 1, 10 and 50 ms, in process CPU time (median of the runs):

- ``python loop``: a pure Python loop of ~150 µs, no I/O;
- ``modbus read``: one pymodbus read of 100 holding registers from the synthetic plant in
  another process (the agent's request, with our response classes).

The difference between "no sleep" and "50 ms" is the price of one wake-up for that work.

Then the floor of the sweep's smallest size (2 machines × 50 float32 signals at 10 Hz, one
connection each): an asyncio loop that only, on every 100 ms tick of the wall clock, reads the
100 registers of each machine and throws them away, for ``--tick-seconds`` (20 s): with raw
asyncio streams (a 12-byte request, a 209-byte answer) and with pymodbus' client. Its CPU per
tick divided by the tick's 100 values is what any agent of that size pays per reading before it
does anything with the values.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import struct
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pymodbus.client import AsyncModbusTcpClient  # noqa: E402

from connectors.modbus_pdu import register  # noqa: E402

GAPS_S = (0.0, 0.001, 0.01, 0.05)
TICK_S = 0.1
MACHINES = 2


def python_loop() -> int:
    total = 0
    for i in range(3000):
        total += i * i
    return total


def time_loop(gap_s: float, n: int) -> float:
    """CPU µs per iteration of :func:`python_loop` with ``gap_s`` of sleep between."""
    c0 = time.process_time()
    for _ in range(n):
        python_loop()
        if gap_s:
            time.sleep(gap_s)
    return (time.process_time() - c0) / n * 1e6


async def time_reads(client: AsyncModbusTcpClient, gap_s: float, n: int) -> float:
    """CPU µs per read of 100 registers with ``gap_s`` of sleep between."""
    c0 = time.process_time()
    for _ in range(n):
        await client.read_holding_registers(100, count=100, device_id=1)
        if gap_s:
            await asyncio.sleep(gap_s)
    return (time.process_time() - c0) / n * 1e6


async def modbus_reads(port: int, runs: int) -> dict[float, list[float]]:
    client = AsyncModbusTcpClient("127.0.0.1", port=port)
    register(client)
    await client.connect()
    out: dict[float, list[float]] = {}
    for _ in range(runs):
        for gap in GAPS_S:
            out.setdefault(gap, []).append(await time_reads(client, gap, 1000 if gap == 0 else 100))
    client.close()
    return out


async def _ticks(seconds: float, read_all: Callable[[], Awaitable[object]]) -> float:
    """CPU µs per 100 ms tick of the wall clock spent in ``read_all`` and the loop."""
    period = round(TICK_S * 1e9)
    await read_all()  # connections warm, first answers in
    n, c0, end = 0, time.process_time(), time.monotonic() + seconds
    while time.monotonic() < end:
        await asyncio.sleep((period - time.time_ns() % period) / 1e9)
        await read_all()
        n += 1
    return (time.process_time() - c0) / n * 1e6


async def tick_floor(port: int, seconds: float) -> dict[str, float]:
    """CPU µs per tick reading 100 registers from each of :data:`MACHINES` units."""
    out: dict[str, float] = {}
    streams = [await asyncio.open_connection("127.0.0.1", port) for _ in range(MACHINES)]

    async def raw_read(i: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # MBAP header (transaction 1, protocol 0, length 6, unit) + read holding registers
        writer.write(struct.pack(">HHHBBHH", 1, 0, 6, i + 1, 3, 100, 100))
        head = await reader.readexactly(7)
        await reader.readexactly(struct.unpack(">HHHB", head)[2] - 1)

    async def raw_all() -> None:
        await asyncio.gather(*(raw_read(i, r, w) for i, (r, w) in enumerate(streams)))

    out["raw asyncio streams"] = await _ticks(seconds, raw_all)
    for _, w in streams:
        w.close()
    clients = [AsyncModbusTcpClient("127.0.0.1", port=port) for _ in range(MACHINES)]
    for c in clients:
        register(c)
        await c.connect()

    async def pymodbus_all() -> None:
        await asyncio.gather(*(c.read_holding_registers(100, count=100, device_id=i + 1)
                               for i, c in enumerate(clients)))  # fmt: skip

    out["pymodbus client"] = await _ticks(seconds, pymodbus_all)
    for c in clients:
        c.close()
    return out


def main(runs: int, tick_seconds: float) -> None:
    rows: dict[str, dict[float, list[float]]] = {"python loop": {}}
    for _ in range(runs):
        for gap in GAPS_S:
            rows["python loop"].setdefault(gap, []).append(
                time_loop(gap, 1000 if gap == 0 else 100)
            )
    sim = subprocess.Popen(
        [sys.executable, "-m", "simulators.synthetic", "--protocol", "modbus",
         "--machines", str(MACHINES), "--signals", "50"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT,
    )  # fmt: skip
    try:
        assert sim.stdout is not None
        port = json.loads(sim.stdout.readline())["port"]
        rows["modbus read"] = asyncio.run(modbus_reads(port, runs))
        floors = [asyncio.run(tick_floor(port, tick_seconds)) for _ in range(runs)]
    finally:
        sim.kill()
        sim.wait()
    head = "".join(f"{f'sleep {g * 1000:g} ms':>14}" for g in GAPS_S)
    print(f"CPU µs per piece of work, median of {runs} runs\n{'':14}{head}{'wake-up':>12}")
    for name, by_gap in rows.items():
        med = [statistics.median(by_gap[g]) for g in GAPS_S]
        cells = "".join(f"{m:14.0f}" for m in med)
        print(f"{name:14}{cells}{med[-1] - med[0]:+12.0f}")
    values = MACHINES * 50
    print(f"\nA {TICK_S * 1000:g} ms tick reading {MACHINES} machines x 50 float32 signals and "
          f"nothing else, median of {runs} runs of {tick_seconds:g} s")  # fmt: skip
    for name in floors[0]:
        per_tick = statistics.median(f[name] for f in floors)
        print(f"{name:22}{per_tick:8.0f} µs per tick{per_tick / values:8.2f} µs per value")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--tick-seconds", type=float, default=20.0)
    args = parser.parse_args()
    main(args.runs, args.tick_seconds)
