"""The line protocol encoder: escaping, types, skips counted and logged, layout, precisions.

Lines are read back with a small parser written here from the InfluxDB line protocol reference
(backslash escapes in names and tag values, quoted strings, ``i`` integers), so the tests check
what a server would store rather than the exact text.
"""

from __future__ import annotations

import math
import random
import re
from typing import Any

import numpy as np
import pytest
import structlog

from agent import lineprotocol
from agent.lineprotocol import Encoder, escape, quote
from connectors.types import GOOD, FieldValue, Quality, Reading

ORJSON = [False, True] if lineprotocol._ORJSON_DUMPS is not None else [False]
T0 = 1_767_600_000_123_456_789


# -- a reader for what we write ---------------------------------------------------------------
def _unescape(text: str, special: str) -> str:
    out, i = [], 0
    while i < len(text):
        if text[i] == "\\" and i + 1 < len(text) and text[i + 1] in special + "\\":
            out.append(text[i + 1])
            i += 2
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def _split(text: str, sep: str) -> list[str]:
    """Split on ``sep`` outside backslash escapes (a backslash takes the next character)."""
    parts, cur, i = [], [], 0
    while i < len(text):
        if text[i] == "\\" and i + 1 < len(text):
            cur.append(text[i : i + 2])
            i += 2
        elif text[i] == sep:
            parts.append("".join(cur))
            cur, i = [], i + 1
        else:
            cur.append(text[i])
            i += 1
    parts.append("".join(cur))
    return parts


def _fields(text: str) -> dict[str, FieldValue]:
    """``k=v,k2="s, with commas"``: keys end at an unescaped ``=``, strings at ``"``."""
    fields: dict[str, FieldValue] = {}
    i = 0
    while i < len(text):
        j = i
        while text[j] != "=":
            j += 2 if text[j] == "\\" else 1
        key, j = text[i:j], j + 1
        if text[j] == '"':
            k = j + 1
            while text[k] != '"':
                k += 2 if text[k] == "\\" else 1
            value, i = text[j : k + 1], k + 1
        else:
            k = text.find(",", j)
            k = len(text) if k < 0 else k
            value, i = text[j:k], k
        assert _unescape(key, ",= ") not in fields
        fields[_unescape(key, ",= ")] = _value(value)
        if i < len(text):
            assert text[i] == ","
            i += 1
    return fields


def _split_v1(text: str, sep: str) -> list[str]:
    """How InfluxDB 1.x cuts a series key: at ``sep`` not preceded by a backslash."""
    return re.split(rf"(?<!\\){re.escape(sep)}", text)


def _value(text: str) -> FieldValue:
    if text.startswith('"'):
        assert text.endswith('"') and len(text) >= 2
        return _unescape(text[1:-1], '"')
    if text in ("true", "false"):
        return text == "true"
    if re.fullmatch(r"-?\d+i", text):
        return int(text[:-1])
    assert re.fullmatch(r"-?(\d+\.?\d*|\.\d+)(e[+-]?\d+)?", text), text
    return float(text)


def parse(line: bytes) -> tuple[str, dict[str, str], dict[str, FieldValue], int]:
    """(measurement, tags, fields, timestamp) as InfluxDB reads one line."""
    text = line.decode()
    assert "\n" not in text
    series = _split(text, " ")[0]
    fieldset, ts = text[len(series) + 1 :].rsplit(" ", 1)
    measurement, *tagpairs = _split(series, ",")
    tags = {}
    for pair in tagpairs:
        k, v = _split(pair, "=")
        tags[_unescape(k, ",= ")] = _unescape(v, ",= ")
    return _unescape(measurement, ", "), tags, _fields(fieldset), int(ts)


def reading(fields: dict[str, FieldValue], **kw: Any) -> Reading:
    return Reading(kw.pop("machine", "cnc-01"), kw.pop("time_ns", T0), fields, **kw)


# -- escaping ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("raw", "special", "expected"),
    [
        # Cases of the reference's "Special characters" section.
        ("my,measurement", ", ", r"my\,measurement"),
        ("my measurement", ", ", r"my\ measurement"),
        ("my=measurement", ", ", "my=measurement"),  # = needs no escape in a measurement
        ("tag key", ",= ", r"tag\ key"),
        ("tag=key", ",= ", r"tag\=key"),
        ("tag,value", ",= ", r"tag\,value"),
        ('"quoted"', ",= ", '"quoted"'),  # quotes are literal outside string values
        (r"my\measurement", ", ", r"my\measurement"),  # a lone backslash stays literal
        ("C:\\", ",= ", "C:"),  # a trailing one is removed: InfluxDB 1.x reads "\\," as escaped
        (r"a\,b", ",= ", r"a\\\,b"),
        ("two\nlines", ",= ", r"two\nlines"),
        ("température", ",= ", "température"),
    ],
)
def test_escape(raw: str, special: str, expected: str) -> None:
    assert escape(raw, special) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ('too "hot"', r'"too \"hot\""'),
        ("C:\\path\\", r'"C:\\path\\"'),
        ("plain, with = and spaces", '"plain, with = and spaces"'),
        ("", '""'),
    ],
)
def test_quote(raw: str, expected: str) -> None:
    assert quote(raw) == expected


def test_special_characters_in_every_position_read_back() -> None:
    enc = Encoder("my measurement,1")
    r = reading(
        {"field key=1": 1.5, 'str,field "x"': 'say "hi", C:\\', "n": -7},
        tags={"tag key": "tag,value=1", "site": "plant\\A", "empty": "\\"},
    )
    line = enc.encode(r)
    assert line is not None
    assert parse(line) == (
        "my measurement,1",
        {"machine": "cnc-01", "site": "plant\\A", "tag key": "tag,value=1"},
        {"field key=1": 1.5, 'str,field "x"': 'say "hi", C:\\', "n": -7},
        T0,
    )


NAME_CHARS = "ab_Z09 ,=\"\\'é%:{}.-"


@pytest.mark.parametrize("use_orjson", ORJSON)
def test_random_readings_round_trip(use_orjson: bool) -> None:
    rng = random.Random(7)

    def name() -> str:  # never ending with a backslash: those are removed (tested above)
        return "".join(rng.choice(NAME_CHARS) for _ in range(rng.randint(0, 7))) + rng.choice("aé")

    def value() -> FieldValue:
        kind = rng.randrange(5)
        if kind == 0:
            return rng.randint(-(2**63), 2**63 - 1)
        if kind == 1:
            return rng.random() < 0.5
        if kind == 2:
            return name()
        return rng.choice(
            [rng.uniform(-1e6, 1e6), rng.uniform(-1, 1) * 10.0 ** rng.randint(-300, 300)]
        )

    enc = Encoder(use_orjson=use_orjson)
    for _ in range(500):
        all_float = rng.random() < 0.5
        fields = {
            name(): (rng.uniform(-1e3, 1e3) if all_float else value())
            for _ in range(rng.randint(1, 8))
        }
        tags = {name(): name() for _ in range(rng.randint(0, 4))}
        r = reading(fields, tags=tags, machine=name())
        line = enc.encode(r)
        assert line is not None
        _, got_tags, got_fields, ts = parse(line)
        assert got_fields == fields
        assert got_tags == ({**tags, "machine": r.machine} if "machine" not in tags else tags)
        # InfluxDB 1.x finds separators by "the previous byte is not a backslash": same cut
        series = _split(line.decode(), " ")[0]
        assert len(_split_v1(series, ",")) == len(got_tags) + 1
        assert list(got_tags) == sorted(got_tags)  # InfluxDB's preferred order
        assert ts == T0


# -- values -----------------------------------------------------------------------------------
@pytest.mark.parametrize("use_orjson", ORJSON)
@pytest.mark.parametrize(
    "x", [0.0, -0.0, 1.5, 2.0, 0.1, 1e16, 1e-7, 5e-324, 1.7976931348623157e308, -123456.789, 1 / 3]
)
def test_floats_are_shortest_round_trip(x: float, use_orjson: bool) -> None:
    line = Encoder(use_orjson=use_orjson).encode(reading({"x": x, "y": 1.0}))
    assert line is not None
    text = line.split(b" ")[1].split(b",")[0].decode()
    assert text.startswith("x=")
    got = float(text[2:])
    assert got == x and math.copysign(1, got) == math.copysign(1, x)
    assert len(text[2:]) <= len(repr(x))  # shortest: no 0.10000000000000001
    assert "i" not in text  # a float, never mistaken for an integer


def test_types() -> None:
    enc = Encoder()
    line = enc.encode(reading({"f": 2.0, "i": 3, "b": True, "s": "auto", "big": 2**63 - 1}))
    assert line == (
        b'machine,machine=cnc-01 f=2.0,i=3i,b=true,s="auto",big=9223372036854775807i '
        + str(T0).encode()
    )
    # numpy scalars take the careful path and read as their Python values
    values: dict[str, Any] = {
        "f64": np.float64(1.25),
        "f32": np.float32(0.5),
        "i64": np.int64(5),
        "nan32": np.float32("nan"),
        "nb": np.bool_(True),  # not registered as a number: counted as invalid
        "obj": object(),
    }
    with structlog.testing.capture_logs() as logs:
        line = enc.encode(reading(values))
    assert line is not None
    assert parse(line)[2] == {"f64": 1.25, "f32": 0.5, "i64": 5}
    assert (enc.skipped_invalid, enc.skipped_nonfinite) == (2, 1)
    assert {(e["event"], e.get("type")) for e in logs} == {
        ("nonfinite_value_skipped", None),
        ("invalid_value_skipped", type(np.bool_(True)).__name__),
        ("invalid_value_skipped", "object"),
    }


def test_fast_path_notices_a_type_change() -> None:
    enc = Encoder()
    first = enc.encode(reading({"a": 1.0, "b": 2.0}))
    second = enc.encode(reading({"a": 1.0, "b": 2}))  # same names, an int this time
    third = enc.encode(reading({"a": True, "b": 2.0}))
    assert first is not None and second is not None and third is not None
    assert parse(second)[2] == {"a": 1.0, "b": 2} and b"b=2i" in second
    assert b"a=true" in third


def _careful_calls(enc: Encoder, monkeypatch: pytest.MonkeyPatch) -> list[Reading]:
    """Record the readings encode() sends down its careful path (a value at a time)."""
    calls: list[Reading] = []
    encode_fields = enc._encode_fields

    def spy(reading: Reading, prefix: str, ts: int) -> bytes | None:
        calls.append(reading)
        return encode_fields(reading, prefix, ts)

    monkeypatch.setattr(enc, "_encode_fields", spy)
    return calls


@pytest.mark.parametrize("use_orjson", ORJSON)
def test_integers_outside_int64_are_skipped_and_counted(
    use_orjson: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    enc = Encoder(use_orjson=use_orjson)
    careful = _careful_calls(enc, monkeypatch)
    line = enc.encode(reading({"ok": 1, "max": 2**63 - 1, "min": -(2**63)}))
    assert line == b"machine,machine=cnc-01 ok=1i,max=%di,min=%di %d" % (2**63 - 1, -(2**63), T0)
    assert careful == []  # int64's edges take the fast path
    with structlog.testing.capture_logs() as logs:
        line = enc.encode(reading({"ok": 1, "huge": 2**63, "neg": -(2**63) - 1, "vast": 10**400}))
    assert line is not None
    assert parse(line)[2] == {"ok": 1}
    assert enc.skipped_invalid == 3
    assert len(careful) == 1
    assert [e["event"] for e in logs] == ["invalid_value_skipped"] * 3
    assert {e["reason"] for e in logs} == {"integer outside int64"}


#: One machine's readings, value types changing from one to the next (names: "a", "n", "on").
TYPE_CHANGES: list[dict[str, FieldValue]] = [
    {"a": 1.5, "n": 7, "on": True},
    {"a": -0.25, "n": 2**63 - 1, "on": False},
    {"a": 2.0, "n": -(2**63), "on": True},
    {"a": 3, "n": 4.5, "on": 0},  # an int where a float was, a float for an int, int for bool
    {"a": True, "n": False, "on": 1.0},  # a bool where an int was, ...
    {"a": 1.5, "n": 7, "on": True},  # the first types again
    {"a": 1.5, "n": 2**63, "on": True},  # careful from here on: n skipped
    {"a": 1.5, "n": -(2**63) - 1, "on": None},
    {"a": 1.5, "n": None, "on": "auto"},
    {"a": math.nan, "n": 7, "on": True},
]
CAREFUL_WITH_ORJSON = [6, 7, 8, 9]
CAREFUL_WITHOUT = [0, 1, 2, 4, 5, 6, 7, 8, 9]  # %-formatting takes no bool


@pytest.mark.parametrize("use_orjson", ORJSON)
def test_ints_and_bools_are_written_as_the_careful_path_writes_them(
    use_orjson: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    ref, enc, many = (Encoder(use_orjson=use_orjson) for _ in range(3))
    careful = _careful_calls(enc, monkeypatch)
    readings = [reading(f, time_ns=T0 + i) for i, f in enumerate(TYPE_CHANGES)]
    # a good quality entry adds no field but sends a reading down the careful path
    with structlog.testing.capture_logs() as logs_ref:
        expected = [
            ref.encode(reading(r.fields, time_ns=r.time_ns, quality={"a": GOOD})) for r in readings
        ]
    with structlog.testing.capture_logs() as logs:
        assert [enc.encode(r) for r in readings] == expected
    assert logs == logs_ref
    want = CAREFUL_WITH_ORJSON if use_orjson else CAREFUL_WITHOUT
    assert [readings.index(r) for r in careful] == want
    assert expected[0] == b"machine,machine=cnc-01 a=1.5,n=7i,on=true %d" % T0
    many_careful = _careful_counts(many, monkeypatch)
    with structlog.testing.capture_logs():
        for _ in range(2):  # batch by batch: the machine's types change between them too
            assert [many.encode_many([r]) for r in readings] == [x or b"" for x in expected]
            assert many.encode_many(readings) == b"\n".join(x for x in expected if x)
    # without orjson, encode_many() is encode() reading by reading
    assert sum(many_careful) == 4 * (len(want) if use_orjson else len(readings))
    counters = ("points", "skipped_nonfinite", "skipped_empty", "skipped_invalid")
    assert [getattr(many, c) for c in counters] == [4 * getattr(ref, c) for c in counters]


# -- what cannot be written -------------------------------------------------------------------
@pytest.mark.parametrize("use_orjson", ORJSON)
def test_nonfinite_values_are_counted_and_logged_once_per_field_and_interval(
    use_orjson: bool,
) -> None:
    enc = Encoder(log_interval_s=300, use_orjson=use_orjson)
    with structlog.testing.capture_logs() as logs:
        lines = [
            enc.encode(reading({"x": v, "y": 1.0, "z": float("inf") if i % 2 else 2.0}))
            for i, v in enumerate([float("nan"), float("inf"), float("-inf"), 1.0] * 25)
        ]
    assert all(line is not None for line in lines)
    assert enc.points == 100
    assert enc.skipped_nonfinite == 75 + 50
    assert sorted((e["event"], e["field"]) for e in logs) == [
        ("nonfinite_value_skipped", "x"),
        ("nonfinite_value_skipped", "z"),
    ]
    assert all(e["log_level"] == "warning" and e["machine"] == "cnc-01" for e in logs)
    for line in lines:
        assert line is not None
        fields = parse(line)[2]
        assert all(isinstance(v, float) and math.isfinite(v) for v in fields.values())


def test_nonfinite_log_repeats_after_the_interval_with_the_count() -> None:
    enc = Encoder(log_interval_s=0.0)
    with structlog.testing.capture_logs() as logs:
        for _ in range(3):
            enc.encode(reading({"x": float("nan"), "y": 1.0}))
    assert len(logs) == 3
    assert "skipped_since_last_log" not in logs[0]
    assert logs[1]["skipped_since_last_log"] == 1


def test_none_is_skipped_silently_and_an_empty_point_is_counted() -> None:
    enc = Encoder()
    assert parse(enc.encode(reading({"a": None, "b": 1.0})) or b"")[2] == {"b": 1.0}
    with structlog.testing.capture_logs() as logs:
        assert enc.encode(reading({"a": None, "b": float("nan")})) is None
        assert enc.encode(reading({})) is None
    assert enc.skipped_empty == 2
    assert enc.points == 1
    assert [e["event"] for e in logs] == ["nonfinite_value_skipped", "point_skipped"]


# -- layout -----------------------------------------------------------------------------------
def test_quality_fields_say_why() -> None:
    r = reading(
        {"temp": None, "pressure": 4.2, "speed": 100.0},
        tags={"site": "a"},
        quality={
            "temp": Quality.bad(0x808C0000, "BadSensorFailure"),
            "pressure": Quality.uncertain(0x40920000, "UncertainSubNormal"),
            "speed": GOOD,  # a good entry adds nothing
        },
    )
    line = Encoder().encode(r)
    assert line is not None
    assert parse(line)[2] == {
        "pressure": 4.2,
        "speed": 100.0,
        "temp_quality": "bad:2156658688:BadSensorFailure",
        "pressure_quality": "uncertain:1083310080:UncertainSubNormal",
    }


def test_a_point_with_only_bad_values_still_carries_its_quality() -> None:
    enc = Encoder()
    q = Quality.bad(2, "modbus exception 2 (illegal data address)")
    line = enc.encode(reading({"a": None, "b": None}, quality={"a": q, "b": q}))
    assert line is not None
    assert parse(line)[2] == {
        "a_quality": "bad:2:modbus exception 2 (illegal data address)",
        "b_quality": "bad:2:modbus exception 2 (illegal data address)",
    }
    assert enc.skipped_empty == 0


def test_tags_sorted_empty_values_omitted_machine_added() -> None:
    tags = {"site": "s", "line": "", "device": "plc-1", "protocol": "opcua"}
    line = Encoder("m").encode(reading({"x": 1.0}, tags=tags, machine="press 7"))
    assert line is not None
    assert line.startswith(rb"m,device=plc-1,machine=press\ 7,protocol=opcua,site=s x=1.0 ")
    line = Encoder("m", machine_tag=None).encode(reading({"x": 1.0}, tags={"agent": "a1"}))
    assert line == b"m,agent=a1 x=1.0 " + str(T0).encode()
    line = Encoder("m").encode(reading({"x": 1.0}, tags={"machine": "from-tags"}))
    assert line is not None and parse(line)[1] == {"machine": "from-tags"}


@pytest.mark.parametrize(
    ("precision", "expected"),
    [("ns", T0), ("us", T0 // 1_000), ("ms", T0 // 1_000_000), ("s", T0 // 1_000_000_000)],
)
@pytest.mark.parametrize("fields", [{"x": 1.0}, {"x": 1}])  # fast and careful paths
def test_precisions(precision: Any, expected: int, fields: dict[str, FieldValue]) -> None:
    line = Encoder(precision=precision).encode(reading(fields))
    assert line is not None and parse(line)[3] == expected


def test_encode_many_and_bad_arguments() -> None:
    enc = Encoder()
    rs = [reading({"x": float(i)}, time_ns=i) for i in range(3)] + [reading({"x": None})]
    assert enc.encode_many(
        rs
    ) == b"machine,machine=cnc-01 x=0.0 0\nmachine,machine=cnc-01 x=1.0 1\n" + (
        b"machine,machine=cnc-01 x=2.0 2"
    )
    assert enc.encode_many([]) == b""
    for bad in ("", "#comment", "two\nlines"):
        with pytest.raises(ValueError, match="measurement"):
            Encoder(bad)
    with pytest.raises(ValueError, match="precision"):
        Encoder(precision="m")  # type: ignore[arg-type]


def test_field_names_with_percent_and_specials_on_the_fast_path() -> None:
    enc = Encoder()
    line = enc.encode(reading({"load %": 12.5, "a=b": 1.0, "": 3.0}))
    assert line is not None
    assert parse(line)[2] == {"load %": 12.5, "a=b": 1.0}
    assert enc.skipped_invalid == 1  # the empty name
    line = enc.encode(reading({"load %": 12.5, "a=b": 1.0}))
    assert line is not None and parse(line)[2] == {"load %": 12.5, "a=b": 1.0}


def test_caches_hold_one_entry_per_machine_and_field_set() -> None:
    enc = Encoder()
    for i in range(50):
        machine = f"m{i % 2}"
        tags = {"site": "s", "machine": machine}
        enc.encode(reading({"a": float(i), "b": 1.0}, tags=tags, machine=machine))
    assert len(enc._prefixes) == 2
    assert len(enc._templates) == 1


@pytest.mark.parametrize("use_orjson", ORJSON)
def test_encode_many_is_encode_line_by_line(use_orjson: bool) -> None:
    rng = random.Random(3)
    q = Quality.bad(1, "x")
    readings = []
    for i in range(300):
        kind = rng.randrange(6)
        fields: dict[str, FieldValue] = {"a": rng.uniform(-5, 5), "b{}": 1e300 * rng.random()}
        if kind == 1:
            fields["a"] = float("nan")
        elif kind == 2:
            fields["c"] = 3
        elif kind == 3:
            fields = {"a,b": 1.0}  # not plain: the %r template
        elif kind == 4:
            fields = {}
        tags = {"machine": f"m{i % 3}", "line": "l 1"}
        quality = {"a": q} if kind == 5 else {}
        readings.append(reading(fields, tags=tags, quality=quality, time_ns=T0 + i))
    one, many = Encoder(use_orjson=use_orjson), Encoder(use_orjson=use_orjson)
    expected = b"\n".join(x for r in readings if (x := one.encode(r)) is not None)
    assert many.encode_many(readings) == expected
    assert many.encode_many(readings) == expected  # caches warm: the batched path
    counters = ("points", "skipped_nonfinite", "skipped_empty", "skipped_invalid")
    assert [getattr(many, c) for c in counters] == [2 * getattr(one, c) for c in counters]


# -- encode_many: the whole-batch path --------------------------------------------------------
SIGNALS = ["spindle_speed", "load_%", "bearing_temp", "vibration", "flow{1}", "débit"]
#: Signals of a fixed type, as a device has: unscaled Modbus registers, coils, OPC UA Booleans.
INT_SIGNALS = ["parts_count", "mode_code", "alarm_word"]
BOOL_SIGNALS = ["door_open", "coolant_on"]
ODD_NAMES = ["a b", "x:y", "q,1", "", "100%"]  # not plain (formatted with %r), empty
ODD_VALUES = [
    1e16, 1.5e-7, -0.0, 5e-324, 1e308, -1e308, math.nan, math.inf, -math.inf, 7, True, False,
    "auto", None, np.float64(2.5), np.int64(3), 2**64, 2**63, -(2**63) - 1, 10**400,
]  # fmt: skip


def _careful_counts(enc: Encoder, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Record, for each encode_many call, how many of its readings it left to encode() (the
    others were formatted together)."""
    counts: list[int] = []
    encode_many, encode = enc.encode_many, enc.encode

    def many(readings: Any) -> bytes:
        counts.append(0)
        return encode_many(readings)

    def one(reading: Reading) -> bytes | None:
        counts[-1] += 1
        return encode(reading)

    monkeypatch.setattr(enc, "encode_many", many)
    monkeypatch.setattr(enc, "encode", one)
    return counts


def _random_batch(rng: random.Random, shared: list[dict[str, str]]) -> tuple[str, list[Reading]]:
    """Mostly what connectors send (one machine, 5 tags, float fields, often some int and bool
    fields, a type per name); sometimes anything. Returns (kind, readings)."""
    kind = rng.choice(["common", "common", "common", "one odd", "machines", "anything"])
    n = rng.choice([1, 2, 3, 10, 50])
    machine = rng.choice(["cnc-01", "cnc-02", "press 7"])
    device = rng.choice(["plc-1", "plc 50%"])
    names = rng.sample(SIGNALS, rng.randint(1, len(SIGNALS)))
    typed = INT_SIGNALS + BOOL_SIGNALS
    names += rng.sample(typed, rng.choice([0, 0, 1, 2, len(typed)]))  # a mix per batch
    rng.shuffle(names)
    grid = rng.random() < 0.5

    def value(name: str, odd: bool) -> Any:
        if odd:
            return rng.choice(ODD_VALUES)
        if name in INT_SIGNALS:
            return rng.choice([rng.randrange(65536), rng.randrange(-(2**15), 2**15)])
        if name in BOOL_SIGNALS:
            return rng.random() < 0.5
        x = rng.uniform(-1e3, 1e3)
        return round(x, 2) if grid else x

    readings = []
    for i in range(n):
        odd = kind == "anything" or (kind == "one odd" and i == n // 2)
        m = rng.choice(["cnc-01", "cnc-02", "press 7"]) if kind != "common" else machine
        tags = {"site": "plant-a", "line": "line-1", "machine": m, "device": device}
        if kind == "machines" and i % 2:
            del tags["machine"]  # the machine tag comes from the reading
        if odd and rng.random() < 0.5:
            tags = rng.choice(shared)  # reused, and mutated between batches
        elif odd:
            tags = {rng.choice(["line", "b,c=d e", "site"]): rng.choice(["", "x", "a b"])}
        own = names
        if odd and rng.random() < 0.5:
            own = rng.sample(SIGNALS + typed + ODD_NAMES, rng.randint(0, 4))
        fields = {name: value(name, odd and rng.random() < 0.3) for name in own}
        quality = {own[0]: Quality.bad(1, "x")} if odd and own and rng.random() < 0.2 else {}
        ts = T0 + i * 100_000_000
        if odd and rng.random() < 0.1:
            ts = rng.choice([2**64 + i, 2**63, -5, 0])  # beyond orjson's 64 bits, edges
        readings.append(Reading(m, ts, fields, tags, quality))
    return kind, readings


@pytest.mark.parametrize("use_orjson", ORJSON)
@pytest.mark.parametrize("precision", ["ns", "ms"])
@pytest.mark.parametrize("cache_max", [lineprotocol.CACHE_MAX, 3])
def test_encode_many_is_encode_on_random_batches(
    use_orjson: bool, precision: Any, cache_max: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(lineprotocol, "CACHE_MAX", cache_max)  # 3: caches cleared all along
    rng = random.Random(11)
    one = Encoder(precision=precision, use_orjson=use_orjson, log_interval_s=300)
    many = Encoder(precision=precision, use_orjson=use_orjson, log_interval_s=300)
    careful = _careful_counts(many, monkeypatch)
    shared = [{"site": "plant-a", "machine": "cnc-01"}, {"line": "l1"}]
    counters = ("points", "skipped_nonfinite", "skipped_empty", "skipped_invalid")
    readings = 0
    for _ in range(400):
        kind, batch = _random_batch(rng, shared)
        readings += len(batch)
        with structlog.testing.capture_logs() as logs_one:
            expected = b"\n".join(line for r in batch if (line := one.encode(r)) is not None)
        with structlog.testing.capture_logs() as logs_many:
            assert many.encode_many(batch) == expected
        if use_orjson and kind in ("common", "machines"):  # floats, ints, bools: all fast
            assert careful[-1] == 0, batch
        assert [getattr(many, c) for c in counters] == [getattr(one, c) for c in counters]
        assert logs_many == logs_one
        assert len(many._head_cache) <= cache_max
        shared[0]["site"] = rng.choice(["plant-a", "plant-b", "a b"])  # a stale prefix shows
        shared[1][rng.choice(["line", "device"])] = rng.choice(["l1", "l2", ""])
    # most batches formatted whole; the others reading by reading, but not all of them
    whole = careful.count(0)
    assert 0.4 * len(careful) < whole < len(careful) if use_orjson else whole == 0
    assert sum(careful) < readings / 4 if use_orjson else sum(careful) == readings


def _common(n: int, **fields: Any) -> list[Reading]:
    tags = {"site": "plant-a", "line": "line-1", "machine": "cnc-01", "device": "plc-1"}
    return [
        Reading("cnc-01", T0 + i, {"a": 1.5 + i, "b": -0.25, **fields}, dict(tags))
        for i in range(n)
    ]


@pytest.mark.skipif(lineprotocol._ORJSON_DUMPS is None, reason="orjson not installed")
@pytest.mark.parametrize(
    ("batch", "careful_count"),
    [
        (_common(50), 0),
        (_common(3, c=1e16, d=1.5e-7, e=-0.0, f=5e-324), 0),
        # other machines, another tag order, other fields: a template per reading
        ([*_common(2), reading({"b": 2.0, "a": 1.0}), reading({"x": 1.0}, machine="m2")], 0),
        ([*_common(2), reading({"a": 1.0}, tags={"line": "l2"})], 0),
        ([*_common(2), Reading("cnc-01", T0, {"b": 1.0, "a": 2.0}, _common(1)[0].tags)], 0),
        ([reading({"a": 1.0}, machine="m1"), reading({"a": 2.0}, machine="m 2")], 0),
        ([reading({"load_%": 1.0}, tags={"x": "50%"}) for _ in range(3)], 0),
        # timestamps written with %d, as encode() does, whatever they are
        ([*_common(2), reading({"a": 1.0}, time_ns=2**64)], 0),
        ([*_common(2), reading({"a": 1.0}, time_ns=float(T0))], 0),  # type: ignore[arg-type]
        # ints and bools, a type per field: a head per (names, types)
        ([*_common(2), reading({"a": 1}), reading({"a": True})], 0),
        (_common(3, c=7, d=True, e=False), 0),
        ([*_common(2), *_common(1, a=7)], 0),  # an int where the machine's first had a float
        ([*_common(2, c=1), *_common(1, c=True), *_common(1, c=2.5)], 0),  # bool, float: int
        ([*_common(2, c=True), *_common(2, c=1)], 0),  # an int where it had a bool
        (_common(4, c=2**63 - 1, d=-(2**63)), 0),  # int64's edges
        ([reading({"a": 1, "b": 2.0}, machine=m) for m in ("m1", "m2", "m1")], 0),
        ([reading({"a": 1, "b": 2.0}, machine="m1"), reading({"a": 1.5, "b": 2}, machine="m2")],
         0),
        # off the fast path: left to encode(), alone
        ([*_common(2), reading({"a": math.nan}), *_common(2)], 1),
        ([*_common(2, c=1), *_common(1, c=2**63), *_common(1, c=-(2**63) - 1)], 2),  # skipped
        ([*_common(2), *_common(1, c=-(2**63) - 1), *_common(1)], 1),
        ([*_common(2), *_common(1, a=10**400), *_common(1)], 1),  # huge: hypot would raise
        ([*_common(2, c=1), *_common(1, c=10**400), *_common(1, c=1)], 1),  # so checked before
        ([reading({"a": 1, "b": 2.0}, machine="m1"), reading({"a": 2**64, "b": 2.0}, machine="m2")],
         1),
        # m2's head is its first reading's (a float), which the check of values never sees
        ([reading({"a": 1}, machine="m1"), reading({"a": 1.5}, machine="m2", quality={"a": GOOD}),
          reading({"a": 2}, machine="m2")], 1),
        ([*_common(2, c=1), *_common(1, c=None), *_common(1, c="auto")], 2),
        # the machine's first reading of the batch cannot take the fast path: none of its do
        # (a string field is in every reading), and the other machine's still do
        ([*_common(1, c=None), *_common(2, c=1), reading({"a": 1.0}, machine="m2")], 3),
        ([*_common(2), reading({"a": np.float64(1.0)})], 1),
        ([*_common(2), reading({"a": np.int64(1)}), reading({"a": np.bool_(True)})], 2),
        ([reading({"a": 1.0}, quality={"a": GOOD}), *_common(2)], 1),
        ([*_common(2), reading({"a b": 1.0})], 1),  # not plain: %r formatting in encode()
        ([*_common(2), reading({}), *_common(1)], 1),
        # encode() sends a reading whose sum overflows down its careful path (repr: 1.5e-07)
        ([reading({"a": -1e308, "b": 0.0}), reading({"a": 1e308, "b": 1e308, "c": 1.5e-7})], 1),
        ([reading({"a": 1e300}) for _ in range(3)], 0),
    ],
)  # fmt: skip
def test_encode_many_leaves_to_encode_only_readings_off_its_fast_path(
    batch: list[Reading], careful_count: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    one, many = Encoder(), Encoder()
    careful = _careful_counts(many, monkeypatch)
    with structlog.testing.capture_logs() as logs_one:
        expected = b"\n".join(line for r in batch if (line := one.encode(r)) is not None)
    with structlog.testing.capture_logs() as logs_many:
        assert many.encode_many(iter(batch)) == expected
    assert careful == [careful_count]
    counters = ("points", "skipped_nonfinite", "skipped_empty", "skipped_invalid")
    assert [getattr(many, c) for c in counters] == [getattr(one, c) for c in counters]
    assert logs_many == logs_one


def test_encode_many_sees_a_tag_dict_changed_between_calls() -> None:
    tags = {"site": "plant-a", "line": "line-1"}
    enc = Encoder()
    first = enc.encode_many([Reading("m1", T0 + i, {"x": 1.0}, tags) for i in range(3)])
    tags["site"] = "plant-b"
    second = enc.encode_many([Reading("m1", T0 + i, {"x": 1.0}, tags) for i in range(3)])
    del tags["line"]
    third = enc.encode_many([Reading("m1", T0, {"x": 1.0}, tags)])
    assert [parse(line)[1]["site"] for line in first.split(b"\n")] == ["plant-a"] * 3
    assert [parse(line)[1]["site"] for line in second.split(b"\n")] == ["plant-b"] * 3
    assert parse(third)[1] == {"site": "plant-b", "machine": "m1"}
