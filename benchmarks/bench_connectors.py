"""CPU time per value for the connectors, against the simulators in another process.

    .venv/bin/python benchmarks/bench_connectors.py modbus [--machines 247] [--seconds 20]
    .venv/bin/python benchmarks/bench_connectors.py opcua  [--machines 68]  [--seconds 20]

The simulator runs as ``factory-sim run`` in its own process, so only the connector's CPU is
counted here (process time of this process, event loop included). Figures are medians over
several measurement windows. Targets (issue 3): <= 2 us per Modbus register value decoded,
<= 15 us per OPC UA data change.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from connectors.modbus import ModbusConfig, ModbusConnector  # noqa: E402
from connectors.types import FieldValue, Quality  # noqa: E402
from simulators.agentconfig import device_section  # noqa: E402
from simulators.scenario import Scenario  # noqa: E402
from tests.conftest import free_port, start_sim, wait_banner  # noqa: E402


def mix(machines: int) -> list[str]:
    """Mostly injection moulding machines (9 signals), every fifth another kind."""
    others = ["cnc", "compressor", "conveyor", "crane_hoist"]
    return [others[(i // 5) % 4] if i % 5 == 4 else "injection_moulding" for i in range(machines)]


def scenario(machines: int, opcua: bool, port: int) -> dict[str, Any]:
    return {
        "name": "bench", "seed": 1, "speed": 1, "rate_hz": 10, "duration": "2h",
        "opcua": {"enabled": opcua, "port": port, "security": ["None"]},
        "modbus": {"enabled": not opcua, "port": port},
        "machines": [{"name": f"m{i:03d}", "kind": k} for i, k in enumerate(mix(machines))],
    }  # fmt: skip


def serve(doc: dict[str, Any], seconds: float) -> tuple[subprocess.Popen[str], Path]:
    path = Path(tempfile.mkdtemp()) / "bench.yaml"
    path.write_text(yaml.safe_dump(doc))
    proc = start_sim(str(path), "--duration", str(seconds), "--labels", os.devnull)
    wait_banner(proc)
    return proc, path


def stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=15)


async def bench_modbus(machines: int, seconds: float, windows: int) -> None:
    port = free_port()
    doc = scenario(machines, opcua=False, port=port)
    proc, _ = serve(doc, seconds + 30)
    try:
        dev = yaml.safe_load(device_section(Scenario.model_validate(doc), "modbus"))["devices"][0]
        conn = ModbusConnector(ModbusConfig.model_validate({**dev, "timeout_s": 2.0}))
        await conn.connect()
        values_per_poll = sum(len(m.registers) for m in conn.config.machines)
        registers_per_poll = sum(r.count for u in conn._units for r in u.requests)

        # 1. decode alone, on real answers fetched once
        answers = []
        for unit in conn._units:
            for req in unit.requests:
                rr = await conn._client.read_holding_registers(
                    req.start, count=req.count, device_id=req.unit_id
                )
                answers.append((req, list(rr.registers)))
        decode_us = []
        for _ in range(windows):
            vals: list[dict[str, FieldValue]] = [{} for _ in conn.config.machines]
            qual: list[dict[str, Quality]] = [{} for _ in conn.config.machines]
            reps = 200
            c0 = time.process_time()
            for _ in range(reps):
                for req, raw in answers:
                    conn.decode(req, raw, vals, qual)
            decode_us.append((time.process_time() - c0) / (reps * values_per_poll) * 1e6)

        # 2. end to end: poll every machine as fast as the link allows
        e2e_us, cycle_ms = [], []
        per_window = max(1.0, seconds / windows)
        for _ in range(windows):
            polls, c0, t0 = 0, time.process_time(), time.perf_counter()
            while time.perf_counter() - t0 < per_window:
                readings = await conn.poll(time.time_ns())
                assert len(readings) == machines
                polls += 1
            cpu, wall = time.process_time() - c0, time.perf_counter() - t0
            e2e_us.append(cpu / (polls * values_per_poll) * 1e6)
            cycle_ms.append(wall / polls * 1e3)
        await conn.close()
    finally:
        stop(proc)
    med = statistics.median
    print(
        f"modbus connector: {machines} units, {values_per_poll} float32 values "
        f"({registers_per_poll} registers) per poll, {conn.request_count} requests per poll"
    )
    print(
        f"  decode only        median {med(decode_us):.2f} us per value "
        f"(windows: {', '.join(f'{x:.2f}' for x in decode_us)}); target <= 2 us"
    )
    print(
        f"  poll end to end    median {med(e2e_us):.2f} us CPU per value, incl. pymodbus "
        f"framing and asyncio"
    )
    print(
        f"  poll cycle         median {med(cycle_ms):.1f} ms for all {machines} units "
        f"(one connection, loopback)"
    )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("protocol", choices=["modbus", "opcua"])
    p.add_argument("--machines", type=int, default=None)
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--windows", type=int, default=5)
    args = p.parse_args()
    if args.protocol == "modbus":
        asyncio.run(bench_modbus(args.machines or 247, args.seconds, args.windows))
    else:
        from benchmarks.bench_opcua_connector import bench_opcua  # noqa: PLC0415

        asyncio.run(bench_opcua(args.machines or 68, args.seconds, args.windows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
