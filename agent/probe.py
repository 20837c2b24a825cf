"""``factory-agent probe modbus``: raw registers and every plausible decoding of them.

The most common Modbus support question is "the manual says float, what order?". This reads the
registers once and prints them decoded under every type and byte/word order, so the right row
can be recognised by eye (a temperature of 23.5 rather than 1.6e-38).
"""

from __future__ import annotations

import asyncio
import math
from typing import Any

from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ModbusException

from connectors.codec import ORDERS, Codec, register_count
from connectors.modbus import EXCEPTION_NAMES

NUMERIC = ("int16", "uint16", "int32", "uint32", "float32", "int64", "uint64", "float64")


class ProbeError(Exception):
    """The device could not be read; the message says why."""


def parse_target(target: str, default_port: int = 502) -> tuple[str, int]:
    """``HOST[:PORT]`` -> (host, port).

    >>> parse_target("10.0.0.5"), parse_target("plc-7:5020")
    (('10.0.0.5', 502), ('plc-7', 5020))
    """
    host, sep, port = target.rpartition(":")
    if not sep or not port.isdigit():
        return target, default_port
    return host, int(port)


def _show(value: Any) -> str:
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return str(value)
        return f"{value:.6g}"
    return str(value)


def decodings(registers: list[int]) -> list[tuple[str, dict[str, str]]]:
    """(type, {order: text}) for every type that fits in ``registers``, starting at the first.

    >>> dict(decodings([0x42F6, 0xE979]))["float32"]["ABCD"]
    '123.456'
    """
    rows: list[tuple[str, dict[str, str]]] = []
    for type_ in NUMERIC:
        n = register_count(type_)
        if n > len(registers):
            continue
        rows.append((type_, {o: _show(Codec(type_, o).decode(registers[:n])) for o in ORDERS}))
    big = b"".join(r.to_bytes(2, "big") for r in registers)
    little = b"".join(r.to_bytes(2, "little") for r in registers)
    text = {o: repr(big if o in ("ABCD", "CDAB") else little)[1:] for o in ORDERS}
    rows.append((f"string[{len(registers)}]", text))
    return rows


def render(registers: list[int], address: int, function: int) -> str:
    """The probe report: raw table, then decodings as type rows × order columns."""
    lines = [f"function {function}, {len(registers)} registers from address {address}:", ""]
    lines.append("  address      dec    hex    binary")
    for i, r in enumerate(registers):
        lines.append(f"  {address + i:>7}  {r:>7}  0x{r:04X}  {r:016b}")
    lines += ["", "decoded from the first register (orders: see README, Modbus byte/word order):"]
    rows = decodings(registers)
    first = max(4, *(len(t) for t, _ in rows))
    widths = {o: max(len(o), *(len(r[o]) for _, r in rows)) for o in ORDERS}
    lines.append(f"  {'type':<{first}}" + "".join(f"  {o:>{widths[o]}}" for o in ORDERS))
    for type_, by_order in rows:
        cells = "".join(f"  {by_order[o]:>{widths[o]}}" for o in ORDERS)
        lines.append(f"  {type_:<{first}}{cells}")
    return "\n".join(lines)


async def read_registers(
    host: str, port: int, *, unit: int, address: int, count: int, function: int, timeout_s: float
) -> list[int]:
    client = AsyncModbusTcpClient(host, port=port, timeout=timeout_s, retries=0, reconnect_delay=0)
    try:
        if not await asyncio.wait_for(client.connect(), timeout_s):
            raise ProbeError(f"cannot connect to {host}:{port}")
        call = {
            1: client.read_coils,
            2: client.read_discrete_inputs,
            3: client.read_holding_registers,
            4: client.read_input_registers,
        }[function]
        try:
            rr = await asyncio.wait_for(call(address, count=count, device_id=unit), timeout_s + 1)
        except (TimeoutError, ModbusException) as exc:
            raise ProbeError(f"unit {unit} did not answer within {timeout_s:g} s ({exc})") from None
        if rr.isError():
            code = int(getattr(rr, "exception_code", 0))
            name = EXCEPTION_NAMES.get(code, "unknown")
            raise ProbeError(f"unit {unit} answered Modbus exception {code} ({name})")
        if function in (1, 2):
            return [int(b) for b in rr.bits[:count]]
        return list(rr.registers)
    except (TimeoutError, OSError) as exc:
        raise ProbeError(f"cannot connect to {host}:{port} ({exc})") from None
    finally:
        client.close()
