"""Issue 5's end-to-end story: a bearing wears out, the agent raises one episode.

A crane hoist is served over OPC UA by the simulator in this process (50× real time, one
machine second per tick); the agent reads it with local detection on (the default PCA T²+Q and
per-signal checks) and an InfluxDB 1.x sink. After a warm-up of normal running the gearbox
bearing starts to wear. Expected: exactly one episode, on that machine, whose top contributor
is the vibration signal, in the journal and as an ``anomaly`` point in InfluxDB; and the
model file saved with its metadata.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent.config import AgentConfig
from agent.journal import Journal
from agent.runtime import Agent
from simulators.agentconfig import device_section
from simulators.engine import Plant
from simulators.opcua_server import OpcUaSimServer
from simulators.scenario import Scenario
from tests.conftest import free_port
from tests.e2e.conftest import wait_for
from tests.servers import InfluxDB1

pytestmark = pytest.mark.e2e

SPEED = 50  # machine seconds per wall second
WARMUP_S = 1800  # machine time of normal running the model learns from
FAULT_AT_S = WARMUP_S + 120


async def test_bearing_wear_raises_one_episode_with_vibration_on_top(  # noqa: PLR0915 (one story)
    start_server: Callable[..., Any], tmp_path: Path
) -> None:
    influx = start_server(InfluxDB1)
    influx.create_database("factory")
    scn = Scenario.model_validate({
        "name": "wear", "site": "e2e", "seed": 3, "speed": SPEED, "rate_hz": SPEED,
        "duration": "3h", "modbus": {"enabled": False}, "opcua": {"port": 0},
        "machines": [{"name": "hoist-01", "kind": "crane_hoist", "line": "yard"}],
        "faults": [{"machine": "hoist-01", "type": "bearing_wear", "start": f"{FAULT_AT_S}s",
                    "duration": "1h", "severity": 0.8}],
    })  # fmt: skip
    plant = Plant(scn)
    server = OpcUaSimServer(plant, scn.opcua)
    await server.start()
    stop = asyncio.Event()
    ticking = asyncio.create_task(plant.run([server.publish], stop))

    devices = yaml.safe_load(device_section(scn, "opcua"))["devices"]
    devices[0]["endpoint"] = server.endpoint
    devices[0]["interval_s"] = 1 / SPEED
    cfg = AgentConfig.model_validate({
        "agent": {"data_dir": str(tmp_path), "log_level": "WARNING"},
        "devices": devices,
        "sinks": [{"name": "influx1", "type": "influxdb_v1", "url": influx.url,
                   "database": "factory"}],
        "history": {"enabled": False},
        "http": {"listen": f"127.0.0.1:{free_port()}"},
        "monitor": {"interval_s": 3600},
        "analytics": {"warmup_s": WARMUP_S, "warmup_rows": 600},
    })  # fmt: skip
    agent = Agent(cfg)
    running = asyncio.create_task(agent.run())

    def opened() -> list[Any]:
        an = agent.analytics
        return [e for e in an.events if e.kind == "opened"] if an is not None else []

    try:
        await wait_for(opened, 150)
        await asyncio.sleep(3)  # would a second episode follow? (there must be none)
    finally:
        agent.request_stop()
        await running
        stop.set()
        await ticking
        await server.stop()

    (event,) = opened()
    ep = event.episode
    start_s = (ep.start_ns - plant.start_ns) / 1e9
    assert ep.machine == "hoist-01"
    assert start_s >= FAULT_AT_S, "raised before the fault: a false alarm"
    assert ep.contributions[0].signal == "gearbox_vibration"
    assert ep.contributions[0].unit == "mm/s"
    assert ep.contributions[0].observed > ep.contributions[0].expected

    journal = Journal(tmp_path / "journal.db")
    try:
        (stored,) = journal.list()
    finally:
        journal.close()
    assert stored.episode.id == ep.id
    assert stored.episode.contributions[0].signal == "gearbox_vibration"

    rows = influx.query("SELECT * FROM anomaly", "factory")
    assert len(rows) == 1  # one point per episode, rewritten as its state changes
    assert rows[0]["machine"] == "hoist-01" and rows[0]["id"] == ep.id
    assert rows[0]["top_signal"] == "gearbox_vibration"
    assert rows[0]["severity"] == ep.severity

    meta = json.loads((tmp_path / "models" / "hoist-01.json").read_text())
    assert meta["machine"] == "hoist-01" and meta["rows"] >= 600
    assert meta["features"][0] == "hoist_speed" and "pca-t2q" in meta["detectors"]
    scores = influx.query("SELECT count(score) FROM anomaly_score", "factory")
    assert scores and scores[0]["count"] > 600
