"""Issue 4's round trip: the demo plant's readings land in InfluxDB 1.x (v1 API) and in
VictoriaMetrics (v2 API through influxdb-client), and read back equal to what the simulator served.

The plant runs in this process with both simulator servers, and a listener records every value
it served at every tick. OPC UA points carry the source timestamp, so each one is compared with
the value served at exactly that tick; Modbus points carry the poll time, so each must equal the
float32 of a value that machine served (Modbus carries float32).
"""

from __future__ import annotations

import asyncio
import struct
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent.config import AgentConfig
from agent.runtime import Agent
from connectors.types import Reading
from simulators.engine import Plant
from simulators.modbus_server import ModbusSimServer
from simulators.opcua_server import OpcUaSimServer
from simulators.scenario import load_scenario
from tests.conftest import CONFIGS, free_port
from tests.e2e.conftest import wait_for
from tests.servers import InfluxDB1, VictoriaMetrics

pytestmark = pytest.mark.e2e


def f32(x: float) -> float:
    return float(struct.unpack(">f", struct.pack(">f", x))[0])


async def test_demo_readings_round_trip_through_both_apis(  # noqa: PLR0915 (one story)
    start_server: Callable[..., Any], victoria: VictoriaMetrics, tmp_path: Path
) -> None:
    influx = start_server(InfluxDB1)
    influx.create_database("factory")
    scn = load_scenario(CONFIGS / "scenarios" / "demo.yaml")
    scn = scn.model_copy(update={
        "speed": 1.0, "faults": [],
        "opcua": scn.opcua.model_copy(update={"port": 0, "users": []}),
        "modbus": scn.modbus.model_copy(update={"port": 0}),
    })  # fmt: skip
    plant = Plant(scn)
    served_at: dict[tuple[str, int], dict[str, float | None]] = {}
    served_any: dict[tuple[str, str], set[float]] = defaultdict(set)

    async def record(p: Plant) -> None:
        for m in p.machines:
            values = dict(zip(m.model.signal_names(), m.values, strict=True))
            served_at[(m.name, p.time_ns)] = values
            for name, v in values.items():
                if v is not None:
                    served_any[(m.name, name)].add(f32(v))

    servers = [ModbusSimServer(plant, scn.modbus), OpcUaSimServer(plant, scn.opcua)]
    for s in servers:
        await s.start()
    stop = asyncio.Event()
    ticking = asyncio.create_task(plant.run([record, *(s.publish for s in servers)], stop))

    cfg = yaml.safe_load((CONFIGS / "demo.yaml").read_text())
    for dev in cfg["devices"]:
        if dev["type"] == "opcua":
            dev["endpoint"] = servers[1].endpoint
        else:
            dev["port"] = servers[0].port
        dev["interval_s"] = 0.5
    cfg["agent"]["data_dir"] = str(tmp_path)
    cfg["history"] = {"enabled": False}
    cfg["http"] = {"listen": f"127.0.0.1:{free_port()}"}
    cfg["monitor"] = {"interval_s": 3600}
    cfg["sinks"] = [
        {"name": "influx1", "type": "influxdb_v1", "url": influx.url, "database": "factory"},
        {"name": "victoria", "type": "influxdb", "url": victoria.url, "org": "plant",
         "bucket": "machines"},
    ]  # fmt: skip
    collected: list[Reading] = []

    def hook(r: Reading) -> list[Reading]:
        collected.append(r)
        return [r]

    agent = Agent(AgentConfig(**cfg), hook=hook)
    running = asyncio.create_task(agent.run())
    try:
        await wait_for(lambda: len({r.machine for r in collected}) == 5 and len(collected) > 40, 30)
    finally:
        agent.request_stop()
        await running
        stop.set()
        await ticking
        for s in servers:
            await s.stop()
    assert all(f.snapshot()["spool_points"] == 0 for f in agent.forwarders)  # all delivered

    # InfluxDB 1.x, v1 API: every point, every field.
    rows = influx.query("SELECT * FROM machine", "factory")
    assert len(rows) == len(collected)
    checked = 0
    for row in rows:
        machine, t = row["machine"], row["time"]
        fields = {k: v for k, v in row.items() if k in served_any_names(served_any, machine)}
        if row["protocol"] == "opcua":
            expected = served_at[(machine, t)]
            assert fields == {k: v for k, v in expected.items() if v is not None}, (machine, t)
        else:
            for name, v in fields.items():
                if v is not None:
                    assert v in served_any[(machine, name)], (machine, name, v)
        checked += sum(v is not None for v in fields.values())
    assert checked >= 40 * 6

    # VictoriaMetrics, v2 API through influxdb-client: the OPC UA spindle speed, point by point.
    (series,) = victoria.export('machine_spindle_speed{machine="cnc-01"}', min_samples=3)
    _, labels, values, stamps_ms = series
    assert labels["protocol"] == "opcua" and labels["line"] == "line-1"
    sent = sorted(
        (r.time_ns, r.fields["spindle_speed"]) for r in collected if r.machine == "cnc-01"
    )
    assert [t // 10**6 for t, _ in sent] == stamps_ms
    # VictoriaMetrics' export prints about 12 significant digits
    assert [v for _, v in sent] == pytest.approx(values, rel=1e-10)
    for t, v in sent:
        assert served_at[("cnc-01", t)]["spindle_speed"] == v
    # and a Modbus machine arrives there too, equal to what the simulator served (float32)
    (hoist,) = victoria.export('machine_load{machine="hoist-01"}', min_samples=3)
    near = sorted(served_any[("hoist-01", "load")])
    assert all(any(abs(v - w) <= 1e-9 * max(1.0, abs(w)) for w in near) for v in hoist[2])


def served_any_names(served: dict[tuple[str, str], set[float]], machine: str) -> set[str]:
    return {name for (m, name) in served if m == machine}
