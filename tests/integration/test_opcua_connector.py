"""The OPC UA connector against the OPC UA simulator: values, security, faults and reconnects.

The plant is stepped by hand (``plant.step()`` then ``await server.publish(plant)``) wherever
values are compared, and every wait is for a condition, with a timeout.
"""

from __future__ import annotations

import asyncio
import math
import shutil
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import yaml
from asyncua import ua
from asyncua.ua.object_ids import ObjectIds

from connectors.base import ConnectorError
from connectors.opcua import OpcUaConfig, OpcUaConnector, browse
from connectors.types import QualityLevel, Reading
from simulators.agentconfig import device_section
from simulators.engine import Plant
from simulators.opcua_security import CERT_FILE
from simulators.opcua_server import OpcUaSimServer
from simulators.scenario import Scenario, load_scenario
from simulators.sensors import BAD_SENSOR_FAILURE
from tests.conftest import CONFIGS, free_port
from tests.faultproxy import FaultProxy

# One event loop for the module, so the two simulator servers (2 s to start each) are shared.
pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="module")]

PASSWORD_ENV = "FACTORY_SIM_OPERATOR_PASSWORD"  # noqa: S105 (a variable's name, from demo.yaml)
NAMESPACE = "urn:factory-agent:simulator"


def demo(**changes: Any) -> Scenario:
    """The demo scenario on a free port, with ``changes`` to its top level or ``opcua`` section."""
    data = load_scenario(CONFIGS / "scenarios" / "demo.yaml").model_dump()
    data["opcua"].update(port=0, **changes.pop("opcua", {}))
    data.update(changes)
    return Scenario.model_validate(data)


def device(scn: Scenario, endpoint: str, pki: Path, **overrides: Any) -> OpcUaConfig:
    """What ``factory-sim print-config`` says for ``scn``, pointed at ``endpoint``."""
    (dev,) = yaml.safe_load(device_section(scn, protocols="opcua"))["devices"]
    dev.update({"endpoint": endpoint, "pki_dir": str(pki), "timeout_s": 1.0, **overrides})
    return OpcUaConfig.model_validate(dev)


@asynccontextmanager
async def serving(scn: Scenario, port: int = 0) -> AsyncIterator[tuple[Plant, OpcUaSimServer]]:
    plant = Plant(scn)
    server = OpcUaSimServer(plant, port=port)
    await server.start()
    try:
        yield plant, server
    finally:
        await server.stop()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def served() -> AsyncIterator[tuple[Plant, OpcUaSimServer]]:
    """The demo plant, anonymous and unsecured allowed; tests compare with its current values."""
    async with serving(demo()) as both:
        yield both


class Collector:
    """Consumes ``readings()`` in a task; remembers the latest (value, time) of every field."""

    def __init__(self, conn: OpcUaConnector) -> None:
        self.readings: list[Reading] = []
        self.latest: dict[tuple[str, str], tuple[Any, int]] = {}
        self._changed = asyncio.Event()
        self.task = asyncio.create_task(self._run(conn))

    async def _run(self, conn: OpcUaConnector) -> None:
        async for r in conn.readings():
            self.readings.append(r)
            for name, value in r.fields.items():
                self.latest[(r.machine, name)] = (value, r.time_ns)
            self._changed.set()

    async def wait(self, condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
        async def until() -> None:
            while not condition():
                self._changed.clear()
                await self._changed.wait()

        await asyncio.wait_for(until(), timeout_s)

    async def wait_values(self, want: dict[tuple[str, str], Any]) -> None:
        """Until the latest value of every field in ``want`` equals it."""
        await self.wait(lambda: all(self.latest.get(k, (None,))[0] == v for k, v in want.items()))


@asynccontextmanager
async def collecting(conn: OpcUaConnector) -> AsyncIterator[Collector]:
    got = Collector(conn)
    try:
        yield got
    finally:
        await conn.close()
        await asyncio.wait_for(got.task, 5)


def plant_values(plant: Plant) -> dict[tuple[str, str], float | None]:
    return {
        (m.name, s.name): v
        for m in plant.machines
        for s, v in zip(m.signals, m.values, strict=True)
    }


def retried(conn: OpcUaConnector, times: int) -> bool:
    """Whether more than ``times`` monitored-item creations were asked for."""
    return conn.stats.requests["CreateMonitoredItemsRequest"] > times


def publish_loops() -> int:
    """asyncua publish loops alive in this event loop (each keeps one publish request out)."""
    return sum(
        getattr(t.get_coro(), "__qualname__", "") == "UaSession._publish_loop"
        for t in asyncio.all_tasks()
        if not t.done()
    )


async def wait_for(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    """Poll a condition that no event announces (connection state)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


async def set_limit(server: OpcUaSimServer, name: str, value: int) -> None:
    """Lower one of the server's OperationLimits (asyncua states 10000 for each)."""
    assert server._server is not None
    oid = getattr(ObjectIds, f"Server_ServerCapabilities_OperationLimits_{name}")
    await server._server.get_node(ua.NodeId(oid)).write_value(
        ua.Variant(value, ua.VariantType.UInt32)
    )


# -- values, units, timestamps -------------------------------------------------------------------


async def test_every_demo_signal_by_subscription(
    served: tuple[Plant, OpcUaSimServer], tmp_path: Path
) -> None:
    plant, server = served
    await set_limit(server, "MaxMonitoredItemsPerCall", 7)
    conn = OpcUaConnector(device(plant.scenario, server.endpoint, tmp_path, interval_s=0.1))
    await conn.connect()
    signals = sum(len(m.signals) for m in plant.machines)
    assert conn.stats.requests["CreateMonitoredItemsRequest"] == math.ceil(signals / 7)
    limits = conn._client.uaclient.protocol._connection._limits  # type: ignore[union-attr]
    assert limits.max_message_size == conn.config.max_message_bytes  # bounded, unlike asyncua's
    async with collecting(conn) as got:
        for _ in range(3):
            before = plant_values(plant)
            plant.step()
            await server.publish(plant)
            want = plant_values(plant)
            await got.wait_values(want)
            for key, value in want.items():
                if value != before[key]:  # changed now: stamped with this tick's source time
                    assert got.latest[key] == (value, plant.time_ns), key
    for m in plant.machines:
        assert {s.name: s.unit for s in m.signals} == {
            name: info.unit for name, info in conn.signals[m.name].items()
        }
    r = got.readings[-1]
    assert r.tags["protocol"] == "opcua" and r.tags["device"] == "demo-opcua"
    assert r.tags["site"] == "haiphong" and r.tags["machine"] == r.machine
    assert not any(r.quality for r in got.readings)
    snap = conn.health.snapshot()
    assert snap["reconnects"] == 0 and snap["rtt_median_s"] > 0


async def test_every_demo_signal_by_polling_split_by_max_nodes_per_read(
    served: tuple[Plant, OpcUaSimServer], tmp_path: Path
) -> None:
    plant, server = served
    await set_limit(server, "MaxNodesPerRead", 7)
    conn = OpcUaConnector(device(plant.scenario, server.endpoint, tmp_path, mode="poll"))
    await conn.connect()
    try:
        plant.step()
        await server.publish(plant)
        before = conn.stats.requests["ReadRequest"]
        readings = await conn.poll()
        signals = sum(len(m.signals) for m in plant.machines)
        assert conn.stats.requests["ReadRequest"] - before == math.ceil(signals / 7)
        assert [r.machine for r in readings] == [m.name for m in plant.machines]
        for r, m in zip(readings, plant.machines, strict=True):
            assert r.time_ns == plant.time_ns  # the newest source timestamp of the machine
            assert r.fields == dict(zip(m.model.signal_names(), m.values, strict=True))
            assert not r.quality
        async with collecting(conn) as got:  # and the poll loop delivers the same
            await got.wait(lambda: len(got.latest) == signals)
            assert {k: v for k, (v, _) in got.latest.items()} == plant_values(plant)
    finally:
        await conn.close()
    assert conn.health.snapshot()["polls"] >= 2


async def test_browse_lists_signals_with_ids_paths_types_and_units(
    served: tuple[Plant, OpcUaSimServer],
) -> None:
    plant, server = served
    rows = {row.path: row for row in await browse(server.endpoint, depth=4, timeout_s=2.0)}
    for m in plant.machines:
        for s in m.signals:
            row = rows[f"/Objects/haiphong/{m.spec.line}/{m.name}/{s.name}"]
            assert row.node_id == f"nsu={NAMESPACE};s=haiphong/{m.spec.line}/{m.name}/{s.name}"
            assert (row.node_class, row.data_type, row.unit) == ("Variable", "Double", s.unit)
    assert rows["/Objects/haiphong"].node_class == "Object"
    assert not any(p.startswith("/Objects/Server") for p in rows)  # diagnostics left out
    assert not any(p.endswith("/EURange") for p in rows)  # properties left out


async def test_browse_paths_discovery_and_failed_nodes_isolated(
    served: tuple[Plant, OpcUaSimServer], tmp_path: Path
) -> None:
    plant, server = served
    dev = device(plant.scenario, server.endpoint, tmp_path, interval_s=0.1, node_retry_s=0.2)
    data = dev.model_dump(mode="json")
    cnc = data["machines"][0]
    cnc["nodes"] = [
        {"field": "speed", "node_id": "/Objects/haiphong/line-1/cnc-01/spindle_speed"},
        {
            "field": "still",
            "node_id": f"nsu={NAMESPACE};s=haiphong/line-1/cnc-01/spindle_speed",
            "deadband_abs": 1e9,
        },  # changes smaller than this are not reported
        {
            "field": "load",
            "node_id": f"/Objects/{{{NAMESPACE}}}haiphong/line-1/cnc-01/2:spindle_load",
        },
        {"field": "missing", "node_id": f"nsu={NAMESPACE};s=haiphong/line-1/cnc-01/nope"},
        {"field": "no_namespace", "node_id": "nsu=urn:nobody;s=x"},
        {"field": "no_path", "node_id": "/Objects/haiphong/line-9/cnc-01"},
    ]
    cnc["discover"] = {"root": f"nsu={NAMESPACE};s=haiphong/line-1/cnc-01", "include": ["*temp*"],
                       "exclude": ["coolant*"]}  # fmt: skip
    conn = OpcUaConnector(OpcUaConfig.model_validate(data))
    await conn.connect()
    cnc_plant = plant.machines[0]
    created = conn.stats.requests["CreateMonitoredItemsRequest"]
    async with collecting(conn) as got:
        for i in range(8):  # several publishes, and a retry of the failed nodes after each
            plant.step()
            await server.publish(plant)
            value = dict(zip(cnc_plant.model.signal_names(), cnc_plant.values, strict=True))
            await got.wait_values({
                ("cnc-01", "speed"): value["spindle_speed"],
                ("cnc-01", "bearing_temperature"): value["bearing_temperature"],
            })  # fmt: skip
            # a retry of "missing" (it resolves, but its monitored item is refused) is a request
            await wait_for(partial(retried, conn, created + i))
    assert got.latest[("cnc-01", "load")][0] == value["spindle_load"]
    assert sum("still" in r.fields for r in got.readings) == 1  # the initial value only
    assert sum("speed" in r.fields for r in got.readings) > 5
    assert set(conn.signals["cnc-01"]) >= {"speed", "bearing_temperature"}
    assert "coolant_temperature" not in conn.signals["cnc-01"]
    assert conn.signals["cnc-01"]["bearing_temperature"].unit == "°C"  # from EngineeringUnits
    bad = [(f, r.quality[f]) for r in got.readings for f in r.quality]
    assert sorted((f, q.text) for f, q in bad) == [
        ("missing", "BadNodeIdUnknown"),
        ("no_namespace", "BadNodeIdUnknown"),
        ("no_path", "BadNoMatch"),
    ]  # each once, although retried several times
    assert all(q.level is QualityLevel.BAD for _, q in bad)


# -- faults and reconnection ---------------------------------------------------------------------


async def test_sensor_failure_is_bad_with_no_value_then_good_again(tmp_path: Path) -> None:
    fault = {"machine": "cnc-01", "type": "sensor_failure", "signal": "coolant_flow",
             "start": "3s", "duration": "4s"}  # fmt: skip
    async with serving(demo(faults=[fault])) as (plant, server):
        conn = OpcUaConnector(device(plant.scenario, server.endpoint, tmp_path, interval_s=0.1))
        await conn.connect()
        cnc = plant.machines[0]
        i = cnc.model.signal_names().index("coolant_flow")
        key = ("cnc-01", "coolant_flow")
        async with collecting(conn) as got:
            while cnc.status[i] == 0:
                plant.step()
                await server.publish(plant)
            await got.wait(lambda: got.latest.get(key, (0,))[0] is None)
            bad = next(r for r in reversed(got.readings) if "coolant_flow" in r.quality)
            q = bad.quality["coolant_flow"]
            assert (q.level, q.code, q.text) == (QualityLevel.BAD, BAD_SENSOR_FAILURE,
                                                 "BadSensorFailure")  # fmt: skip
            assert bad.time_ns == plant.time_ns
            while cnc.status[i] != 0:
                plant.step()
                await server.publish(plant)
            await got.wait(lambda: got.latest.get(key, (None,))[0] == cnc.values[i])
            assert got.readings[-1].quality_of("coolant_flow").is_good


async def test_server_down_at_start_is_retried_until_it_comes_up(tmp_path: Path) -> None:
    port = free_port()
    scn = demo()
    cfg = device(scn, f"opc.tcp://127.0.0.1:{port}/", tmp_path, interval_s=0.2,
                 backoff_initial_s=0.2, backoff_max_s=0.5)  # fmt: skip
    conn = OpcUaConnector(cfg)
    await conn.connect()  # not an error: the server may come later
    assert not conn.health.connected and conn.health.consecutive_failures == 1
    async with collecting(conn) as got:
        await wait_for(lambda: conn.health.consecutive_failures >= 2)  # retried in readings()
        async with serving(scn, port=port) as (plant, server):
            plant.step()
            await server.publish(plant)
            await got.wait_values(plant_values(plant))
    assert conn.health.reconnects == 0 and conn.stats.sessions == 1


async def tick(plant: Plant, current: list[OpcUaSimServer], stop: asyncio.Event) -> None:
    """The plant at 10 ticks per second, published by whichever server is up."""
    while not stop.is_set():
        plant.step()
        if current:
            await current[0].publish(plant)
        await asyncio.sleep(0.1)


async def test_server_restart_resumes_subscription_without_publish_storm(tmp_path: Path) -> None:
    plant = Plant(demo())
    first = OpcUaSimServer(plant, port=0)
    await first.start()
    port = int(first.endpoint.rsplit(":", 1)[1].strip("/"))
    servers = [first]
    stop = asyncio.Event()
    ticker = asyncio.create_task(tick(plant, servers, stop))
    cfg = device(plant.scenario, first.endpoint, tmp_path, interval_s=0.5,
                 backoff_initial_s=0.2, backoff_max_s=1.0)  # fmt: skip
    conn = OpcUaConnector(cfg)
    try:
        await conn.connect()
        async with collecting(conn) as got:
            await got.wait(lambda: len(got.readings) > 5)
            servers.clear()
            await first.stop()
            await wait_for(lambda: not conn.health.connected)
            t0 = time.monotonic()
            second = OpcUaSimServer(plant, port=port)
            await second.start()
            servers.append(second)
            restarted_ns = plant.time_ns
            await got.wait(
                lambda: (
                    {r.machine for r in got.readings if r.time_ns > restarted_ns}
                    == {m.name for m in plant.machines}
                ),
                timeout_s=10,
            )
            assert time.monotonic() - t0 < 10
            n0, w0 = conn.stats.publish_responses, time.monotonic()
            await asyncio.sleep(2.0)  # a measurement window, not a wait for a condition
            rate = (conn.stats.publish_responses - n0) / (time.monotonic() - w0)
            assert rate < 20, f"{rate:.0f} publish responses/s at a 0.5 s publishing interval"
            assert conn.health.reconnects == 1 and conn.stats.sessions == 2
            assert publish_loops() == 1  # the old session's loop is gone
    finally:
        stop.set()
        await ticker
        for s in servers:
            await s.stop()


async def test_silent_cut_is_detected_and_recovered_without_publish_storm(
    served: tuple[Plant, OpcUaSimServer], tmp_path: Path
) -> None:
    """Issue 3: a 10 s silent cut is seen within 3 s, data is back within 5 s, no storm."""
    plant, server = served
    proxy = await FaultProxy("127.0.0.1", int(server.endpoint.rsplit(":", 1)[1].strip("/"))).start()
    stop = asyncio.Event()
    ticker = asyncio.create_task(tick(plant, [server], stop))
    cfg = device(plant.scenario, f"opc.tcp://127.0.0.1:{proxy.port}/", tmp_path, interval_s=0.5,
                 timeout_s=1.0)  # default backoff 1 s -> 60 s  # fmt: skip
    conn = OpcUaConnector(cfg)
    try:
        await conn.connect()
        async with collecting(conn) as got:
            await got.wait(lambda: len(got.readings) > 5)
            assert publish_loops() == 1
            c0, w0 = time.process_time(), time.monotonic()
            await asyncio.sleep(2.0)  # a measurement window: CPU in normal running
            cpu_normal = (time.process_time() - c0) / (time.monotonic() - w0)
            proxy.cut()
            t_cut = time.monotonic()
            await wait_for(lambda: not conn.health.connected, timeout_s=5)
            assert time.monotonic() - t_cut <= 3.0, "cut not detected within 3 s"
            await wait_for(lambda: publish_loops() == 0, timeout_s=2)  # ended with the session
            n0 = conn.stats.publish_responses
            await asyncio.sleep(10.0 - (time.monotonic() - t_cut))  # the rest of the 10 s cut
            assert conn.stats.publish_responses == n0  # nothing answers, nothing spins
            proxy.restore()
            t_back, healed_ns = time.monotonic(), plant.time_ns
            await got.wait(lambda: any(r.time_ns > healed_ns for r in got.readings), timeout_s=10)
            assert time.monotonic() - t_back <= 5.0, "data did not flow within 5 s"
            n0, c0, w0 = conn.stats.publish_responses, time.process_time(), time.monotonic()
            await asyncio.sleep(2.0)  # a measurement window
            rate = (conn.stats.publish_responses - n0) / (time.monotonic() - w0)
            cpu_after = (time.process_time() - c0) / (time.monotonic() - w0)
            assert rate < 20, f"{rate:.0f} publish responses/s after recovery"
            assert cpu_after < 2 * cpu_normal + 0.05, (cpu_normal, cpu_after)  # back to normal
            assert conn.health.reconnects == 1
            assert publish_loops() == 1  # the old session's loop is gone
    finally:
        stop.set()
        await ticker
        await proxy.stop()


# -- security --------------------------------------------------------------------------------


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def secure(
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[tuple[Plant, OpcUaSimServer]]:
    """Basic256Sha256 SignAndEncrypt only, no anonymous login; the demo's user ``operator``."""
    opcua = {"security": ["Basic256Sha256_SignAndEncrypt"], "allow_anonymous": False,
             "cert_dir": str(tmp_path_factory.mktemp("server-pki"))}  # fmt: skip
    with pytest.MonkeyPatch.context() as env:
        env.setenv(PASSWORD_ENV, "s3cret")  # read by the server at start, by clients at connect
        async with serving(demo(opcua=opcua)) as both:
            yield both


def login(plant: Plant, server: OpcUaSimServer, pki: Path) -> OpcUaConfig:
    """print-config's device: policy, mode and the login (anonymous is off) come from it."""
    cfg = device(plant.scenario, server.endpoint, pki, mode="poll")
    assert (cfg.security_policy, cfg.security_mode) == ("Basic256Sha256", "SignAndEncrypt")
    assert (cfg.username, cfg.password_env) == ("operator", PASSWORD_ENV)
    return cfg


def trust(server: OpcUaSimServer, pki: Path) -> None:
    (pki / "trusted").mkdir(parents=True, exist_ok=True)
    assert server.spec.cert_dir is not None
    shutil.copy(server.spec.cert_dir / CERT_FILE, pki / "trusted" / "simulator.der")


async def test_sign_and_encrypt_with_username_and_password(
    secure: tuple[Plant, OpcUaSimServer], tmp_path: Path
) -> None:
    plant, server = secure
    trust(server, tmp_path / "pki")
    conn = OpcUaConnector(login(plant, server, tmp_path / "pki"))
    await conn.connect()
    try:
        plant.step()
        await server.publish(plant)
        (cnc, *_) = await conn.poll()
    finally:
        await conn.close()
    assert cnc.fields["spindle_speed"] == plant.machines[0].values[0]
    assert (tmp_path / "pki" / "own" / "cert.der").is_file()
    assert (tmp_path / "pki" / "own" / "key.pem").stat().st_mode & 0o077 == 0


async def test_wrong_password_is_refused_with_a_clear_message(
    secure: tuple[Plant, OpcUaSimServer], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    plant, server = secure
    trust(server, tmp_path / "pki")
    monkeypatch.setenv(PASSWORD_ENV, "wrong")  # the server read the right one at start
    conn = OpcUaConnector(login(plant, server, tmp_path / "pki"))
    with pytest.raises(ConnectorError) as err:
        await conn.connect()
    assert not err.value.retryable
    assert str(err.value) == (
        "demo-opcua: login as 'operator' refused (BadUserAccessDenied (0x801F0000)): "
        "check the user name and password_env/password_file"
    )
    assert "wrong" not in str(err.value)


async def test_untrusted_server_certificate_is_refused_saved_then_trusted_when_moved(
    secure: tuple[Plant, OpcUaSimServer], tmp_path: Path
) -> None:
    plant, server = secure
    pki = tmp_path / "pki"
    conn = OpcUaConnector(login(plant, server, pki))
    with pytest.raises(ConnectorError) as err:
        await conn.connect()
    await conn.close()  # what the agent does before trying the device again
    rejected, trusted = pki / "rejected" / "demo-opcua.der", pki / "trusted"
    assert not err.value.retryable
    assert f"saved as {rejected}" in str(err.value)
    assert f"move that file into {trusted}/ (mv {rejected} {trusted}/)" in str(err.value)
    assert server.spec.cert_dir is not None
    assert rejected.read_bytes() == (server.spec.cert_dir / CERT_FILE).read_bytes()
    own = (pki / "own" / "cert.der").read_bytes()  # generated on the first attempt

    rejected.rename(trusted / rejected.name)
    await conn.connect()
    try:
        assert conn.health.connected and len(await conn.poll()) == len(plant.machines)
    finally:
        await conn.close()
    assert (pki / "own" / "cert.der").read_bytes() == own  # kept, not made again


async def test_security_policy_the_server_does_not_offer_lists_what_it_offers(
    secure: tuple[Plant, OpcUaSimServer], tmp_path: Path
) -> None:
    plant, server = secure
    cfg = login(plant, server, tmp_path / "pki").model_copy(
        update={"security_policy": "Aes256_Sha256_RsaPss"}
    )
    with pytest.raises(ConnectorError) as err:
        await OpcUaConnector(cfg).connect()
    assert not err.value.retryable
    assert str(err.value) == (
        "demo-opcua: the server does not offer security Aes256_Sha256_RsaPss SignAndEncrypt;"
        " it offers: Basic256Sha256 SignAndEncrypt (set security_policy and security_mode)"
    )
