"""Our register-read responses decode every frame exactly as pymodbus' own do."""

from __future__ import annotations

import random

import pytest
from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ModbusIOException
from pymodbus.pdu.register_message import (
    ReadHoldingRegistersResponse,
    ReadInputRegistersResponse,
)

from connectors.modbus_pdu import HoldingRegisters, InputRegisters, register

PAIRS = [
    (ReadHoldingRegistersResponse, HoldingRegisters),
    (ReadInputRegistersResponse, InputRegisters),
]


@pytest.mark.parametrize(("theirs", "ours"), PAIRS)
def test_same_registers_as_pymodbus(theirs: type, ours: type) -> None:
    rng = random.Random(3)
    for count in [0, 1, 2, 50, 124, 125]:
        regs = [rng.randrange(65536) for _ in range(count)]
        frame = bytes([2 * count]) + b"".join(r.to_bytes(2, "big") for r in regs)
        frame += bytes(rng.randrange(3))  # trailing bytes are ignored by both
        a, b = theirs(), ours()
        a.decode(frame)
        b.decode(frame)
        assert b.registers == a.registers == regs
        assert b.function_code == a.function_code


@pytest.mark.parametrize(("theirs", "ours"), PAIRS)
def test_short_frame_refused_like_pymodbus(theirs: type, ours: type) -> None:
    frame = bytes([8, 1, 2, 3, 4])
    with pytest.raises(ModbusIOException):
        theirs().decode(frame)
    with pytest.raises(ModbusIOException, match="byte_count 8 > length of packet 5"):
        ours().decode(frame)


def test_odd_byte_count_refused() -> None:
    with pytest.raises(ModbusIOException, match="odd"):
        HoldingRegisters().decode(bytes([3, 1, 2, 3, 4]))


def test_str_does_not_list_the_registers() -> None:
    pdu = HoldingRegisters()
    pdu.decode(bytes([250]) + bytes(250))
    assert str(pdu) == "HoldingRegisters(dev_id=0, transaction_id=0, registers=125)"


async def test_registered_on_a_client_answers_function_codes_3_and_4() -> None:
    client = AsyncModbusTcpClient("127.0.0.1", port=1)
    register(client)
    decoder = client.ctx.framer.decoder
    assert decoder.decode(bytes([3, 2, 0, 7])).registers == [7]
    assert type(decoder.decode(bytes([3, 2, 0, 7]))) is HoldingRegisters
    assert type(decoder.decode(bytes([4, 2, 0, 7]))) is InputRegisters
    # a fresh client still has pymodbus' own classes: registering changed one client only
    other = AsyncModbusTcpClient("127.0.0.1", port=1).ctx.framer.decoder
    assert type(other.decode(bytes([3, 2, 0, 7]))) is ReadHoldingRegistersResponse
