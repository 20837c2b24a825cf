"""Register read responses decoded in one ``struct`` call: the connector's pymodbus hot spot.

pymodbus' own responses to function codes 3 and 4 unpack the registers one at a time in a
Python loop, and every decoded response is also formatted with ``str()`` (its whole register
list) for a debug log line, whether debug logging is on or not. At 50 float32 values per
request these two cost more than our whole decoding of the values. The classes here answer the
same function codes through pymodbus' own extension point (``client.register``), with the same
checks and the same ``registers`` list, in one C call, and a short ``str()``.

>>> from pymodbus.pdu.register_message import ReadHoldingRegistersResponse
>>> frame = bytes([6, 0x41, 0x20, 0, 0, 0xFF, 0xFF])
>>> theirs, ours = ReadHoldingRegistersResponse(), HoldingRegisters()
>>> theirs.decode(frame); ours.decode(frame)
>>> ours.registers == theirs.registers == [0x4120, 0, 0xFFFF]
True
>>> str(ours)
'HoldingRegisters(dev_id=0, transaction_id=0, registers=3)'
>>> try:
...     ours.decode(bytes([4, 0x41, 0x20]))
... except Exception as exc:
...     print(exc)
Modbus Error: [Input/Output] byte_count 4 > length of packet 3
"""

from __future__ import annotations

import struct
from functools import lru_cache
from typing import Any

from pymodbus.exceptions import ModbusIOException
from pymodbus.pdu import ModbusPDU
from pymodbus.pdu.register_message import (
    ReadHoldingRegistersResponse,
    ReadInputRegistersResponse,
)


@lru_cache(maxsize=128)
def _registers(count: int) -> struct.Struct:
    return struct.Struct(f">{count}H")


def _decode(pdu: ModbusPDU, data: bytes) -> None:
    byte_count = int(data[0])
    if byte_count >= len(data):
        raise ModbusIOException(
            f"byte_count {byte_count} > length of packet {len(data)}",
            function_code=pdu.function_code,
        )
    if byte_count % 2:
        raise ModbusIOException(
            f"byte_count {byte_count} is odd: not a whole number of registers",
            function_code=pdu.function_code,
        )
    pdu.registers = list(_registers(byte_count // 2).unpack_from(data, 1))


def _short(pdu: ModbusPDU) -> str:
    return (
        f"{type(pdu).__name__}(dev_id={pdu.dev_id}, transaction_id={pdu.transaction_id}, "
        f"registers={len(pdu.registers)})"
    )


class HoldingRegisters(ReadHoldingRegistersResponse):
    """Function code 3's response."""

    def decode(self, data: bytes) -> None:
        _decode(self, data)

    def __str__(self) -> str:
        return _short(self)


class InputRegisters(ReadInputRegistersResponse):
    """Function code 4's response."""

    def decode(self, data: bytes) -> None:
        _decode(self, data)

    def __str__(self) -> str:
        return _short(self)


#: What :func:`register` installs on a client.
RESPONSES: tuple[type[ModbusPDU], ...] = (HoldingRegisters, InputRegisters)


def register(client: Any) -> None:
    """Make ``client`` (any pymodbus async client) decode register reads with these classes."""
    for cls in RESPONSES:
        client.register(cls)
