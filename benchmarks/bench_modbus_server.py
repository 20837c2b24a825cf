"""Benchmark: one Modbus simulator process serving a large plant at 10 Hz while clients poll.

Builds a scenario of ``--machines`` machines (cycling through every kind in ``MODELS``), serves
it on a free loopback port and runs the plant paced to the wall clock for ``--seconds``. A
separate client process (so the server's CPU figure is its own) runs ``--clients`` concurrent
pymodbus clients, each reading all holding registers of every unit in turn (header block and
float block: two reads per unit), as fast as the server answers.

    .venv/bin/python benchmarks/bench_modbus_server.py [--machines 200] [--clients 4]

Prints signals served, tick rate, overruns, server CPU %, publish time per tick (median/p99),
client round trip (median/p99) and reads/s.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import statistics
import time
from multiprocessing.connection import Connection
from typing import Any

from pymodbus.client import AsyncModbusTcpClient

from simulators.engine import Plant
from simulators.modbus_server import ModbusSimServer
from simulators.models import MODELS
from simulators.registermap import FLOAT_BASE
from simulators.scenario import Scenario


def plant_mix(machines: int) -> list[str]:
    """A moulding shop: injection moulding machines (9 signals), every fifth another kind.

    With the Modbus limit of 247 unit ids this reaches 2,000+ signals; plain cycling through
    the kinds (7.4 signals on average) would stop at 1,828.
    """
    others = sorted(k for k in MODELS if k != "injection_moulding")
    return [
        others[(i // 5) % len(others)] if i % 5 == 4 else "injection_moulding"
        for i in range(machines)
    ]


def build_scenario(machines: int, rate_hz: float, word_order: str) -> Scenario:
    kinds = plant_mix(machines)
    return Scenario.model_validate({
        "name": "bench-modbus", "seed": 1, "rate_hz": rate_hz, "duration": 86400,
        "opcua": {"enabled": False},
        "modbus": {"host": "127.0.0.1", "word_order": word_order},
        "machines": [{"name": f"m-{i:03d}", "kind": kinds[i]}
                     for i in range(machines)],
    })  # fmt: skip


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


# -- client process -----------------------------------------------------------------------------
async def _poll(port: int, units: list[tuple[int, int]], seconds: float) -> tuple[list[float], int]:
    client = AsyncModbusTcpClient("127.0.0.1", port=port, timeout=2.0, retries=0)
    await client.connect()
    rtts: list[float] = []
    errors = 0
    end = time.perf_counter() + seconds
    try:
        while time.perf_counter() < end:
            for unit_id, n_signals in units:
                for address, count in ((0, 5), (FLOAT_BASE, 2 * n_signals)):
                    t0 = time.perf_counter()
                    try:
                        r = await client.read_holding_registers(
                            address, count=count, device_id=unit_id
                        )
                        errors += r.isError()
                    except Exception:  # a benchmark counts failures, whatever they are
                        errors += 1
                    rtts.append(time.perf_counter() - t0)
    finally:
        client.close()
    return rtts, errors


def client_main(
    port: int, units: list[tuple[int, int]], clients: int, seconds: float, conn: Connection
) -> None:
    async def main() -> None:
        t0, c0 = time.perf_counter(), time.process_time()
        results = await asyncio.gather(*(_poll(port, units, seconds) for _ in range(clients)))
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        rtts = [x for r, _ in results for x in r]
        errors = sum(e for _, e in results)
        conn.send({"rtts": rtts, "errors": errors, "wall": wall, "cpu_pct": 100 * cpu / wall})

    asyncio.run(main())


# -- server process -----------------------------------------------------------------------------
async def run(args: argparse.Namespace) -> dict[str, Any]:
    scn = build_scenario(args.machines, args.rate, args.word_order)
    plant = Plant(scn)
    server = ModbusSimServer(plant, scn.modbus.model_copy(update={"port": 0}))
    await server.start()
    publish_s: list[float] = []

    async def timed_publish(p: Plant) -> None:
        t0 = time.perf_counter()
        await server.publish(p)
        publish_s.append(time.perf_counter() - t0)

    units = [(m.unit_id, len(m.signals)) for m in plant.machines]
    client_stats: dict[str, Any] = {"rtts": [], "errors": 0, "wall": args.seconds, "cpu_pct": 0}
    parent, child = mp.get_context("spawn").Pipe()
    proc = mp.get_context("spawn").Process(
        target=client_main, args=(server.port, units, args.clients, args.seconds, child)
    )
    if args.clients:
        proc.start()
        await asyncio.sleep(1.0)  # let the client process import and connect
    stop = asyncio.Event()
    cpu0, wall0 = time.process_time(), time.perf_counter()
    await plant.run([timed_publish], stop, wall_s=args.seconds)
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    if args.clients:
        client_stats = await asyncio.to_thread(parent.recv)
        proc.join()
    await server.stop()
    st = plant.stats
    return {
        "machines": len(plant.machines),
        "kinds": sorted({m.spec.kind for m in plant.machines}),
        "signals": server.signal_count,
        "ticks_per_s": st.ticks / wall,
        "ticks": st.ticks,
        "overruns": st.overruns,
        "cpu_pct": 100.0 * cpu / wall,
        "step_ms": 1000.0 * st.step_cpu_s / max(st.ticks, 1),
        "publish_ms": [1000.0 * x for x in publish_s[1:]],
        "rtt_ms": [1000.0 * x for x in client_stats["rtts"]],
        "errors": client_stats["errors"],
        "client_wall": client_stats["wall"],
        "client_cpu_pct": client_stats["cpu_pct"],
        "requests": server.stats.requests,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--machines", type=int, default=247)
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--rate", type=float, default=10.0, help="ticks per second")
    p.add_argument("--word-order", default="ABCD", choices=["ABCD", "CDAB", "BADC", "DCBA"])
    args = p.parse_args()
    r = asyncio.run(run(args))
    pub, rtt = r["publish_ms"], r["rtt_ms"]
    print(f"machines served      {r['machines']} ({', '.join(r['kinds'])})")
    print(f"signals served       {r['signals']}")
    print(f"tick rate            {r['ticks_per_s']:.2f} ticks/s (target {args.rate:g}), "
          f"{r['ticks']} ticks")  # fmt: skip
    print(f"overruns             {r['overruns']}")
    print(f"server CPU           {r['cpu_pct']:.1f} % of one core "
          f"(plant step {r['step_ms']:.2f} ms/tick)")  # fmt: skip
    print(f"publish per tick     median {statistics.median(pub):.3f} ms, "
          f"p99 {pct(pub, 0.99):.3f} ms, max {max(pub):.3f} ms")  # fmt: skip
    print(f"client round trip    median {pct(rtt, 0.5):.3f} ms, "
          f"p99 {pct(rtt, 0.99):.3f} ms ({args.clients} clients, closed loop, "
          f"client process CPU {r['client_cpu_pct']:.0f} %)")  # fmt: skip
    print(f"reads                {len(rtt) / r['client_wall']:.0f} reads/s, "
          f"{len(rtt)} reads, {r['errors']} errors, {r['requests']} served")  # fmt: skip


if __name__ == "__main__":
    main()
