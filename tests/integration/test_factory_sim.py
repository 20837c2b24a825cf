"""``factory-sim`` as a new user meets it: run the demo, read every signal from print-config alone.

The clients here use only asyncua and pymodbus as their documentation shows, plus the
``print-config`` output: no project code on the client side, so what passes here is what a plant
engineer can do with the README.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from asyncua import Client, ua
from pymodbus.client import AsyncModbusTcpClient

from tests.conftest import CONFIGS, ROOT, SIM, free_port, start_sim, wait_banner

pytestmark = pytest.mark.integration

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
DEMO = CONFIGS / "scenarios" / "demo.yaml"


@pytest.fixture
def demo_sim() -> Iterator[subprocess.Popen[str]]:
    proc = start_sim(str(DEMO), "--duration", "20", "--labels", os.devnull)
    try:
        wait_banner(proc)
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=15)  # also closes the pipes


def print_config(*args: str) -> dict[str, Any]:
    out = subprocess.run(
        [*SIM, "print-config", str(DEMO), *args], cwd=ROOT, check=True, capture_output=True,
        text=True,
    ).stdout  # fmt: skip
    doc: dict[str, Any] = yaml.safe_load(out)
    return doc


async def opcua_snapshot(client: Client, nodes: list[dict[str, Any]]) -> tuple[int, list[float]]:
    """Read a machine's nodes in one request: (source timestamp in ms, values)."""
    ids = []
    for n in nodes:
        uri, ident = n["node_id"].removeprefix("nsu=").split(";s=")
        idx = await client.get_namespace_index(uri)
        ids.append(client.get_node(ua.NodeId(ident, idx)))
    dvs = await client.read_attributes(ids, ua.AttributeIds.Value)
    stamps = {(dv.SourceTimestamp - EPOCH) // timedelta(milliseconds=1) for dv in dvs}
    assert len(stamps) == 1, "a machine's values share one source timestamp"
    return stamps.pop(), [dv.Value.Value for dv in dvs]


async def modbus_snapshot(
    client: AsyncModbusTcpClient, unit: int, regs: list[dict[str, Any]]
) -> tuple[int, list[float]]:
    """Timestamp registers, the float block, the timestamp again: a consistent snapshot."""
    start = min(r["address"] for r in regs)
    count = max(r["address"] for r in regs) + 2 - start
    for _ in range(20):
        t1 = await client.read_holding_registers(1, count=4, device_id=unit)
        block = await client.read_holding_registers(start, count=count, device_id=unit)
        t2 = await client.read_holding_registers(1, count=4, device_id=unit)
        if t1.registers == t2.registers:
            ts = client.convert_from_registers(t1.registers, client.DATATYPE.UINT64)
            values = [
                client.convert_from_registers(
                    block.registers[r["address"] - start : r["address"] - start + 2],
                    client.DATATYPE.FLOAT32,
                )
                for r in regs
            ]
            return int(ts), [float(v) for v in values]
    raise AssertionError("values kept changing between reads")


async def test_demo_reads_the_same_over_both_protocols(demo_sim: subprocess.Popen[str]) -> None:
    devices = {d["type"]: d for d in print_config()["devices"]}
    opc, mb = devices["opcua"], devices["modbus"]
    assert opc["endpoint"] == "opc.tcp://127.0.0.1:4840"
    assert (mb["host"], mb["port"]) == ("127.0.0.1", 5020)
    machines = {m["name"]: m for m in mb["machines"]}
    async with Client(opc["endpoint"], timeout=5) as ua_client:
        mb_client = AsyncModbusTcpClient(mb["host"], port=mb["port"], timeout=2)
        await mb_client.connect()
        try:
            for m in opc["machines"]:
                regs = machines[m["name"]]["registers"]
                assert [r["field"] for r in regs] == [n["field"] for n in m["nodes"]]
                for _ in range(50):  # until both reads fall in the same 100 ms tick
                    ts_ua, via_ua = await opcua_snapshot(ua_client, m["nodes"])
                    ts_mb, via_mb = await modbus_snapshot(
                        mb_client, machines[m["name"]]["unit_id"], regs
                    )
                    if ts_ua == ts_mb:
                        break
                    await asyncio.sleep(0.01)
                else:
                    pytest.fail(f"{m['name']}: never read the same tick over both protocols")
                for node, a, b in zip(m["nodes"], via_ua, via_mb, strict=True):
                    assert a == pytest.approx(b, rel=1e-6, abs=1e-6), (m["name"], node["field"])
                    assert isinstance(a, float)
        finally:
            mb_client.close()
    assert demo_sim.poll() is None, "still serving"


def test_run_ends_by_itself_and_writes_labels(tmp_path: Path) -> None:
    labels = tmp_path / "labels.jsonl"
    # 30 minutes of the demo in 3 s: four of its five faults start.
    proc = start_sim(str(DEMO), "--speed", "600", "--duration", "3", "--labels", str(labels),
                     "--opcua-port", "0", "--modbus-port", "0")  # fmt: skip
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "modbus: tcp://127.0.0.1:" in out and "OPC UA: opc.tcp://127.0.0.1:" in out
    rows = [json.loads(line) for line in labels.read_text().splitlines()]
    assert [(r["machine"], r["fault"]) for r in rows] == [
        ("conveyor-01", "overload"),
        ("cnc-01", "bearing_wear"),
        ("compressor-01", "leak"),
        ("imm-01", "stuck"),
    ]
    assert rows[3]["signals"] == ["mould_temperature"]


def test_port_in_use_is_a_clear_error_with_exit_code_2() -> None:
    import socket

    port = free_port()
    with socket.create_server(("127.0.0.1", port)):
        proc = start_sim(str(DEMO), "--modbus-port", str(port), "--opcua-port", "0",
                         "--duration", "5")  # fmt: skip
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2
    assert f"127.0.0.1:{port}" in err and "modbus.port" in err
    assert "Traceback" not in err


def test_models_lists_every_kind_and_signal(capsys: pytest.CaptureFixture[str]) -> None:
    from simulators.cli import main
    from simulators.models import MODELS

    assert main(["models", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert set(doc) == set(MODELS)
    for kind, model in MODELS.items():
        assert [s["name"] for s in doc[kind]["signals"]] == list(model.signal_names())
        assert all(s["unit"] for s in doc[kind]["signals"])
