"""Serial Modbus RTU, simulator to connector, over a socat pty pair (tests/serialline.py).

The simulator opens one end of the line, the agent's connector the other: several unit ids on
one line, a silent unit, the line going away and coming back, and ``factory-sim run`` with
``factory-agent run --once`` as separate processes.
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog.testing
import yaml

from connectors.modbus import ModbusConfig, ModbusConnector
from simulators.agentconfig import device_section
from simulators.engine import Plant
from simulators.modbus_server import ModbusSimServer, ServerStartError
from simulators.models import MODELS
from simulators.scenario import Scenario, load_scenario
from tests.conftest import (
    CONFIGS,
    ROOT,
    SIM,
    consuming,
    serve_modbus,
    start_sim,
    wait_banner,
    wait_for,
)
from tests.serialline import SerialLine, SerialLineError

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

AGENT = [sys.executable, "-m", "agent.cli"]
#: ptys carry no parity (see tests/serialline.py); the baud rate is passed on, not emulated
LINE = {"baudrate": 19200, "parity": "N"}


@pytest.fixture
def line(tmp_path: Path) -> Iterator[SerialLine]:
    serial_line = SerialLine(tmp_path)
    problem = ""
    try:
        serial_line.start()
    except SerialLineError as e:
        serial_line.close()
        problem = str(e)
    if problem:
        pytest.fail(problem, pytrace=False)
    try:
        yield serial_line
    finally:
        serial_line.close()


def scenario(line: SerialLine, **extra: Any) -> Scenario:
    """Three machines on one line, unit ids 1, 2 and 17."""
    return Scenario.model_validate({
        "name": "serial", "seed": 5, "opcua": {"enabled": False},
        "modbus": {"transport": "serial", "serial_port": str(line.sim), **LINE},
        "machines": [{"name": "cnc-01", "kind": "cnc"}, {"name": "pump-01", "kind": "compressor"},
                     {"name": "belt-01", "kind": "conveyor", "unit_id": 17}],
        **extra,
    })  # fmt: skip


def config(scn: Scenario, line: SerialLine, **extra: Any) -> dict[str, Any]:
    """The agent's device entry: print-config's register map, on the agent's end of the line."""
    (dev,) = yaml.safe_load(device_section(scn, "modbus"))["devices"]
    # print-config names the simulator's end of the line and its settings
    assert (dev["transport"], dev["serial_port"]) == ("serial", str(line.sim))
    assert {k: dev[k] for k in LINE} == LINE and "host" not in dev
    return {**dev, "serial_port": str(line.agent), "timeout_s": 2.0, **extra}


def assert_matches(plant: Plant, got: dict[str, dict[str, Any]], machines: set[str]) -> None:
    assert set(got) == machines
    for m in plant.machines:
        if m.name not in machines:
            continue
        assert set(got[m.name]) == {s.name for s in m.signals}
        for s, v in zip(m.signals, m.values, strict=True):
            assert v is not None
            assert math.isclose(got[m.name][s.name], v, rel_tol=1e-6, abs_tol=1e-6), s.name


async def test_serial_rtu_reads_every_unit_on_the_line(line: SerialLine) -> None:
    scn = scenario(line)
    plant, server = await serve_modbus(scn)
    conn = ModbusConnector(ModbusConfig.model_validate(config(scn, line)))
    try:
        assert "serial" in server.describe() and str(line.sim) in server.describe()
        await conn.connect()
        got = {r.machine: dict(r.fields) for r in await conn.poll(1)}
        assert_matches(plant, got, {"cnc-01", "pump-01", "belt-01"})
        # one request per unit, each answered by its own unit id on the shared line
        assert server.stats.requests == 3 and server.stats.exceptions == 0
        assert conn.health.connected and conn.health.failed_polls == 0
        # the next tick's values come over the same line
        plant.step()
        await server.publish(plant)
        got = {r.machine: dict(r.fields) for r in await conn.poll(2)}
        assert_matches(plant, got, {"cnc-01", "pump-01", "belt-01"})
    finally:
        await conn.close()
        await server.stop()


async def test_a_silent_unit_times_out_and_the_others_still_answer(line: SerialLine) -> None:
    # pump-01 loses communication from the start; unit 40 is on nobody's address plate: on a
    # serial line nobody answers either (no gateway to say exception 11)
    scn = scenario(line, faults=[{"machine": "pump-01", "type": "comm_loss", "start": 0,
                                  "duration": "1h"}], duration="2h")  # fmt: skip
    plant, server = await serve_modbus(scn)
    dev = config(scn, line, timeout_s=0.5)
    ghost = {**dev["machines"][0], "name": "ghost-01", "unit_id": 40}
    cfg = ModbusConfig.model_validate({**dev, "machines": [*dev["machines"], ghost]})
    conn = ModbusConnector(cfg)
    try:
        assert not plant.machines[1].online
        await conn.connect()
        t0 = time.monotonic()
        readings = await conn.poll(1)
        elapsed = time.monotonic() - t0
        got = {r.machine: dict(r.fields) for r in readings}
        assert_matches(plant, got, {"cnc-01", "belt-01"})
        assert server.stats.silenced == 2  # pump-01 and unit 40, one request each
        assert elapsed >= 2 * cfg.timeout_s  # both waited for their timeout
        assert conn.health.connected  # the line works: two units are silent, not the link
    finally:
        await conn.close()
        await server.stop()


async def test_line_gone_device_down_then_back_with_a_new_line(line: SerialLine) -> None:
    scn = scenario(line)
    plant, server = await serve_modbus(scn)
    cfg = ModbusConfig.model_validate(config(scn, line, interval_s=0.2, timeout_s=0.5,
                                             backoff_initial_s=0.2, backoff_max_s=1.0))  # fmt: skip
    conn = ModbusConnector(cfg)
    try:
        async with consuming(conn) as got:
            await wait_for(lambda: len(got) >= 6 and conn.health.connected, 5)
            line.cut()
            cut_at = time.monotonic()
            assert not line.sim.exists() and not line.agent.exists()
            await wait_for(lambda: not conn.health.connected, 3)
            assert conn.health.consecutive_failures >= 1
            failed_before = conn.health.failed_polls
            # a poll in flight at the cut has timed out by quiet_from; nothing comes after that
            quiet_from = cut_at + 2 * cfg.timeout_s
            await wait_for(lambda: conn.health.failed_polls >= failed_before + 2
                           and time.monotonic() > quiet_from + 0.5, 4)  # fmt: skip
            assert [r for t, r in got if t > quiet_from] == []
            assert not conn.health.connected
            # the same paths come back behind a new socat: both ends reopen by themselves
            plant.step()
            await server.publish(plant)
            line.start()
            back_at = time.monotonic()
            await wait_for(lambda: conn.health.connected and got[-1][0] > back_at, 8)
            assert conn.health.reconnects == 1
            await wait_for(lambda: len({r.machine for t, r in got if t > back_at}) == 3, 3)
            after = {}
            for t, r in got:
                if t > back_at:
                    after.setdefault(r.machine, dict(r.fields))
            assert_matches(plant, after, {"cnc-01", "pump-01", "belt-01"})
    finally:
        await server.stop()


async def test_missing_serial_port_is_a_clear_start_error(tmp_path: Path) -> None:
    scn = Scenario.model_validate({
        "name": "serial", "opcua": {"enabled": False}, "machines": [{"name": "m", "kind": "cnc"}],
        "modbus": {"transport": "serial", "serial_port": str(tmp_path / "ttyUSB9")},
    })  # fmt: skip
    with pytest.raises(ServerStartError) as info:
        await ModbusSimServer(Plant(scn), scn.modbus).start()
    assert str(info.value) == (
        f"Modbus server cannot open serial port {tmp_path / 'ttyUSB9'} (No such file or "
        f"directory); check modbus.serial_port in the scenario"
    )


def pty_refuses_parity_e(path: Path) -> bool:
    """Open ``path`` the way pymodbus does (settings, then ``timeout = 0``): refused?"""
    import termios

    import serial  # type: ignore[import-untyped]

    try:
        port = serial.serial_for_url(str(path), parity="E", timeout=3)
    except termios.error:
        return True
    try:
        port.timeout = 0
    except termios.error:
        return True
    finally:
        port.close()
    return False


async def test_line_settings_the_driver_refuses_are_reported_not_raised(line: SerialLine) -> None:
    """pyserial raises termios.error, not an OSError, when a driver refuses the settings.

    This kernel's ptys refuse parity E (a kernel that ignores it silently would simply connect):
    the connector reports the device unreachable with the reason, the simulator refuses to
    start with a one-line error, and nothing raises.
    """
    refused = pty_refuses_parity_e(line.agent)
    scn = scenario(line)
    conn = ModbusConnector(ModbusConfig.model_validate(config(scn, line, parity="E")))
    with structlog.testing.capture_logs() as logs:
        await conn.connect()
    await conn.close()
    errors = [e["error"] for e in logs if e["event"] == "device_unreachable"]
    if refused:
        assert errors == [f"cannot connect to {line.agent} (the serial driver refused 19200 "
                          f"baud, parity E: Invalid argument)"]  # fmt: skip
    else:
        assert errors == []
    sim = scn.model_copy(update={"modbus": scn.modbus.model_copy(update={"parity": "E"})})
    server = ModbusSimServer(Plant(sim), sim.modbus)
    if not refused:
        await server.start()
        await server.stop()
        return
    with pytest.raises(ServerStartError) as info:
        await server.start()
    assert str(info.value) == (
        f"Modbus server cannot set up serial port {line.sim} (the driver refused 19200 baud, "
        f"parity E: Invalid argument; a pty, such as socat makes, has no parity); check "
        f"modbus.baudrate and modbus.parity in the scenario"
    )


# -- the two commands, as separate processes ---------------------------------------------------


@pytest.fixture
def sim_on_line(line: SerialLine, tmp_path: Path) -> Iterator[tuple[SerialLine, str]]:
    """``factory-sim run`` on the demo scenario's machines, Modbus on the line's sim end."""
    scn = yaml.safe_load((CONFIGS / "scenarios" / "demo.yaml").read_text())
    scn["opcua"] = {"enabled": False}
    scn["modbus"] = {"transport": "serial", "serial_port": str(line.sim), **LINE}
    path = tmp_path / "scenario.yaml"
    path.write_text(yaml.safe_dump(scn))
    proc = start_sim(str(path), "--speed", "1", "--duration", "60", "--labels", os.devnull)
    try:
        yield line, wait_banner(proc)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=15)


def test_factory_sim_banner_and_agent_once_over_serial(
    sim_on_line: tuple[SerialLine, str], tmp_path: Path
) -> None:
    line, banner = sim_on_line
    demo = load_scenario(CONFIGS / "scenarios" / "demo.yaml")
    signals = sum(len(MODELS[m.kind].signals) for m in demo.machines)
    assert (f"  modbus: serial {line.sim} (19200 baud, 8N1, RTU), unit ids 1..5 (5 machines), "
            f"word order ABCD, {signals} signals\n") in banner  # fmt: skip
    serial = demo.modbus.model_copy(
        update={"transport": "serial", "serial_port": str(line.sim), **LINE}
    )
    dev = config(demo.model_copy(update={"modbus": serial}), line, name="line-rs485")
    cfg = yaml.safe_load((CONFIGS / "demo.yaml").read_text())
    cfg["devices"] = [dev]
    path = tmp_path / "agent.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = subprocess.run([*AGENT, "run", "-c", str(path), "--once", "--data-dir", str(tmp_path)],
                         cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert len(lines) == 5, out.stdout + out.stderr
    kinds = {m.name: m.kind for m in demo.machines}
    for text in lines:
        head, fields, stamp = text.split(" ")
        tags = dict(kv.split("=", 1) for kv in head.split(",")[1:])
        assert tags["device"] == "line-rs485" and tags["protocol"] == "modbus"
        assert tags["site"] == "haiphong"
        values = dict(kv.split("=", 1) for kv in fields.split(","))
        expected = MODELS[kinds[tags["machine"]]].signal_names()
        assert sorted(values) == sorted(expected), tags["machine"]
        assert all(math.isfinite(float(v)) for v in values.values())
        assert abs(int(stamp) - time.time_ns()) < 60e9  # the poll time, wall clock
    machines = sorted(text.split("machine=")[1].split(",")[0] for text in lines)
    assert machines == sorted(kinds)


def test_factory_sim_run_with_a_missing_serial_port_exits_2(tmp_path: Path) -> None:
    scn = {"name": "serial", "opcua": {"enabled": False}, "machines": [{"name": "m", "kind": "cnc"}],
           "modbus": {"transport": "serial", "serial_port": str(tmp_path / "ttyUSB9")}}  # fmt: skip
    path = tmp_path / "scenario.yaml"
    path.write_text(yaml.safe_dump(scn))
    out = subprocess.run([*SIM, "run", str(path), "--labels", os.devnull], cwd=ROOT,
                         capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert out.returncode == 2
    assert (
        f"cannot open serial port {tmp_path / 'ttyUSB9'} (No such file or directory)" in out.stderr
    )
    assert "Traceback" not in out.stderr
