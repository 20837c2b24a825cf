"""Shared fixtures: paths, small scenarios and free loopback ports."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import structlog

from connectors.base import Connector
from connectors.types import Reading
from simulators.engine import Plant
from simulators.modbus_server import ModbusSimServer
from simulators.opcua_server import OpcUaSimServer
from simulators.scenario import Scenario

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "configs"
SIM = [sys.executable, "-m", "simulators.cli"]


async def wait_for(cond: Callable[[], Any], timeout_s: float, step_s: float = 0.02) -> float:
    """Seconds until ``cond()`` is truthy; fails after ``timeout_s``."""
    t0 = time.monotonic()
    while not cond():
        if time.monotonic() - t0 > timeout_s:
            raise AssertionError(f"condition not met within {timeout_s} s")
        await asyncio.sleep(step_s)
    return time.monotonic() - t0


@asynccontextmanager
async def consuming(conn: Connector) -> AsyncIterator[list[tuple[float, Reading]]]:
    """Connect ``conn`` and collect its readings, each with its arrival (monotonic) time, in a
    task; on exit close the connector and wait for the task."""
    got: list[tuple[float, Reading]] = []

    async def consume() -> None:
        async for r in conn.readings():
            got.append((time.monotonic(), r))

    await conn.connect()
    task = asyncio.create_task(consume())
    try:
        yield got
    finally:
        await conn.close()
        await asyncio.wait_for(task, 5)


async def serve_modbus(scn: Scenario) -> tuple[Plant, ModbusSimServer]:
    """The scenario's plant, one tick in, served by a started Modbus simulator."""
    plant = Plant(scn)
    server = ModbusSimServer(plant, scn.modbus)
    await server.start()
    plant.step()
    await server.publish(plant)
    return plant, server


@asynccontextmanager
async def serving_opcua(plant: Plant) -> AsyncIterator[OpcUaSimServer]:
    """The plant served by a started OPC UA simulator on a free port, stopped afterwards."""
    server = OpcUaSimServer(plant, port=0)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


def free_port() -> int:
    """A TCP port that is free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_scenario(**overrides: Any) -> Scenario:
    """A one-CNC scenario at 60x, one update per second (60 machine seconds per tick)."""
    data: dict[str, Any] = {
        "name": "test",
        "seed": 11,
        "speed": 60,
        "rate_hz": 1,
        "duration": "3h",
        "start": "2026-01-05T06:00:00Z",
        "machines": [{"name": "cnc-01", "kind": "cnc", "line": "line-1"}],
        "faults": [],
    }
    data.update(overrides)
    return Scenario.model_validate(data)


@pytest.fixture(autouse=True)
def _fresh_logging() -> Iterator[None]:
    """A CLI test configures structlog for the process; give every test the defaults back."""
    yield
    structlog.reset_defaults()


def start_sim(*args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [*SIM, "run", *args], cwd=ROOT, env=env, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip


def wait_banner(proc: subprocess.Popen[str], timeout_s: float = 30.0) -> str:
    """Read stdout until the labels line: both servers are listening by then."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout_s
    lines = []
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if line.strip().startswith("labels:"):
            return "".join(lines)
    err = proc.stderr.read() if proc.stderr and proc.poll() is not None else ""
    raise AssertionError(f"factory-sim did not come up: {''.join(lines)}{err}")
