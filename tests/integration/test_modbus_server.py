"""The Modbus simulator on a loopback port, read with pymodbus' own client.

The plant is stepped by hand (no wall clock) and published before each read, so the values a
client sees are exactly the plant's current values.
"""

from __future__ import annotations

import math
import struct
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ModbusIOException

from connectors.codec import Codec, decode
from simulators.engine import Plant
from simulators.modbus_server import ModbusSimServer, ServerStartError
from simulators.registermap import FLOAT_BASE, RegisterMap
from simulators.scenario import Scenario

pytestmark = pytest.mark.integration

ORDERS = ["ABCD", "CDAB", "BADC", "DCBA"]
# comm_loss of "mill-2" from 1.0 s to 2.0 s; sensor_failure of mill-1's bearing_temperature
# from 0.5 s to 1.5 s (machine time; one tick is 0.1 s).
FAULTS = [
    {"machine": "mill-2", "type": "comm_loss", "start": 1.0, "duration": 1.0},
    {"machine": "mill-1", "type": "sensor_failure", "signal": "bearing_temperature",
     "start": 0.5, "duration": 1.0},
]  # fmt: skip


def scenario(word_order: str = "ABCD", faults: list[dict[str, Any]] | None = None) -> Scenario:
    return Scenario.model_validate({
        "name": "modbus-test", "seed": 7, "rate_hz": 10, "duration": 60,
        "modbus": {"host": "127.0.0.1", "port": 5020, "word_order": word_order},
        "opcua": {"enabled": False},
        "machines": [{"name": "mill-1", "kind": "cnc"},
                     {"name": "mill-2", "kind": "cnc", "unit_id": 17}],
        "faults": faults or [],
    })  # fmt: skip


class Rig:
    """A plant, its server on a free port and a connected client."""

    def __init__(self, plant: Plant, server: ModbusSimServer, client: AsyncModbusTcpClient):
        self.plant, self.server, self.client = plant, server, client

    async def tick(self, n: int = 1) -> None:
        for _ in range(n):
            self.plant.step()
        await self.server.publish(self.plant)

    async def tick_until(self, cond: Callable[[Plant], bool], limit: int = 100) -> None:
        for _ in range(limit):
            if cond(self.plant):
                return
            await self.tick()
        raise AssertionError("condition never reached")


@pytest.fixture
async def rig(request: pytest.FixtureRequest) -> AsyncIterator[Rig]:
    params = getattr(request, "param", {})
    scn = scenario(params.get("word_order", "ABCD"), params.get("faults"))
    plant = Plant(scn)
    server = ModbusSimServer(plant, scn.modbus.model_copy(update={"port": 0}))
    await server.start()
    assert server.port != 0
    # Connecting gets the time a loaded CI machine needs; the requests keep their short timeout.
    client = AsyncModbusTcpClient("127.0.0.1", port=server.port, timeout=0.3, retries=0)
    try:
        for _ in range(10):
            if await client.connect():
                break
        assert client.connected, f"cannot connect to the simulator on port {server.port}"
        yield Rig(plant, server, client)
    finally:
        client.close()
        await server.stop()


def as_float32(x: float) -> float:
    return float(struct.unpack("f", struct.pack("f", x))[0])


@pytest.mark.parametrize("rig", [{"word_order": o} for o in ORDERS], indirect=True, ids=ORDERS)
async def test_every_signal_matches_the_plant(rig: Rig) -> None:
    await rig.tick(5)
    order = rig.server.spec.word_order
    f32 = Codec("float32", order)
    for m in rig.plant.machines:
        n = len(m.signals)
        hr = await rig.client.read_holding_registers(FLOAT_BASE, count=2 * n, device_id=m.unit_id)
        assert not hr.isError(), hr
        got = f32.decode_many(hr.registers)
        assert got == [as_float32(v) for v in m.values if v is not None]
        assert len(got) == n

        ir = await rig.client.read_input_registers(0, count=n, device_id=m.unit_id)
        for raw, v, sig in zip(ir.registers, m.values, m.signals, strict=True):
            assert v is not None
            scaled = decode([raw], "int16") * sig.resolution  # type: ignore[operator]
            assert abs(scaled - v) <= sig.resolution / 2 + 1e-9, sig.name

        head = await rig.client.read_holding_registers(0, count=5, device_id=m.unit_id)
        assert head.registers[0] == 0b01  # healthy, no sensor failed
        assert decode(head.registers[1:5], "uint64", order) == rig.plant.time_ns // 1_000_000
        di = await rig.client.read_discrete_inputs(0, count=n, device_id=m.unit_id)
        assert di.bits[:n] == [True] * n
        co = await rig.client.read_coils(0, count=2, device_id=m.unit_id)
        assert co.bits[:2] == [True, False]


async def test_values_follow_the_ticks(rig: Rig) -> None:
    m = rig.plant.machines[0]
    seen: list[int] = []
    for _ in range(3):
        await rig.tick()
        hr = await rig.client.read_holding_registers(0, count=5, device_id=m.unit_id)
        seen.append(int(decode(hr.registers[1:5], "uint64")))
    assert seen[1] - seen[0] == seen[2] - seen[1] == 100  # ms per tick at 10 Hz, speed 1


@pytest.mark.parametrize(
    ("fc", "address", "count"),
    [
        ("read_holding_registers", 5, 1),  # gap after the timestamp
        ("read_holding_registers", 0, 6),  # crosses from the header into the gap
        ("read_holding_registers", 98, 4),  # crosses from the gap into the floats
        ("read_holding_registers", 100, 15),  # one past the last float (7 signals = 14)
        ("read_holding_registers", 40000, 2),
        ("read_input_registers", 7, 1),
        ("read_input_registers", 5, 3),
        ("read_discrete_inputs", 7, 1),
        ("read_coils", 1, 2),
    ],
)
async def test_unmapped_addresses_answer_exception_2(
    rig: Rig, fc: str, address: int, count: int
) -> None:
    r = await getattr(rig.client, fc)(address, count=count, device_id=1)
    assert r.isError()
    assert r.exception_code == 2


async def test_unknown_unit_answers_0x0b_and_writes_answer_1(rig: Rig) -> None:
    r = await rig.client.read_holding_registers(0, count=5, device_id=99)
    assert r.isError()
    assert r.exception_code == 0x0B
    for write in (
        rig.client.write_register(100, 1, device_id=1),
        rig.client.write_registers(100, [1, 2], device_id=1),
        rig.client.write_coil(0, False, device_id=1),
    ):
        r = await write
        assert r.isError()
        assert r.exception_code == 1
    still = await rig.client.read_coils(0, count=2, device_id=1)
    assert still.bits[:2] == [True, False]


@pytest.mark.parametrize("rig", [{"faults": FAULTS}], indirect=True)
async def test_comm_loss_silences_the_unit_until_it_ends(rig: Rig) -> None:
    mill2 = rig.plant.by_name["mill-2"]
    await rig.tick_until(lambda p: not mill2.online)
    with pytest.raises(ModbusIOException):
        await rig.client.read_holding_registers(0, count=5, device_id=17)
    with pytest.raises(ModbusIOException):
        await rig.client.read_input_registers(0, count=1, device_id=17)
    other = await rig.client.read_holding_registers(0, count=5, device_id=1)
    assert not other.isError()  # the neighbour still answers on the same connection
    assert rig.server.stats.silenced == 2

    await rig.tick_until(lambda p: mill2.online)
    back = await rig.client.read_holding_registers(FLOAT_BASE, count=2, device_id=17)
    assert not back.isError()
    assert Codec("float32").decode(back.registers) == as_float32(mill2.values[0] or 0.0)


@pytest.mark.parametrize("rig", [{"faults": FAULTS, "word_order": "CDAB"}], indirect=True)
async def test_sensor_failure_shows_as_nan_0x8000_and_bad_bits(rig: Rig) -> None:
    mill1 = rig.plant.by_name["mill-1"]
    i = mill1.model.signal_names().index("bearing_temperature")
    n = len(mill1.signals)
    await rig.tick_until(lambda p: mill1.values[i] is None)

    hr = await rig.client.read_holding_registers(FLOAT_BASE + 2 * i, count=2, device_id=1)
    assert math.isnan(Codec("float32", "CDAB").decode(hr.registers))  # type: ignore[arg-type]
    ir = await rig.client.read_input_registers(0, count=n, device_id=1)
    assert ir.registers[i] == 0x8000
    assert decode([ir.registers[i]], "int16") == -32768
    di = await rig.client.read_discrete_inputs(0, count=n, device_id=1)
    assert di.bits[:n] == [k != i for k in range(n)]
    head = await rig.client.read_holding_registers(0, count=1, device_id=1)
    assert head.registers == [0b10]  # not healthy, a sensor failed
    co = await rig.client.read_coils(0, count=2, device_id=1)
    assert co.bits[:2] == [False, True]

    await rig.tick_until(lambda p: mill1.values[i] is not None)
    di = await rig.client.read_discrete_inputs(0, count=n, device_id=1)
    assert di.bits[:n] == [True] * n


async def test_port_in_use_is_a_clear_error(rig: Rig) -> None:
    scn = scenario()
    taken = scn.modbus.model_copy(update={"port": rig.server.port})
    second = ModbusSimServer(rig.plant, taken)
    with pytest.raises(ServerStartError, match=rf"127\.0\.0\.1:{rig.server.port} .*modbus\.port"):
        await second.start()
    await second.stop()  # harmless when it never started


async def test_publish_is_cheap(rig: Rig) -> None:
    before = rig.server.stats.publish_s
    await rig.tick(50)
    per_machine_us = (rig.server.stats.publish_s - before) / 50 / 2 * 1e6
    assert per_machine_us < 500  # ~5 µs in practice; generous for loaded CI machines


def test_register_map_describes_itself() -> None:
    from simulators.models.cnc import CncMachine

    rmap = RegisterMap.for_model(CncMachine, "DCBA")
    assert rmap is RegisterMap.for_model(CncMachine, "DCBA")
    text = rmap.describe().splitlines()
    assert text[0].split() == [
        "table",
        "address",
        "type",
        "count",
        "order",
        "scale",
        "unit",
        "name",
    ]
    assert len(text) == 1 + len(rmap.entries)
    data = rmap.as_dict()
    assert data["word_order"] == "DCBA"
    ts = rmap.entry("timestamp").as_dict()
    assert ts in data["registers"]
    assert (ts["address"], ts["type"], ts["count"], ts["order"], ts["unit"]) == (
        1,
        "uint64",
        4,
        "DCBA",
        "ms",
    )
    assert [(b.start, b.count) for b in rmap.blocks("input")] == [(0, 7)]
    with pytest.raises(KeyError, match="no coil entry named 'spindle_speed'"):
        rmap.entry("spindle_speed", "coil")
