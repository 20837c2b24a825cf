"""OPC UA half of ``bench_connectors.py``: CPU per data change of the subscribing connector."""

from __future__ import annotations

import asyncio
import statistics
import time

import yaml

from benchmarks.bench_connectors import scenario, serve, stop
from connectors.opcua import OpcUaConfig, OpcUaConnector
from simulators.agentconfig import device_section
from simulators.scenario import Scenario
from tests.conftest import free_port


async def bench_opcua(machines: int, seconds: float, windows: int) -> None:
    port = free_port()
    doc = scenario(machines, opcua=True, port=port)
    proc, _ = serve(doc, seconds + 60)
    try:
        dev = yaml.safe_load(device_section(Scenario.model_validate(doc), "opcua"))["devices"][0]
        cfg = OpcUaConfig.model_validate({**dev, "interval_s": 0.1, "timeout_s": 5.0})
        conn = OpcUaConnector(cfg)
        signals = sum(len(m.nodes) for m in cfg.machines)
        readings = 0

        async def consume() -> None:
            nonlocal readings
            async for _ in conn.readings():
                readings += 1

        await conn.connect()
        task = asyncio.create_task(consume())
        t_wait = time.monotonic()
        while conn.stats.data_changes < signals and time.monotonic() - t_wait < 30:  # noqa: ASYNC110
            await asyncio.sleep(0.1)  # initial values delivered (polling a counter on purpose)
        per_change, rates = [], []
        per_window = max(1.0, seconds / windows)
        for _ in range(windows):
            c0, d0, t0 = time.process_time(), conn.stats.data_changes, time.perf_counter()
            await asyncio.sleep(per_window)
            changes = conn.stats.data_changes - d0
            per_change.append((time.process_time() - c0) / max(changes, 1) * 1e6)
            rates.append(changes / (time.perf_counter() - t0))
        await conn.close()
        await asyncio.wait_for(task, 10)
    finally:
        stop(proc)
    med = statistics.median
    print(f"opcua connector: {machines} machines, {signals} subscribed signals at 10 Hz, "
          f"publishing interval 100 ms")  # fmt: skip
    print(f"  data changes       median {med(rates):.0f} /s received")
    print(
        f"  CPU per change     median {med(per_change):.2f} us "
        f"(windows: {', '.join(f'{x:.1f}' for x in per_change)}); target <= 15 us"
    )
