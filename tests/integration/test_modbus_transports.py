"""RTU framing over TCP and Modbus/TCP Security (TLS), simulator to connector."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import yaml

from connectors.modbus import ModbusConfig, ModbusConnector
from simulators.agentconfig import device_section
from simulators.engine import Plant
from simulators.scenario import Scenario
from tests.certs import make_pki
from tests.conftest import serve_modbus

pytestmark = pytest.mark.integration


def scenario(modbus: dict[str, Any]) -> Scenario:
    return Scenario.model_validate({
        "name": "transports", "seed": 5, "opcua": {"enabled": False},
        "modbus": {"port": 0, **modbus},
        "machines": [{"name": "cnc-01", "kind": "cnc"}, {"name": "pump-01", "kind": "compressor"}],
    })  # fmt: skip


def config(scn: Scenario, port: int, **extra: Any) -> ModbusConfig:
    (dev,) = yaml.safe_load(device_section(scn, "modbus"))["devices"]
    return ModbusConfig.model_validate({**dev, "port": port, "timeout_s": 2.0, **extra})


async def read_all(cfg: ModbusConfig) -> dict[str, dict[str, Any]]:
    conn = ModbusConnector(cfg)
    await conn.connect()
    try:
        return {r.machine: dict(r.fields) for r in await conn.poll(1)}
    finally:
        await conn.close()


def assert_matches(plant: Plant, got: dict[str, dict[str, Any]]) -> None:
    assert set(got) == {m.name for m in plant.machines}
    for m in plant.machines:
        for s, v in zip(m.signals, m.values, strict=True):
            assert v is not None
            assert math.isclose(got[m.name][s.name], v, rel_tol=1e-6, abs_tol=1e-6)


@pytest.fixture
def pki(tmp_path: Path) -> Any:
    return make_pki(tmp_path / "pki")


async def test_rtu_frames_over_tcp() -> None:
    scn = scenario({"transport": "rtu_over_tcp"})
    plant, server = await serve_modbus(scn)
    try:
        cfg = config(scn, server.port)  # print-config says rtu_over_tcp itself
        assert cfg.transport == "rtu_over_tcp"
        assert_matches(plant, await read_all(cfg))
        # The same port spoken with MBAP framing gets nothing sensible back.
        conn = ModbusConnector(config(scn, server.port, timeout_s=0.5, transport="tcp"))
        await conn.connect()
        assert await conn.poll(1) == []
        await conn.close()
    finally:
        await server.stop()


async def test_tls_with_a_trusted_ca(pki: Any) -> None:
    ca, srv, _ = pki
    tls = {"certificate": srv.certificate, "private_key": srv.private_key}
    scn = scenario({"tls": tls})
    plant, server = await serve_modbus(scn)
    try:
        (dev,) = yaml.safe_load(device_section(scn, "modbus"))["devices"]
        assert dev["tls"] == {"ca_file": str(srv.certificate)}  # print-config's placeholder
        assert_matches(
            plant, await read_all(config(scn, server.port, tls={"ca_file": ca.certificate}))
        )
    finally:
        await server.stop()


async def test_tls_refuses_a_server_from_another_ca(pki: Any, tmp_path: Path) -> None:
    _, srv, _ = pki
    other_ca, _, _ = make_pki(tmp_path / "other", "someone else's CA")
    scn = scenario({"tls": {"certificate": srv.certificate, "private_key": srv.private_key}})
    _, server = await serve_modbus(scn)
    try:
        conn = ModbusConnector(config(scn, server.port, tls={"ca_file": other_ca.certificate}))
        await conn.connect()
        assert not conn.health.connected
        assert conn.health.consecutive_failures == 1
        await conn.close()
    finally:
        await server.stop()


async def test_mutual_tls_needs_the_client_certificate(pki: Any) -> None:
    ca, srv, cli = pki
    tls = {"certificate": srv.certificate, "private_key": srv.private_key,
           "client_ca": ca.certificate}  # fmt: skip
    scn = scenario({"tls": tls})
    plant, server = await serve_modbus(scn)
    try:
        with_cert = {"ca_file": ca.certificate, "cert_file": cli.certificate,
                     "key_file": cli.private_key}  # fmt: skip
        assert_matches(plant, await read_all(config(scn, server.port, tls=with_cert)))
        without = await read_all(config(scn, server.port, tls={"ca_file": ca.certificate}))
        assert without == {}
    finally:
        await server.stop()
