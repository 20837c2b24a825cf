"""The Modbus connector against the Modbus simulator: values, qualities, gaps and put-aside."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from typing import Any

import pytest
import yaml

from connectors.modbus import ModbusConfig, ModbusConnector
from connectors.types import QualityLevel
from simulators.agentconfig import device_section
from simulators.engine import Plant
from simulators.modbus_server import ModbusSimServer
from simulators.scenario import Scenario, load_scenario
from tests.conftest import CONFIGS

pytestmark = pytest.mark.integration


def modbus_device(scn: Scenario, port: int, **overrides: Any) -> ModbusConfig:
    doc = yaml.safe_load(device_section(scn, protocols="modbus"))
    (dev,) = doc["devices"]
    dev.update(port=port, **overrides)
    return ModbusConfig.model_validate(dev)


@pytest.fixture
async def served() -> AsyncIterator[tuple[Plant, ModbusSimServer]]:
    scn = load_scenario(CONFIGS / "scenarios" / "demo.yaml")
    scn = scn.model_copy(update={"modbus": scn.modbus.model_copy(update={"port": 0})})
    plant = Plant(scn)
    server = ModbusSimServer(plant, scn.modbus)
    await server.start()
    for _ in range(3):
        plant.step()
    await server.publish(plant)
    yield plant, server
    await server.stop()


async def test_every_signal_of_the_demo_reads_right(served: tuple[Plant, ModbusSimServer]) -> None:
    plant, server = served
    conn = ModbusConnector(modbus_device(plant.scenario, server.port, timeout_s=1.0))
    await conn.connect()
    try:
        readings = await conn.poll(123)
    finally:
        await conn.close()
    assert [r.machine for r in readings] == [m.name for m in plant.machines]
    assert conn.request_count == len(plant.machines)  # one merged read per machine
    for r, m in zip(readings, plant.machines, strict=True):
        assert r.time_ns == 123
        assert r.tags["line"] == m.spec.line and r.tags["protocol"] == "modbus"
        assert set(r.fields) == {s.name for s in m.signals}
        for s, v in zip(m.signals, m.values, strict=True):
            got = r.fields[s.name]
            assert isinstance(got, float) and v is not None
            assert math.isclose(got, v, rel_tol=1e-6, abs_tol=1e-6), s.name  # float32
        assert not r.quality
    snap = conn.health.snapshot()
    assert snap["connected"] and snap["rtt_median_s"] > 0


async def test_exception_marks_only_its_fields_bad(served: tuple[Plant, ModbusSimServer]) -> None:
    plant, server = served
    dev = modbus_device(plant.scenario, server.port).model_dump()
    dev["machines"][0]["registers"].append(
        {"field": "not_there", "table": "holding", "address": 60, "type": "uint16"}
    )
    conn = ModbusConnector(ModbusConfig.model_validate(dev))
    await conn.connect()
    try:
        (first, *_) = await conn.poll(1)
    finally:
        await conn.close()
    assert first.fields["not_there"] is None
    q = first.quality_of("not_there")
    assert (q.level, q.code) == (QualityLevel.BAD, 2)
    assert "illegal data address" in q.text
    assert first.quality_of("spindle_speed").is_good and first.fields["spindle_speed"]


async def test_sensor_failure_nan_is_marked_bad_not_invented() -> None:
    scn = load_scenario(CONFIGS / "scenarios" / "demo.yaml")
    fault = {"machine": "cnc-01", "type": "sensor_failure", "signal": "coolant_flow",
             "start": 0, "duration": "10m"}  # fmt: skip
    scn = Scenario.model_validate(
        {**scn.model_dump(), "faults": [fault], "modbus": {**scn.modbus.model_dump(), "port": 0}}
    )
    plant = Plant(scn)
    server = ModbusSimServer(plant, scn.modbus)
    await server.start()
    plant.step()
    await server.publish(plant)
    conn = ModbusConnector(modbus_device(scn, server.port))
    await conn.connect()
    try:
        (cnc, *_) = await conn.poll(1)
    finally:
        await conn.close()
        await server.stop()
    assert cnc.fields["coolant_flow"] is None
    assert cnc.quality_of("coolant_flow").level is QualityLevel.BAD
    assert cnc.quality_of("spindle_speed").is_good


async def test_a_silent_unit_is_a_gap_and_is_put_aside_while_others_keep_cadence() -> None:
    scn = load_scenario(CONFIGS / "scenarios" / "demo.yaml")
    fault = {"machine": "hoist-01", "type": "comm_loss", "start": 0, "duration": "30m"}
    scn = Scenario.model_validate(
        {**scn.model_dump(), "faults": [fault], "modbus": {**scn.modbus.model_dump(), "port": 0}}
    )
    plant = Plant(scn)
    server = ModbusSimServer(plant, scn.modbus)
    await server.start()
    plant.step()
    await server.publish(plant)
    conn = ModbusConnector(
        modbus_device(scn, server.port, timeout_s=0.3, put_aside_after=2, put_aside_s=60)
    )
    await conn.connect()
    try:
        polls = [await conn.poll(i) for i in range(4)]
    finally:
        await conn.close()
        await server.stop()
    for readings in polls:
        assert [r.machine for r in readings] == ["cnc-01", "imm-01", "conveyor-01", "compressor-01"]
    # Two timeouts, then the silent unit is skipped: the last polls pay no timeout for it.
    assert server.stats.silenced == 2
    assert conn.health.connected
