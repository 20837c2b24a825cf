"""The Modbus register codec: known wire patterns, round trips, special floats, errors."""

from __future__ import annotations

import math
import re
import struct

import pytest

from connectors.codec import (
    INT_RANGES,
    ORDERS,
    TYPES,
    Codec,
    codec,
    decode,
    decode_many,
    encode,
    register_count,
    scale_value,
    unscale_value,
)

# (type, value, {order: registers}) — byte patterns worked out by hand from the ABCD bytes.
KNOWN = [
    ("float32", 123.456, {
        "ABCD": [0x42F6, 0xE979], "CDAB": [0xE979, 0x42F6],
        "BADC": [0xF642, 0x79E9], "DCBA": [0x79E9, 0xF642],
    }),
    ("int32", 0x12345678, {
        "ABCD": [0x1234, 0x5678], "CDAB": [0x5678, 0x1234],
        "BADC": [0x3412, 0x7856], "DCBA": [0x7856, 0x3412],
    }),
    ("uint32", 0xDEADBEEF, {
        "ABCD": [0xDEAD, 0xBEEF], "CDAB": [0xBEEF, 0xDEAD],
        "BADC": [0xADDE, 0xEFBE], "DCBA": [0xEFBE, 0xADDE],
    }),
    ("int32", -2, {
        "ABCD": [0xFFFF, 0xFFFE], "CDAB": [0xFFFE, 0xFFFF],
        "BADC": [0xFFFF, 0xFEFF], "DCBA": [0xFEFF, 0xFFFF],
    }),
    ("uint64", 0x0102030405060708, {
        "ABCD": [0x0102, 0x0304, 0x0506, 0x0708], "CDAB": [0x0708, 0x0506, 0x0304, 0x0102],
        "BADC": [0x0201, 0x0403, 0x0605, 0x0807], "DCBA": [0x0807, 0x0605, 0x0403, 0x0201],
    }),
    ("int64", -2, {
        "ABCD": [0xFFFF, 0xFFFF, 0xFFFF, 0xFFFE], "CDAB": [0xFFFE, 0xFFFF, 0xFFFF, 0xFFFF],
        "BADC": [0xFFFF, 0xFFFF, 0xFFFF, 0xFEFF], "DCBA": [0xFEFF, 0xFFFF, 0xFFFF, 0xFFFF],
    }),
    ("float64", 1.0, {  # 0x3FF0000000000000
        "ABCD": [0x3FF0, 0, 0, 0], "CDAB": [0, 0, 0, 0x3FF0],
        "BADC": [0xF03F, 0, 0, 0], "DCBA": [0, 0, 0, 0xF03F],
    }),
    ("float64", -123.456, {  # 0xC05EDD2F1A9FBE77
        "ABCD": [0xC05E, 0xDD2F, 0x1A9F, 0xBE77], "CDAB": [0xBE77, 0x1A9F, 0xDD2F, 0xC05E],
        "BADC": [0x5EC0, 0x2FDD, 0x9F1A, 0x77BE], "DCBA": [0x77BE, 0x9F1A, 0x2FDD, 0x5EC0],
    }),
    ("int16", -2, {"ABCD": [0xFFFE], "CDAB": [0xFFFE], "BADC": [0xFEFF], "DCBA": [0xFEFF]}),
    ("uint16", 0x1234, {"ABCD": [0x1234], "CDAB": [0x1234], "BADC": [0x3412], "DCBA": [0x3412]}),
    ("string", "ABC", {
        "ABCD": [0x4142, 0x4300], "CDAB": [0x4142, 0x4300],
        "BADC": [0x4241, 0x0043], "DCBA": [0x4241, 0x0043],
    }),
    ("bit", True, {"ABCD": [1], "CDAB": [1], "BADC": [1], "DCBA": [1]}),
]  # fmt: skip
KNOWN_CASES = [
    pytest.param(t, v, o, regs, id=f"{t}-{v}-{o}") for t, v, by in KNOWN for o, regs in by.items()
]

# Sample values per type, chosen to hit both extremes, zero and a byte-asymmetric middle.
SAMPLES: dict[str, list[object]] = {
    "bit": [True, False],
    "float32": [0.0, -0.0, 1.5, -3.25, 123.5, 3.4028234663852886e38, 1.401298464324817e-45],
    "float64": [0.0, -0.0, math.pi, -1e300, 5e-324, 2.0**-1022],
    "string": ["", "A", "AB", "pump-07", "ZZZZZZZZ"],
    **{
        t: [lo, hi, 0, 1, -1 if lo < 0 else 2, 0x0102 % (hi + 1)]
        for t, (lo, hi) in INT_RANGES.items()
    },
}


def test_every_type_has_samples() -> None:
    assert set(SAMPLES) == set(TYPES)


@pytest.mark.parametrize(("type_", "value", "order", "registers"), KNOWN_CASES)
def test_known_wire_patterns(type_: str, value: object, order: str, registers: list[int]) -> None:
    length = len(registers) if type_ == "string" else None
    assert encode(value, type_, order, length) == registers  # type: ignore[arg-type]
    got = decode(registers, type_, order)
    if isinstance(value, float):
        assert got == pytest.approx(value, rel=1e-7)
    else:
        assert got == value


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("type_", TYPES)
def test_round_trip_every_type_and_order(type_: str, order: str) -> None:
    c = Codec(type_, order, 4 if type_ == "string" else None)
    for value in SAMPLES[type_]:
        regs = c.encode(value)  # type: ignore[arg-type]
        assert len(regs) == c.count == register_count(type_, 4 if type_ == "string" else None)
        assert all(0 <= r <= 0xFFFF for r in regs)
        back = c.decode(regs)
        assert back == value
        if isinstance(value, float):  # -0.0 == 0.0: check the sign bit survives too
            assert math.copysign(1.0, back) == math.copysign(1.0, value)  # type: ignore[arg-type]


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("type_", ["float32", "float64"])
@pytest.mark.parametrize("special", [math.nan, math.inf, -math.inf])
def test_nan_and_infinity_round_trip(type_: str, order: str, special: float) -> None:
    back = decode(encode(special, type_, order), type_, order)
    assert isinstance(back, float)
    if math.isnan(special):
        assert math.isnan(back)
    else:
        assert back == special


def test_nan_is_the_quiet_nan_on_the_wire() -> None:
    assert encode(math.nan, "float32") == [0x7FC0, 0x0000]
    assert encode(math.inf, "float32") == [0x7F80, 0x0000]
    assert encode(-math.inf, "float32", "DCBA") == [0x0000, 0x80FF]


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("type_", ["int16", "uint16", "int32", "uint32", "int64", "uint64",
                                   "float32", "float64", "bit", "string"])  # fmt: skip
def test_batch_equals_one_by_one(type_: str, order: str) -> None:
    length = 4 if type_ == "string" else None
    c = Codec(type_, order, length)
    values = SAMPLES[type_]
    regs = c.encode_many(values)  # type: ignore[arg-type]
    assert regs == [r for v in values for r in c.encode(v)]  # type: ignore[arg-type]
    assert c.decode_many(regs) == values
    if type_ != "string":
        assert decode_many(regs, type_, order) == values


def test_float32_batch_matches_struct() -> None:
    values = [0.1 * i - 3.0 for i in range(64)]
    regs = Codec("float32", "ABCD").encode_many(values)
    expected = list(struct.unpack(">128H", struct.pack(">64f", *values)))
    assert regs == expected
    as_float32 = list(struct.unpack(">64f", struct.pack(">64f", *values)))
    assert codec("float32", "ABCD").decode_many(regs) == as_float32


def test_string_strips_nuls_and_pads() -> None:
    assert decode([0x0041, 0x4200], "string") == "AB"
    assert encode("AB", "string", length=3) == [0x4142, 0, 0]
    assert encode("ABC", "string") == [0x4142, 0x4300]  # default length: just enough
    assert decode([0x41FF], "string") == "A\ufffd"  # not ASCII: replaced, never raises


def test_bit_reads_any_nonzero_register_as_true() -> None:
    assert decode([0], "bit") is False
    assert decode([0x8000], "bit") is True
    assert encode(0, "bit") == [0]


def test_register_counts() -> None:
    counts = {"bit": 1, "int16": 1, "uint16": 1, "int32": 2, "uint32": 2, "float32": 2,
              "int64": 4, "uint64": 4, "float64": 4}  # fmt: skip
    for type_, n in counts.items():
        assert register_count(type_) == n
    assert register_count("string", 10) == 10


def test_codec_is_cached_and_reprs() -> None:
    assert codec("float32", "CDAB") is codec("float32", "CDAB")
    assert repr(codec("int64")) == "Codec('int64', 'ABCD', count=4)"


def test_scaled_helpers() -> None:
    assert scale_value(1234, 0.1, -20.0) == pytest.approx(103.4)
    assert unscale_value(103.4, 0.1, -20.0) == 1234
    assert unscale_value(-1e9, 0.01) == -32768
    assert unscale_value(math.inf, 1.0, type_="uint32") == 2**32 - 1
    assert unscale_value(70000.0, 1.0, type_="uint16") == 65535


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: decode([0], "float16"), "unknown register type 'float16' (choose one of: bit"),
        (lambda: encode(1.0, "float32", "ABDC"), "unknown word order 'ABDC' (choose one of: ABCD"),
        (lambda: Codec("int32", "XYZW"), "unknown word order 'XYZW'"),
        (lambda: decode([1, 2, 3], "float32"), "float32 takes 2 registers, got 3"),
        (lambda: decode([1], "uint64"), "uint64 takes 4 registers, got 1"),
        (lambda: decode([70000], "uint16"), "register value 70000 is not an integer in 0..65535"),
        (lambda: decode([0, -1], "int32"), "register value -1 is not an integer in 0..65535"),
        (lambda: encode(40000, "int16"), "40000 is outside int16 range -32768..32767"),
        (lambda: encode(-1, "uint32"), "-1 is outside uint32 range 0..4294967295"),
        (lambda: encode(1.5, "int32"), "cannot encode 1.5 as int32"),
        (lambda: encode(1e39, "float32"), "cannot encode 1e+39 as float32"),
        (lambda: encode("too long", "string", length=2), "needs 8 bytes, 2 registers hold 4"),
        (lambda: encode("é", "string"), "is not ASCII"),
        (lambda: encode(5, "string", length=1), "string expects a str, got int"),
        (lambda: register_count("string"), "a string needs its length in registers"),
        (lambda: decode_many([1, 2, 3], "float32"), "3 registers is not a whole number of float32"),
        (lambda: Codec("int16").encode_many([1, 2, 99999]), "99999 is outside int16 range"),
        (lambda: unscale_value(math.nan), "NaN has no integer form"),
        (lambda: unscale_value(1.0, type_="float32"), "'float32' is not an integer register type"),
    ],
)
def test_errors_are_value_errors_with_a_clear_message(call: object, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        call()  # type: ignore[operator]
