"""Modbus register codec: typed values to and from lists of 16-bit registers.

Pure ``struct`` on plain ``list[int]`` (no pymodbus import), so the server and the client
connector share it and it stays fast: a precompiled :class:`Codec` per (type, order) decodes a
float32 in about two C calls, and :meth:`Codec.decode_many` decodes a whole block in two.

Types and their size in registers: ``bit``, ``int16``, ``uint16`` (1), ``int32``, ``uint32``,
``float32`` (2), ``int64``, ``uint64``, ``float64`` (4), ``string`` (``length`` registers, two
ASCII characters each, NULs stripped on decode and padded on encode).

Orders name the bytes of a 32-bit value ``ABCD`` (A most significant) as they appear on the wire,
register by register. 64-bit values use the same four names:

======  =====================================  ==============  =================
order   meaning                                32-bit wire     64-bit wire
======  =====================================  ==============  =================
ABCD    big-endian (the Modbus standard)       AB CD           AB CD EF GH
CDAB    word swap (low word first)             CD AB           GH EF CD AB
BADC    byte swap within each register         BA DC           BA DC FE HG
DCBA    little-endian                          DC BA           HG FE DC BA
======  =====================================  ==============  =================

For 16-bit types only the byte order inside the register matters (ABCD = CDAB, BADC = DCBA);
``string`` likewise: ABCD/CDAB put the first character in the high byte, BADC/DCBA in the low
byte. ``bit`` is one coil, discrete input or register: any non-zero register reads ``True``.

Implementation: every order is a pair (byte order of the registers, byte order of the value):
ABCD = (>, >), CDAB = (<, <), BADC = (<, >), DCBA = (>, <). Packing the registers with the first
and unpacking the value with the second gives the right permutation without reordering lists.

>>> encode(123.456, "float32")
[17142, 59769]
>>> [hex(r) for r in encode(123.456, "float32", "CDAB")]
['0xe979', '0x42f6']
>>> round(decode([0x42F6, 0xE979], "float32"), 3)
123.456
>>> decode(encode(-2, "int64", "DCBA"), "int64", "DCBA")
-2
>>> decode([0x4142, 0x4300], "string")
'ABC'
>>> f32 = Codec("float32", "BADC")
>>> f32.decode_many(f32.encode_many([1.5, float("inf")]))
[1.5, inf]
>>> scale_value(1234, scale=0.1, offset=-20.0)
103.4
>>> decode([1, 2, 3], "float32")
Traceback (most recent call last):
    ...
ValueError: float32 takes 2 registers, got 3
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from functools import lru_cache
from typing import Literal, get_args

RegisterType = Literal[
    "bit", "int16", "uint16", "int32", "uint32", "int64", "uint64", "float32", "float64", "string"
]
WordOrder = Literal["ABCD", "CDAB", "BADC", "DCBA"]
Value = bool | int | float | str

TYPES: tuple[str, ...] = get_args(RegisterType)
ORDERS: tuple[str, ...] = get_args(WordOrder)

#: type -> (struct format character, registers per value); ``string`` and ``bit`` are special.
_FORMATS: dict[str, tuple[str, int]] = {
    "int16": ("h", 1),
    "uint16": ("H", 1),
    "int32": ("i", 2),
    "uint32": ("I", 2),
    "int64": ("q", 4),
    "uint64": ("Q", 4),
    "float32": ("f", 2),
    "float64": ("d", 4),
}
#: order -> (byte order of each register, byte order of the value).
_ENDIAN: dict[str, tuple[str, str]] = {
    "ABCD": (">", ">"),
    "CDAB": ("<", "<"),
    "BADC": ("<", ">"),
    "DCBA": (">", "<"),
}
#: inclusive value range of the integer types, for error messages and clamping.
INT_RANGES: dict[str, tuple[int, int]] = {
    "int16": (-(2**15), 2**15 - 1),
    "uint16": (0, 2**16 - 1),
    "int32": (-(2**31), 2**31 - 1),
    "uint32": (0, 2**32 - 1),
    "int64": (-(2**63), 2**63 - 1),
    "uint64": (0, 2**64 - 1),
}


def _check_type(type_: str) -> None:
    if type_ not in TYPES:
        raise ValueError(f"unknown register type {type_!r} (choose one of: {', '.join(TYPES)})")


def _check_order(order: str) -> None:
    if order not in _ENDIAN:
        raise ValueError(f"unknown word order {order!r} (choose one of: {', '.join(ORDERS)})")


def register_count(type_: str, length: int | None = None) -> int:
    """Registers one value of ``type_`` occupies (``length`` for strings).

    >>> register_count("float64"), register_count("string", 8), register_count("bit")
    (4, 8, 1)
    """
    _check_type(type_)
    if type_ == "string":
        if length is None or length < 1:
            raise ValueError("a string needs its length in registers (1 or more)")
        return length
    if type_ == "bit":
        return 1
    return _FORMATS[type_][1]


class Codec:
    """A precompiled encoder/decoder for one (type, order, length): the hot-path form."""

    __slots__ = ("_batch", "_fmt", "_kind", "_reg_order", "_regs", "_val", "count", "order", "type")

    def __init__(self, type_: str, order: str = "ABCD", length: int | None = None) -> None:
        _check_order(order)
        self.type = type_
        self.order = order
        self.count = register_count(type_, length)
        self._reg_order, val_order = _ENDIAN[order]
        self._kind = "bit" if type_ == "bit" else "string" if type_ == "string" else "num"
        if type_ == "string":
            # Strings are bytes: only the byte order inside each register applies.
            self._reg_order = ">" if order in ("ABCD", "CDAB") else "<"
        self._fmt = _FORMATS.get(type_, ("s", 1))[0]
        self._regs = struct.Struct(f"{self._reg_order}{self.count}H")
        self._val = struct.Struct(f"{val_order}{self._fmt}")
        self._batch: dict[int, tuple[struct.Struct, struct.Struct]] = {}

    def __repr__(self) -> str:
        return f"Codec({self.type!r}, {self.order!r}, count={self.count})"

    def _wrong_count(self, got: int) -> ValueError:
        return ValueError(f"{self.type} takes {self.count} registers, got {got}")

    def decode(self, registers: Sequence[int]) -> Value:
        """Decode one value from exactly ``count`` registers."""
        if len(registers) != self.count:
            raise self._wrong_count(len(registers))
        if self._kind == "bit":
            return registers[0] != 0
        raw = self._pack_registers(self._regs, registers)
        if self._kind == "string":
            return raw.decode("ascii", errors="replace").strip("\x00")
        value: int | float = self._val.unpack(raw)[0]
        return value

    def encode(self, value: Value) -> list[int]:
        """Encode one value into ``count`` registers."""
        if self._kind == "bit":
            return [1 if value else 0]
        if self._kind == "string":
            if not isinstance(value, str):
                raise ValueError(f"string expects a str, got {type(value).__name__}")
            try:
                data = value.encode("ascii")
            except UnicodeEncodeError:
                raise ValueError(f"string {value!r} is not ASCII") from None
            if len(data) > 2 * self.count:
                raise ValueError(
                    f"string {value!r} needs {len(data)} bytes, {self.count} registers hold "
                    f"{2 * self.count}"
                )
            return list(self._regs.unpack(data.ljust(2 * self.count, b"\x00")))
        try:
            return list(self._regs.unpack(self._val.pack(value)))
        except (struct.error, OverflowError) as exc:
            raise self._bad_value(value, exc) from None

    def _bad_value(self, value: object, exc: Exception) -> ValueError:
        if self.type in INT_RANGES and isinstance(value, int):
            lo, hi = INT_RANGES[self.type]
            return ValueError(f"{value} is outside {self.type} range {lo}..{hi}")
        return ValueError(f"cannot encode {value!r} as {self.type}: {exc}")

    def _structs(self, n: int) -> tuple[struct.Struct, struct.Struct]:
        pair = self._batch.get(n)
        if pair is None:
            reg_order, val_order = self._regs.format[0], self._val.format[0]
            pair = (
                struct.Struct(f"{reg_order}{n * self.count}H"),
                struct.Struct(f"{val_order}{n}{self._fmt}"),
            )
            self._batch[n] = pair
        return pair

    def decode_many(self, registers: Sequence[int]) -> list[Value]:
        """Decode consecutive values packed back to back (one struct call for the block)."""
        if len(registers) % self.count:
            raise ValueError(
                f"{len(registers)} registers is not a whole number of {self.type} values "
                f"({self.count} registers each)"
            )
        if self._kind != "num":
            n = self.count
            return [self.decode(registers[i : i + n]) for i in range(0, len(registers), n)]
        regs, vals = self._structs(len(registers) // self.count)
        return list(vals.unpack(self._pack_registers(regs, registers)))

    def encode_many(self, values: Sequence[Value]) -> list[int]:
        """Encode values back to back into one register list (one struct call for the block)."""
        if self._kind != "num":
            return [r for v in values for r in self.encode(v)]
        regs, vals = self._structs(len(values))
        try:
            return list(regs.unpack(vals.pack(*values)))
        except (struct.error, OverflowError):
            for v in values:  # find the culprit for a precise message
                self.encode(v)
            raise

    @staticmethod
    def _pack_registers(st: struct.Struct, registers: Sequence[int]) -> bytes:
        try:
            return st.pack(*registers)
        except struct.error:
            bad = next((r for r in registers if not (isinstance(r, int) and 0 <= r <= 65535)), None)
            raise ValueError(f"register value {bad!r} is not an integer in 0..65535") from None


@lru_cache(maxsize=256)
def codec(type_: str, order: str = "ABCD", length: int | None = None) -> Codec:
    """A shared :class:`Codec` for (type, order, length), built once."""
    _check_type(type_)
    return Codec(type_, order, length)


def decode(registers: Sequence[int], type_: str, order: str = "ABCD") -> Value:
    """Decode one value of ``type_`` from its registers (a string takes all of them).

    >>> decode([0xFFFF], "int16"), decode([0xFFFF], "uint16"), decode([0x0100], "int16", "BADC")
    (-1, 65535, 1)
    """
    length = len(registers) if type_ == "string" else None
    return codec(type_, order, length).decode(registers)


def encode(value: Value, type_: str, order: str = "ABCD", length: int | None = None) -> list[int]:
    """Encode one value of ``type_``; a string takes ``length`` registers (default: just enough).

    >>> encode("AB", "string", "DCBA"), encode(float("nan"), "float32")
    ([16961], [32704, 0])
    """
    if type_ == "string" and length is None:
        length = max(1, (len(str(value)) + 1) // 2)
    return codec(type_, order, length).encode(value)


def decode_many(registers: Sequence[int], type_: str, order: str = "ABCD") -> list[Value]:
    """Decode a block of consecutive values of one fixed-size type."""
    return codec(type_, order).decode_many(registers)


def scale_value(raw: float, scale: float = 1.0, offset: float = 0.0) -> float:
    """Engineering value from a raw register value: ``raw * scale + offset``.

    >>> scale_value(-250, 0.01)
    -2.5
    """
    return raw * scale + offset


def unscale_value(
    value: float, scale: float = 1.0, offset: float = 0.0, type_: str = "int16"
) -> int:
    """Raw integer for an engineering value: ``round((value - offset) / scale)``, clamped to type.

    NaN has no integer form and raises :class:`ValueError`.

    >>> unscale_value(103.4, 0.1, -20.0), unscale_value(1e9, 0.01)
    (1234, 32767)
    >>> unscale_value(-5.0, type_="uint16")
    0
    """
    if type_ not in INT_RANGES:
        raise ValueError(f"{type_!r} is not an integer register type ({', '.join(INT_RANGES)})")
    if math.isnan(value):
        raise ValueError("NaN has no integer form")
    lo, hi = INT_RANGES[type_]
    scaled = (value - offset) / scale
    if scaled >= hi:
        return hi
    if scaled <= lo:
        return lo
    return round(scaled)
