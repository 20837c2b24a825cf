r"""InfluxDB line protocol: readings encoded fast, and nothing dropped without a count and a log.

Data layout (one point per :class:`~connectors.types.Reading`; one line, wrapped here)::

    machine,device=plc-1,line=line-1,machine=cnc-01,protocol=opcua,site=plant-a
        spindle_speed=8000.0,bearing_temperature_quality="bad:2156658688:BadSensorFailure"
        1767592800000000000

- measurement: ``machine`` (configurable: ``agent.measurement``);
- tags: the reading's tags (``site``, ``line``, ``machine``, ``device``, ``protocol``, ...), sorted
  by key as InfluxDB prefers; ``machine`` is added from ``Reading.machine`` when the tags lack it;
  a tag with an empty value is left out (InfluxDB refuses empty tag values);
- one field per signal: floats as the shortest text that reads back to the same double
  (``1.5``, ``2.0``, ``1e+16``), integers ``123i``, booleans ``true``/``false``, strings quoted;
- for each field whose quality is not good, a string field ``<field>_quality`` =
  ``"bad:<code>:<text>"`` or ``"uncertain:<code>:<text>"`` (``code`` in decimal: OPC UA
  StatusCode or Modbus exception), so a dashboard can show why a value is missing;
- the timestamp is ``Reading.time_ns`` at the encoder's precision (ns, us, ms or s).

What cannot be written is skipped, counted and logged (once per field and kind per
``log_interval_s``, five minutes by default), never dropped in silence as influxdb-client's
``Point`` does with NaN: ``None`` values (their ``_quality`` field says why; not counted),
NaN and ±Inf (``skipped_nonfinite``), values of other types or integers outside int64
(``skipped_invalid``). A point left with no field at all is not emitted (``skipped_empty``).

Escaping: the measurement escapes commas and spaces; tag keys, tag values and field keys escape
commas, equals signs and spaces; string values escape double quotes and backslashes. Other
backslashes stay literal, except one before a special character or another backslash, which is
doubled (VictoriaMetrics reads ``\\`` as one backslash, InfluxDB 1.x/2.x keep both; all
parse the line), and trailing ones in names and tag values, which are removed: InfluxDB 1.x
would read the separator after them as escaped. Line protocol cannot carry newlines in keys or
values: ``\n`` and ``\r`` become the two characters ``\n`` and ``\r``.

:meth:`Encoder.encode` returns one line without a trailing newline (``None`` when the point is
not emitted); join lines with ``b"\n"`` as :meth:`Encoder.encode_many` does.

Speed: the tag set and the field-name template of each machine are built once and cached; a
reading whose values are all finite floats and all good (the common case) is one ``%``
formatting. When ``orjson`` is installed, it formats such readings instead (its floats are
shortest round-trip too, written its own way: ``1.5e-7``, ``0.00001``): ``float.__repr__`` of a
17-digit double is most of the cost, and orjson's is several times cheaper.
:meth:`Encoder.encode_many` checks a batch in C, as a whole (each machine's tags and field
names, the types and finiteness of all the values), and formats its readings with one
``dumps`` of all their values and one ``%``: 1.35 µs a reading of 8 noisy floats, against 2.2
for :meth:`Encoder.encode` and 1.96 for the reading-by-reading batch it replaces
(``benchmarks/bench_pipeline.py``). A reading off that path is left to :meth:`Encoder.encode`
and the others still formatted together; but a value that is not a finite float (an integer,
NaN) has every reading of its batch checked one by one: 0.2 to 0.5 µs a reading more than
before for such a batch.

>>> from connectors.types import Quality
>>> enc = Encoder()
>>> r = Reading("cnc-01", 1_700_000_000_123_456_789,
...             {"speed": 8000.0, "parts": 3, "door_open": False, "mode": "auto", "temp": None},
...             tags={"site": "plant-a", "line": "l1", "device": ""},
...             quality={"temp": Quality.bad(0x808C0000, "BadSensorFailure")})
>>> print(*enc.encode(r).decode().split(" "), sep="\n")
machine,line=l1,machine=cnc-01,site=plant-a
speed=8000.0,parts=3i,door_open=false,mode="auto",temp_quality="bad:2156658688:BadSensorFailure"
1700000000123456789
>>> Encoder(precision="s").encode(Reading("m1", 1_700_000_000_999_999_999, {"x": 1.5}))
b'machine,machine=m1 x=1.5 1700000000'
"""

from __future__ import annotations

import importlib
import math
import numbers
import re
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from itertools import chain, compress
from typing import Any, Literal

import structlog

from connectors.types import QualityLevel, Reading

Precision = Literal["ns", "us", "ms", "s"]

#: Nanoseconds per unit of each precision.
DIVISORS: dict[str, int] = {"ns": 1, "us": 1_000, "ms": 1_000_000, "s": 1_000_000_000}
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
#: Each cache (tag sets, field names, templates) is cleared when it grows past this.
CACHE_MAX = 10_000

_MEASUREMENT_SPECIAL = ", "
_KEY_SPECIAL = ",= "
_GOOD = QualityLevel.GOOD
_isfinite = math.isfinite
_FLOAT = frozenset([float])  # _FLOAT.issuperset(map(type, values)): all values floats
_INT = frozenset([int])  # the same for integers
_hypot: Callable[..., float] = math.hypot  # sqrt of the sum of squares, without overflow
_COLON_TO_EQUALS = bytes.maketrans(b":", b"=")
#: Field names orjson writes as they are and line protocol needs no escape for.
_PLAIN = re.compile(r"[^\x00-\x20\"\\,=:]+")
_sum: Callable[[Iterable[Any]], float] = sum  # the fast path checks the types just before

log = structlog.get_logger(__name__)


def _no_orjson(_: object) -> bytes:
    raise AssertionError("orjson is used only when installed")  # pragma: no cover


class _Never:
    """The type no value has: the template of names the fast path must never take."""


def _load_orjson() -> Callable[[Any], bytes] | None:
    """``orjson.dumps`` when installed: shortest round-trip floats, written in Rust."""
    try:
        module = importlib.import_module("orjson")
    except ImportError:
        return None
    dumps: Callable[[Any], bytes] = module.dumps
    return dumps


_ORJSON_DUMPS = _load_orjson()


def escape(text: str, special: str = _KEY_SPECIAL) -> str:
    r"""Escape a measurement (``special=", "``), tag key, tag value or field key.

    >>> print(escape("a b,c=d"), escape("a b,c=d", ", "), escape("x\\y"), escape("C:\\"))
    a\ b\,c\=d a\ b\,c=d x\y C:
    """
    if not any(c in text for c in special + "\\\n\r"):
        return text
    text = text.rstrip("\\")  # InfluxDB 1.x would take the separator after it as escaped
    out: list[str] = []
    for i, ch in enumerate(text):
        if ch in special:
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\r":
            out.append("\\r")
        elif ch == "\\" and text[i + 1] in special + "\\\n\r":  # never last: stripped
            out.append("\\\\")
        else:
            out.append(ch)
    return "".join(out)


def quote(text: str) -> str:
    r"""A string field value: double-quoted, with ``"`` and ``\`` escaped.

    >>> print(quote('say "C:\\"'))
    "say \"C:\\\""
    """
    if '"' in text or "\\" in text or "\n" in text or "\r" in text:
        text = text.replace("\\", "\\\\").replace('"', '\\"')
        text = text.replace("\n", "\\n").replace("\r", "\\r")
    return f'"{text}"'


def _alike(readings: list[Reading]) -> bool:
    """Whether the readings have equal tags and the same field names in the same order."""
    n, first = len(readings), readings[0]
    return (
        [r.tags for r in readings].count(first.tags) == n
        # a dict's keys are distinct, so no reading can hold more than one round of the
        # names: n readings that list n rounds hold one each
        and list(chain.from_iterable([r.fields for r in readings])) == list(first.fields) * n
    )


class Encoder:
    """Readings to line protocol, one measurement and precision per encoder.

    ``machine_tag`` names the tag filled from ``Reading.machine`` when the reading's tags lack
    it (``None``: never). Counters: ``points`` emitted, ``skipped_nonfinite`` and
    ``skipped_invalid`` field values, ``skipped_empty`` points.

    >>> import structlog
    >>> def show(logger, method, event):
    ...     return " ".join(f"{k}={event[k]}" for k in ("event", "field", "value") if k in event)
    >>> structlog.configure(processors=[show])
    >>> enc = Encoder(log_interval_s=300)
    >>> for t in range(3):
    ...     line = enc.encode(Reading("m1", t, {"x": float("nan"), "y": 2.0}))
    event=nonfinite_value_skipped field=x value=nan
    >>> enc.encode(Reading("m1", 0, {"x": None}))
    event=point_skipped
    >>> enc.points, enc.skipped_nonfinite, enc.skipped_empty
    (3, 3, 1)
    """

    def __init__(
        self,
        measurement: str = "machine",
        precision: Precision = "ns",
        *,
        machine_tag: str | None = "machine",
        log_interval_s: float = 300.0,
        use_orjson: bool | None = None,
    ) -> None:
        if not measurement.rstrip("\\") or measurement.startswith("#") or "\n" in measurement:
            raise ValueError(f"measurement {measurement!r}: empty, a comment (#) or multi-line")
        if precision not in DIVISORS:
            raise ValueError(f"precision {precision!r} is not one of {', '.join(DIVISORS)}")
        if use_orjson and _ORJSON_DUMPS is None:
            raise ValueError("use_orjson=True but orjson is not installed")
        self.measurement = measurement
        self.precision = precision
        self.machine_tag = machine_tag
        self.log_interval_s = log_interval_s
        self.points = 0
        self.skipped_nonfinite = 0
        self.skipped_empty = 0
        self.skipped_invalid = 0
        self._dumps = _ORJSON_DUMPS if use_orjson in (None, True) else None
        self._dump: Callable[[Any], bytes] = self._dumps or _no_orjson
        self._divisor = DIVISORS[precision]
        self._measurement = escape(measurement, _MEASUREMENT_SPECIAL)
        self._prefixes: dict[tuple[str, ...], tuple[str, bytes]] = {}
        self._templates: dict[tuple[str, ...], tuple[tuple[type, ...], str, bool]] = {}
        self._field_keys: dict[str, str] = {}
        self._head_cache: dict[tuple[Any, ...], bytes] = {}
        self._quality_keys: dict[str, str] = {}
        self._log_state: dict[tuple[str, str], list[float]] = {}

    @property
    def uses_orjson(self) -> bool:
        return self._dumps is not None

    def encode(self, reading: Reading) -> bytes | None:
        """One line (no trailing newline), or ``None`` when no field could be written."""
        tags = reading.tags
        key = (reading.machine, *tags.keys(), *tags.values())  # flat: hashed fastest
        prefix = self._prefixes.get(key)
        if prefix is None:
            prefix = self._new_prefix(key, reading.machine, tags)
        ts = reading.time_ns if self._divisor == 1 else reading.time_ns // self._divisor
        fields = reading.fields
        if not reading.quality:
            template = self._templates.get(tuple(fields))
            if template is None:
                template = self._new_template(tuple(fields))
            # All floats, all finite: their sum is finite (NaN and ±Inf propagate), checked in C.
            # A sum that overflows only sends the reading down the careful path.
            values = fields.values()
            if tuple(map(type, values)) == template[0] and _isfinite(_sum(values)):
                self.points += 1
                if template[2]:
                    # orjson, plain names: {"a":1.5,"b":2.0} -> a=1.5,b=2.0 in one C pass.
                    text = self._dump(fields)[1:-1].translate(_COLON_TO_EQUALS, b'"')
                    return b"%b%b %d" % (prefix[1], text, ts)
                return f"{prefix[0]}{template[1] % tuple(values)} {ts}".encode()
        return self._encode_fields(reading, prefix[0], ts)

    def encode_many(self, readings: Iterable[Reading]) -> bytes:
        """Lines joined by ``\\n`` (no trailing newline); points not emitted leave no line.

        The batch twin of :meth:`encode`, same output. With orjson, the readings that take
        encode()'s orjson path are formatted together (:meth:`_format`); the others one by one
        with :meth:`encode`. Which readings those are is checked in C, for the whole batch at
        once: a line template each (:meth:`_heads_of`), and the types and finiteness of one
        flat list of all the values; only when some value fails is each reading checked.
        """
        if self._dumps is None:
            return b"\n".join([line for r in readings if (line := self.encode(r)) is not None])
        batch = readings if isinstance(readings, list) else list(readings)
        if not batch:
            return b""
        fields = [r.fields for r in batch]
        heads = self._heads_of(batch)
        # encode()'s orjson path takes a reading with plain field names (a head), no quality
        # entry, and all values floats with a finite sum
        every = all(heads) and not any(r.quality for r in batch)
        fast = (
            [True] * len(batch)
            if every
            else [bool(head) and not r.quality for r, head in zip(batch, heads, strict=True)]
        )
        values = list(chain.from_iterable(map(dict.values, compress(fields, fast))))
        if not (
            list(map(type, values)).count(float) == len(values)
            # finite, and too small for any reading's sum to overflow (NaN and ±Inf propagate)
            and _hypot(*values) * len(values) < 1e308
        ):
            fast = [  # reading by reading, as encode() does
                ok and _FLOAT.issuperset(map(type, v := f.values())) and _isfinite(_sum(v))
                for f, ok in zip(fields, fast, strict=True)
            ]
            every = False
            values = list(chain.from_iterable(map(dict.values, compress(fields, fast))))
        good = batch if every else list(compress(batch, fast))
        body = self._format(good, heads if every else list(compress(heads, fast)), values)
        self.points += len(good)
        if every:
            return body
        texts = iter(body.split(b"\n"))  # a line a reading: no line holds a newline
        lines = [next(texts) if ok else self.encode(r) for r, ok in zip(batch, fast, strict=True)]
        return b"\n".join([line for line in lines if line is not None])

    def _heads_of(self, batch: list[Reading]) -> list[bytes]:
        """:meth:`_head` of each reading. A machine's readings share the head of its first one
        when they have equal tags (so the same tag set) and the same field names (the common
        case), checked in C; the readings of a machine that does not are looked up one by one."""
        machines = [r.machine for r in batch]
        first = batch[0]
        groups: dict[str, list[Reading]]
        if machines.count(first.machine) == len(batch):
            groups = {first.machine: batch}
        else:
            groups = defaultdict(list)
            for r in batch:
                groups[r.machine].append(r)
        shared = {m: self._head(rs[0]) if _alike(rs) else None for m, rs in groups.items()}
        head = shared[first.machine]
        if len(groups) == 1 and head is not None:
            return [head] * len(batch)
        return [h if (h := shared[r.machine]) is not None else self._head(r) for r in batch]

    def _format(self, batch: list[Reading], heads: list[bytes], values: list[Any]) -> bytes:
        """The lines of readings on the orjson path, from their heads and all their values.

        The heads, each followed by its reading's timestamp, make one template of all the
        lines; ``dumps`` of the values, split at the commas, fills its ``%b`` slots at once.
        """
        if not batch:
            return b""
        stamps = [r.time_ns for r in batch]
        if self._divisor != 1:
            stamps = [t // self._divisor for t in stamps]
        times = (  # written with %d as encode() does: as orjson writes integers of 64 bits
            self._dump(stamps)[1:-1].split(b",")
            if _INT.issuperset(map(type, stamps))
            and min(stamps) >= INT64_MIN
            and max(stamps) < 2**64
            else list(map(b"%d".__mod__, stamps))
        )
        head = heads[0]
        if heads.count(head) == len(heads):  # one template (the common case): joined in C
            template = head + (b"\n" + head).join(times)
        else:
            template = b"\n".join(map(bytes.__add__, heads, times))
        return template % tuple(self._dump(values)[1:-1].split(b","))

    # -- the careful path: any type, quality fields, skips ------------------------------------
    def _encode_fields(self, reading: Reading, prefix: str, ts: int) -> bytes | None:
        parts: list[str] = []
        keys = self._field_keys
        for name, value in reading.fields.items():
            if value is None:
                continue
            key = keys.get(name)
            if key is None:
                key = self._new_field_key(name)
            text = self._value(value) if key else None
            if text is None:
                self._skipped(reading.machine, name, value, bool(key))
            else:
                parts.append(key + text)
        for name, quality in reading.quality.items():
            if quality.level is _GOOD:
                continue
            key = self._quality_keys.get(name)
            if key is None:
                key = self._new_field_key(name, "_quality")
            if key:
                level = quality.level.value
                parts.append(f"{key}{quote(f'{level}:{quality.code}:{quality.text}')}")
        if not parts:
            self.skipped_empty += 1
            self._log_limited("point_skipped", "", reading.machine, reason="no writable field")
            return None
        self.points += 1
        return f"{prefix}{','.join(parts)} {ts}".encode()

    @staticmethod
    def _value(value: object) -> str | None:
        """The value's line protocol text, or ``None`` when it cannot be written."""
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, int):
            return f"{int(value)}i" if INT64_MIN <= value <= INT64_MAX else None
        if isinstance(value, float):
            return repr(float(value)) if math.isfinite(value) else None
        if isinstance(value, str):
            return quote(value)
        if isinstance(value, numbers.Integral):  # numpy integers
            return Encoder._value(int(value))
        if isinstance(value, numbers.Real):  # numpy float32 and the like
            return Encoder._value(float(value))
        return None

    def _skipped(self, machine: str, name: str, value: object, has_key: bool) -> None:
        if has_key and isinstance(value, numbers.Real) and not math.isfinite(value):
            self.skipped_nonfinite += 1
            self._log_limited("nonfinite_value_skipped", name, machine, value=repr(value))
        else:
            self.skipped_invalid += 1
            integer = isinstance(value, numbers.Integral)
            reason = "integer outside int64" if integer else "unsupported type"
            if not has_key:
                reason = "empty field name"
            self._log_limited(
                "invalid_value_skipped", name, machine, reason=reason, type=type(value).__name__
            )

    def _log_limited(self, event: str, name: str, machine: str, **details: Any) -> None:
        """Log the first occurrence, then at most once per interval with the count since."""
        now = time.monotonic()
        state = self._log_state.get((event, name))
        if state is None:
            if len(self._log_state) >= CACHE_MAX:
                self._log_state.clear()
            self._log_state[(event, name)] = [now, 0.0]
        elif now - state[0] < self.log_interval_s:
            state[1] += 1
            return
        else:
            details["skipped_since_last_log"] = int(state[1]) + 1
            state[0], state[1] = now, 0.0
        if name:
            details["field"] = name
        log.warning(
            event,
            machine=machine,
            measurement=self.measurement,
            next_log_after_s=self.log_interval_s,
            **details,
        )

    # -- caches -------------------------------------------------------------------------------
    def _new_prefix(
        self,
        key: tuple[str, ...],
        machine: str,
        tags: dict[str, str],
    ) -> tuple[str, bytes]:
        items = dict(tags)
        if self.machine_tag and machine and not items.get(self.machine_tag):
            items[self.machine_tag] = machine
        parts = [self._measurement]
        for k in sorted(items):
            tag_key, tag_value = escape(k), escape(str(items[k]))
            if tag_key and tag_value:  # InfluxDB refuses empty tag values: the tag is left out
                parts.append(f"{tag_key}={tag_value}")
        text = ",".join(parts) + " "
        if len(self._prefixes) >= CACHE_MAX:
            self._prefixes.clear()
        self._prefixes[key] = prefix = (text, text.encode())
        return prefix

    def _new_template(self, names: tuple[str, ...]) -> tuple[tuple[type, ...], str, bool]:
        """(value types the fast path needs, ``%`` template, orjson usable for these names)."""
        keys = [self._field_keys.get(n) or self._new_field_key(n) for n in names]
        template: tuple[tuple[type, ...], str, bool]
        if not names or not all(keys):  # an empty name needs the careful path's count
            template = ((_Never,), "", False)
        else:
            # orjson writes a key as "name": no escaping of ours, none of JSON's, no colon.
            plain = self._dumps is not None and all(_PLAIN.fullmatch(n) for n in names)
            slots = ",".join(k.replace("%", "%%") + "%r" for k in keys)
            template = ((float,) * len(names), slots, plain)
        if len(self._templates) >= CACHE_MAX:
            self._templates.clear()
        self._templates[names] = template
        return template

    def _head(self, reading: Reading) -> bytes:
        """The reading's line up to its timestamp, a ``%b`` slot for each value (``b""`` when
        the reading cannot take the orjson path: field names not plain or empty, no field)."""
        tags, names = reading.tags, tuple(reading.fields)
        key = (reading.machine, len(tags), *tags.keys(), *tags.values(), *names)
        head = self._head_cache.get(key)
        if head is None:
            prefix_key = (reading.machine, *tags.keys(), *tags.values())
            prefix = self._prefixes.get(prefix_key) or self._new_prefix(
                prefix_key, reading.machine, tags
            )
            template = self._templates.get(names) or self._new_template(names)
            head = b""
            if template[2]:
                keys = [self._field_keys.get(n) or self._new_field_key(n) for n in names]
                slots = ",".join(k.replace("%", "%%") + "%b" for k in keys)
                head = prefix[1].replace(b"%", b"%%") + slots.encode() + b" "
            if len(self._head_cache) >= CACHE_MAX:
                self._head_cache.clear()
            self._head_cache[key] = head
        return head

    def _new_field_key(self, name: str, suffix: str = "") -> str:
        """``escaped-name=`` ("" for a name that escapes to nothing: it cannot be written)."""
        cache = self._quality_keys if suffix else self._field_keys
        if len(cache) >= CACHE_MAX:
            cache.clear()
        escaped = escape(name + suffix) if name else ""
        cache[name] = key = f"{escaped}=" if escaped else ""
        return key
