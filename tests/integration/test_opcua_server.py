"""The OPC UA simulator against a real asyncua client on a free loopback port.

The plant is stepped by hand (``plant.step()`` then ``await server.publish(plant)``), never by the
wall-clock loop, so every comparison is against known values.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from asyncua import Client, Node, ua
from asyncua.crypto.security_policies import (
    SecurityPolicyAes128Sha256RsaOaep,
    SecurityPolicyAes256Sha256RsaPss,
    SecurityPolicyBasic256Sha256,
)

from simulators.engine import Plant
from simulators.opcua_security import (
    OpcUaSetupError,
    certificate_uris,
    generate_certificate,
    load_passwords,
    read_certificate,
    server_certificate,
)
from simulators.opcua_server import OpcUaPortInUseError, OpcUaSimServer, node_id, node_path
from simulators.scenario import Scenario
from simulators.sensors import BAD_NO_COMMUNICATION, BAD_SENSOR_FAILURE
from tests.conftest import make_scenario, serving_opcua

pytestmark = pytest.mark.integration

SITE = "acme"
NAMESPACE = "urn:factory-agent:test"
CLIENT_URI = "urn:factory-agent:test-client"
PASSWORD_ENV = "FACTORY_AGENT_TEST_OPCUA_PASSWORD"  # noqa: S105 (a variable's name)
TIMEOUT_S = 5.0
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def plant_scenario(**opcua: Any) -> Scenario:
    """Two CNCs on two lines (60 machine seconds per tick) with a sensor failure and a comm loss."""
    return make_scenario(
        site=SITE,
        machines=[
            {"name": "cnc-01", "kind": "cnc", "line": "line-1"},
            {"name": "cnc-02", "kind": "cnc", "line": "line-2"},
        ],
        faults=[
            {"machine": "cnc-01", "type": "sensor_failure", "signal": "bearing_temperature",
             "start": "5m", "duration": "3m"},
            {"machine": "cnc-02", "type": "comm_loss", "start": "6m", "duration": "2m"},
        ],
        opcua={"namespace": NAMESPACE, **opcua},
    )  # fmt: skip


@pytest.fixture
async def served() -> AsyncIterator[tuple[Plant, OpcUaSimServer]]:
    """A plant served without security, anonymous, on a free port."""
    plant = Plant(plant_scenario(security=["None"]))
    async with serving_opcua(plant) as server:
        yield plant, server


@pytest.fixture
async def client(served: tuple[Plant, OpcUaSimServer]) -> AsyncIterator[Client]:
    async with Client(served[1].endpoint, timeout=TIMEOUT_S) as c:
        yield c


@pytest.fixture
def client_cert(tmp_path: Path) -> tuple[Path, Path]:
    """A client application certificate made for this test only."""
    cert, key = tmp_path / "client-cert.der", tmp_path / "client-key.pem"
    generate_certificate(cert, key, CLIENT_URI, client=True)
    return cert, key


def signal_nodes(client: Client, server: OpcUaSimServer, plant: Plant) -> list[Node]:
    """Every signal's node, in plant order, addressed by its namespace-independent id."""
    idx = server.namespace_index
    return [
        client.get_node(f"ns={idx};s={node_path(SITE, m.spec.line, m.name, s.name)}")
        for m in plant.machines
        for s in m.signals
    ]


def plant_values(plant: Plant) -> list[tuple[float | None, int]]:
    return [(v, s) for m in plant.machines for v, s in zip(m.values, m.status, strict=True)]


async def advance(plant: Plant, server: OpcUaSimServer, until: Callable[[], bool]) -> None:
    """Step and publish until ``until()`` holds (bounded, so a wrong scenario fails fast)."""
    for _ in range(100):
        plant.step()
        await server.publish(plant)
        if until():
            return
    raise AssertionError("condition never reached")


async def secure_client(
    server: OpcUaSimServer,
    cert: tuple[Path, Path],
    policy: type[Any],
    mode: ua.MessageSecurityMode,
    *,
    user: str | None = None,
    password: str | None = None,
) -> Client:
    c = Client(server.endpoint, timeout=TIMEOUT_S)
    c.application_uri = CLIENT_URI
    await c.set_security(policy, str(cert[0]), str(cert[1]), mode=mode)
    if user is not None:
        c.set_user(user)
        c.set_password(password or "")
    return c


# -- address space and values ----------------------------------------------------------------


async def test_browse_finds_every_signal_under_site_line_machine(
    served: tuple[Plant, OpcUaSimServer], client: Client
) -> None:
    plant, server = served
    idx = server.namespace_index
    assert await client.get_namespace_index(NAMESPACE) == idx
    found: dict[tuple[str, str, str], Node] = {}
    site = await client.nodes.objects.get_child(f"{idx}:{SITE}")
    for line in await site.get_children():
        line_name = (await line.read_browse_name()).Name
        for machine in await line.get_children():
            machine_name = (await machine.read_browse_name()).Name
            for var in await machine.get_children():
                signal = (await var.read_browse_name()).Name
                found[(line_name, machine_name, signal)] = var
    expected = {(m.spec.line, m.name, s.name) for m in plant.machines for s in m.signals}
    assert set(found) == expected
    for (line, machine, signal), var in found.items():
        nsu = ua.NodeId.from_string(node_id(NAMESPACE, SITE, line, machine, signal))
        assert nsu.Identifier == var.nodeid.Identifier == node_path(SITE, line, machine, signal)
        assert var.nodeid.NamespaceIndex == idx


async def test_variables_are_read_only_analog_items_with_units_and_range(
    served: tuple[Plant, OpcUaSimServer], client: Client
) -> None:
    plant, server = served
    cnc = plant.machines[0]
    for node, sig in zip(signal_nodes(client, server, plant), cnc.signals, strict=False):
        assert await node.read_data_type() == ua.NodeId(ua.ObjectIds.Double)
        assert await node.read_type_definition() == ua.NodeId(ua.ObjectIds.AnalogItemType)
        assert (await node.read_description()).Text.startswith(sig.description)
        access = await node.read_attribute(ua.AttributeIds.AccessLevel)
        assert access.Value.Value == ua.AccessLevel.CurrentRead.mask
        rng = await (await node.get_child("0:EURange")).read_value()
        assert (rng.Low, rng.High) == (sig.low, sig.high)
        eu = await (await node.get_child("0:EngineeringUnits")).read_value()
        assert eu.DisplayName.Text == sig.unit
    by_name = dict(zip(cnc.model.signal_names(), signal_nodes(client, server, plant), strict=False))
    eu = await (await by_name["bearing_temperature"].get_child("0:EngineeringUnits")).read_value()
    assert eu.UnitId == 4408652  # "CEL" per OPC UA Part 8 UNECE mapping
    assert eu.NamespaceUri == "http://www.opcfoundation.org/UA/units/un/cefact"
    with pytest.raises(ua.UaStatusCodeError):
        await by_name["spindle_speed"].write_value(ua.Variant(1.0, ua.VariantType.Double))


async def test_values_and_source_timestamps_follow_the_plant(
    served: tuple[Plant, OpcUaSimServer], client: Client
) -> None:
    plant, server = served
    nodes = signal_nodes(client, server, plant)
    for _ in range(3):
        before = plant_values(plant)
        plant.step()
        await server.publish(plant)
        after = plant_values(plant)
        dvs = await client.read_attributes(nodes)
        changed = 0
        for dv, (v0, _), (v, status) in zip(dvs, before, after, strict=True):
            assert status == 0  # no fault is active yet
            assert dv.StatusCode.is_good()
            assert dv.Value.Value == v
            src_us = (dv.SourceTimestamp - EPOCH) // timedelta(microseconds=1)
            if v != v0:
                changed += 1
                assert src_us == plant.time_ns // 1000
            else:  # unchanged: SourceTimestamp stays at the last change
                assert src_us < plant.time_ns // 1000
            assert dv.ServerTimestamp is not None
        assert changed > len(nodes) // 2


async def test_sensor_failure_shows_bad_status_then_good(
    served: tuple[Plant, OpcUaSimServer], client: Client
) -> None:
    plant, server = served
    cnc = plant.machines[0]
    i = cnc.model.signal_names().index("bearing_temperature")
    node = signal_nodes(client, server, plant)[i]
    await advance(plant, server, lambda: cnc.status[i] != 0)
    dv = await node.read_data_value(raise_on_bad_status=False)
    assert dv.StatusCode.value == BAD_SENSOR_FAILURE
    assert dv.Value.Value is None  # no invented value
    await advance(plant, server, lambda: cnc.status[i] == 0)
    dv = await node.read_data_value()
    assert dv.StatusCode.is_good()
    assert dv.Value.Value == cnc.values[i]


async def test_comm_loss_shows_bad_no_communication_on_every_signal(
    served: tuple[Plant, OpcUaSimServer], client: Client
) -> None:
    plant, server = served
    cnc2 = plant.machines[1]
    await advance(plant, server, lambda: not cnc2.online)
    nodes = signal_nodes(client, server, plant)[len(plant.machines[0].signals) :]
    dvs = await client.read_attributes(nodes)
    assert [dv.StatusCode.value for dv in dvs] == [BAD_NO_COMMUNICATION] * len(nodes)
    await advance(plant, server, lambda: cnc2.online)
    dvs = await client.read_attributes(nodes)
    assert all(dv.StatusCode.is_good() for dv in dvs)


async def test_subscription_receives_data_changes(
    served: tuple[Plant, OpcUaSimServer], client: Client
) -> None:
    plant, server = served
    nodes = signal_nodes(client, server, plant)
    latest: dict[Any, object] = {}
    changed = asyncio.Event()

    class Handler:
        def datachange_notification(self, node: Node, val: object, data: object) -> None:
            latest[node.nodeid] = val
            changed.set()

    sub = await client.create_subscription(50, Handler())
    await sub.subscribe_data_change(nodes)
    plant.step()
    await server.publish(plant)
    want = {n.nodeid: v for n, (v, _) in zip(nodes, plant_values(plant), strict=True)}

    async def all_arrived() -> None:
        while any(latest.get(k) != v for k, v in want.items()):
            changed.clear()
            await changed.wait()

    await asyncio.wait_for(all_arrived(), TIMEOUT_S)
    await sub.delete()


# -- security and logins ---------------------------------------------------------------------


@pytest.fixture
async def secure_server(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> AsyncIterator[OpcUaSimServer]:
    """Only Basic256Sha256 SignAndEncrypt, no anonymous access, two users."""
    monkeypatch.setenv(PASSWORD_ENV, "s3cret-env")
    (tmp_path / "pw").write_text("s3cret-file\n")
    plant = Plant(
        plant_scenario(
            security=["Basic256Sha256_SignAndEncrypt"],
            allow_anonymous=False,
            users=[
                {"name": "operator", "password_env": PASSWORD_ENV},
                {"name": "engineer", "password_file": str(tmp_path / "pw")},
            ],
            cert_dir=str(tmp_path / "pki"),
        )
    )
    async with serving_opcua(plant) as server:
        yield server


async def test_sign_and_encrypt_with_username_password(
    secure_server: OpcUaSimServer, client_cert: tuple[Path, Path]
) -> None:
    mode = ua.MessageSecurityMode.SignAndEncrypt
    for user, password in (("operator", "s3cret-env"), ("engineer", "s3cret-file")):
        c = await secure_client(
            secure_server,
            client_cert,
            SecurityPolicyBasic256Sha256,
            mode,
            user=user,
            password=password,
        )
        async with c:
            path = node_path(SITE, "line-1", "cnc-01", "spindle_speed")
            value = await c.get_node(f"ns={secure_server.namespace_index};s={path}").read_value()
            assert value == secure_server.plant.machines[0].values[0]


async def test_wrong_password_and_anonymous_are_refused(
    secure_server: OpcUaSimServer, client_cert: tuple[Path, Path]
) -> None:
    mode = ua.MessageSecurityMode.SignAndEncrypt
    for user, password in (("operator", "wrong"), ("nobody", "s3cret-env"), (None, None)):
        c = await secure_client(
            secure_server,
            client_cert,
            SecurityPolicyBasic256Sha256,
            mode,
            user=user,
            password=password,
        )
        with pytest.raises(ua.UaStatusCodeError) as err:
            await c.connect()
        # anonymous is not even offered on the endpoint, so that one is rejected as a token
        assert err.value.code in (
            ua.StatusCodes.BadUserAccessDenied,
            ua.StatusCodes.BadIdentityTokenRejected,
        )


async def test_policy_not_offered_is_refused(
    secure_server: OpcUaSimServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # asyncua's client refuses by itself: the server lists no None endpoint ...
    with pytest.raises(ua.UaError, match="No matching endpoints"):
        await Client(secure_server.endpoint, timeout=TIMEOUT_S).connect()

    # ... and a client that ignores the endpoint list is refused by the server.
    def any_endpoint(*_: object) -> ua.EndpointDescription:
        token = ua.UserTokenPolicy(PolicyId="username", TokenType=ua.UserTokenType.UserName)
        return ua.EndpointDescription(UserIdentityTokens=[token])

    monkeypatch.setattr(Client, "find_endpoint", staticmethod(any_endpoint))
    c = Client(secure_server.endpoint, timeout=TIMEOUT_S)
    c.set_user("operator")
    c.set_password("s3cret-env")
    with pytest.raises(ua.UaStatusCodeError) as err:
        await c.connect()
    assert err.value.code == ua.StatusCodes.BadUserAccessDenied


async def test_every_listed_policy_works(client_cert: tuple[Path, Path]) -> None:
    policies = {
        "Aes256_Sha256_RsaPss_Sign": SecurityPolicyAes256Sha256RsaPss,
        "Aes256_Sha256_RsaPss_SignAndEncrypt": SecurityPolicyAes256Sha256RsaPss,
        "Aes128_Sha256_RsaOaep_Sign": SecurityPolicyAes128Sha256RsaOaep,
        "Aes128_Sha256_RsaOaep_SignAndEncrypt": SecurityPolicyAes128Sha256RsaOaep,
        "Basic256Sha256_Sign": SecurityPolicyBasic256Sha256,
    }
    plant = Plant(plant_scenario(security=list(policies)))
    server = OpcUaSimServer(plant, port=0)
    await server.start()
    try:
        for name, policy in policies.items():
            mode = getattr(ua.MessageSecurityMode, name.rsplit("_", 1)[1])
            async with await secure_client(server, client_cert, policy, mode) as c:
                nodes = signal_nodes(c, server, plant)
                assert await c.read_values(nodes) == [v for v, _ in plant_values(plant)], name
    finally:
        await server.stop()


# -- setup errors and certificates -----------------------------------------------------------


async def test_port_in_use_names_the_port_and_field(caplog: pytest.LogCaptureFixture) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        server = OpcUaSimServer(Plant(plant_scenario(security=["None"])), port=port)
        with pytest.raises(OpcUaPortInUseError, match=rf"opcua\.port: {port} is already in use"):
            await server.start()
        await server.stop()
    # the clear exception replaces asyncua's own traceback at ERROR level
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_unset_password_env_skips_the_user_or_fails_naming_the_field(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(PASSWORD_ENV, raising=False)
    users = [{"name": "operator", "password_env": PASSWORD_ENV}]
    logins = load_passwords(plant_scenario(users=users).opcua)
    assert logins.passwords == {}
    assert len(logins.skipped) == 1
    assert logins.skipped[0].startswith("opcua.users[0].password_env: environment variable")
    assert PASSWORD_ENV in logins.skipped[0]

    scn = plant_scenario(users=users, allow_anonymous=False)
    server = OpcUaSimServer(Plant(scn), port=0)
    field = r"opcua\.users\[0\]\.password_env"
    with pytest.raises(OpcUaSetupError, match=rf"nobody can log in \({field}: .*{PASSWORD_ENV}"):
        await server.start()


def test_generated_certificate_is_kept_and_given_one_sets_the_uri(tmp_path: Path) -> None:
    spec = plant_scenario(cert_dir=str(tmp_path / "pki")).opcua
    first = server_certificate(spec, "urn:factory-agent:simulator:acme")
    again = server_certificate(spec, "urn:factory-agent:simulator:acme")
    assert first.generated
    assert not again.generated
    assert again.certificate.read_bytes() == first.certificate.read_bytes()
    assert certificate_uris(read_certificate(first.certificate)) == [
        "urn:factory-agent:simulator:acme"
    ]
    other_site = server_certificate(spec, "urn:factory-agent:simulator:other")
    assert other_site.generated  # the URI must match, so it is made again

    cert, key = tmp_path / "own.der", tmp_path / "own.pem"
    generate_certificate(cert, key, "urn:example:own-server")
    given = plant_scenario(certificate=str(cert), private_key=str(key)).opcua
    assert server_certificate(given, "urn:ignored").application_uri == "urn:example:own-server"
