"""Modbus connector on a bad link: silent cuts, resets, and 5G-like latency (fault proxy)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from connectors.modbus import ModbusConfig, ModbusConnector
from simulators.engine import Plant
from simulators.modbus_server import ModbusSimServer
from simulators.scenario import Scenario
from tests.conftest import consuming, wait_for
from tests.faultproxy import FaultProxy

pytestmark = pytest.mark.integration


def plant_of(machines: int) -> Plant:
    return Plant(Scenario.model_validate({
        "name": "faults", "seed": 3, "speed": 1, "rate_hz": 10, "duration": "1h",
        "opcua": {"enabled": False}, "modbus": {"port": 0},
        "machines": [{"name": f"m{i:02d}", "kind": "conveyor"} for i in range(machines)],
    }))  # fmt: skip


def device(name: str, port: int, unit: int, **kw: Any) -> ModbusConfig:
    return ModbusConfig.model_validate({
        "name": name, "type": "modbus", "host": "127.0.0.1", "port": port, **kw,
        "machines": [{"name": f"m{unit - 1:02d}", "unit_id": unit, "registers": [
            {"field": "belt_speed", "address": 100, "type": "float32"},
            {"field": "motor_current", "address": 104, "type": "float32"},
        ]}],
    })  # fmt: skip


@pytest.fixture
async def sim() -> AsyncIterator[tuple[Plant, ModbusSimServer]]:
    plant = plant_of(20)
    server = ModbusSimServer(plant, plant.scenario.modbus)
    await server.start()
    stop = asyncio.Event()
    ticking = asyncio.create_task(plant.run([server.publish], stop))
    yield plant, server
    stop.set()
    await ticking
    await server.stop()


async def test_silent_cut_detected_within_3s_and_data_back_within_5s(
    sim: tuple[Plant, ModbusSimServer],
) -> None:
    _, server = sim
    proxy = await FaultProxy("127.0.0.1", server.port).start()
    conn = ModbusConnector(device("plc", proxy.port, 1, interval_s=0.5, timeout_s=1.0))
    try:
        async with consuming(conn) as got:
            await wait_for(lambda: len(got) >= 3 and conn.health.connected, 10)
            proxy.cut()
            detected = await wait_for(lambda: not conn.health.connected, 5)
            assert detected <= 3.0, f"cut detected after {detected:.1f} s"
            await asyncio.sleep(10.0 - detected)
            before = len(got)
            proxy.restore()
            back = await wait_for(lambda: len(got) > before, 10)
            assert back <= 5.0, f"data flowed again {back:.1f} s after the link returned"
            assert conn.health.connected
            assert conn.health.reconnects == 1
            # The gap is counted, not hidden: 10 s at 0.5 s is 20 polls that brought nothing.
            assert conn.health.failed_polls + conn.health.missed_polls >= 15
    finally:
        await proxy.stop()


async def test_connection_reset_recovers(sim: tuple[Plant, ModbusSimServer]) -> None:
    _, server = sim
    proxy = await FaultProxy("127.0.0.1", server.port).start()
    conn = ModbusConnector(device("plc", proxy.port, 2, interval_s=0.2, timeout_s=1.0))
    try:
        async with consuming(conn) as got:
            await wait_for(lambda: len(got) >= 2, 10)
            proxy.reset()
            before = len(got)
            back = await wait_for(lambda: len(got) > before + 2, 10)
            assert back < 5.0
            assert proxy.connections >= 2  # it really reconnected
    finally:
        await proxy.stop()


async def test_twenty_devices_on_a_5g_link_poll_concurrently(
    sim: tuple[Plant, ModbusSimServer],
) -> None:
    _, server = sim
    # 20 ms ± 10 ms each way: a round trip of 40 ms on average, as on a loaded 5G cell.
    proxy = await FaultProxy("127.0.0.1", server.port, latency_s=0.020, jitter_s=0.010).start()
    conns = [ModbusConnector(device(f"plc{i}", proxy.port, i + 1)) for i in range(20)]
    await asyncio.gather(*(c.connect() for c in conns))
    try:
        cycles = []
        for k in range(5):
            t0 = time.perf_counter()
            results = await asyncio.gather(*(c.poll(k) for c in conns))
            cycles.append(time.perf_counter() - t0)
            assert all(len(r) == 1 and not r[0].quality for r in results)
        rtt = sorted(s for c in conns for s in c.health.rtt_s)
        median_rtt = rtt[len(rtt) // 2]
    finally:
        await asyncio.gather(*(c.close() for c in conns))
        await proxy.stop()
    sequential = 20 * median_rtt
    assert median_rtt >= 0.030  # the proxy really adds the latency
    assert min(cycles) < sequential / 4, (cycles, median_rtt)
