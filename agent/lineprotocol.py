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

Speed: the tag set of each machine and the template of each (field names, value types) pair
are built once and cached; a reading whose values are all good and all finite floats, integers
within int64 or booleans (the common case: a device's fields keep their types) is one ``%``
formatting (``%r`` for a float, ``%di`` for an integer; without orjson a boolean takes the
careful path). When ``orjson`` is installed, it formats such readings instead (its floats are
shortest round-trip too, written its own way: ``1.5e-7``, ``0.00001``; its integers and
booleans as line protocol's, an ``i`` added after an integer): ``float.__repr__`` of a 17-digit
double is most of the cost, and orjson's is several times cheaper.
:meth:`Encoder.encode_many` checks a batch in C, as a whole (each machine's tags, field names
and value types, the int64 range of the integers, the finiteness of all the values), and formats
its readings with one ``dumps`` of all their values and one ``%``. A reading of 8 noisy fields,
in batches of 200 of one machine: 1.2 µs with 8 floats, 1.3 with 2 integers among them, 1.2 with
a boolean, against 2.3, 3.1 and 2.3 for :meth:`Encoder.encode` (before integers and booleans
took the fast path: 8.0 and 7.9 in a batch, 7.1 with encode(); ``benchmarks/bench_pipeline.py``).
A reading off that path is left to :meth:`Encoder.encode` and the others still formatted
together; but a value that fails the check (NaN, a type other than its machine's first reading
of the batch had) has every reading of its batch checked one by one, each with the template of
its own types: 2.2 µs a reading of 8 floats for a batch with one NaN. A machine whose first
reading of the batch holds a value of another type (a string, None) has its readings of the
batch all left to :meth:`Encoder.encode`.

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
from operator import itemgetter
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
_INT = frozenset([int])  # _INT.issuperset(map(type, values)): all values integers
#: The value types the fast path writes (exact types: a numpy scalar takes the careful path).
_FAST_TYPES = frozenset([float, int, bool])
_hypot: Callable[..., float] = math.hypot  # sqrt of the sum of squares, without overflow
_COLON_TO_EQUALS = bytes.maketrans(b":", b"=")
#: Field names orjson writes as they are and line protocol needs no escape for.
_PLAIN = re.compile(r"[^\x00-\x20\"\\,=:]+")
_sum: Callable[[Iterable[Any]], float] = sum  # the fast path checks the types just before

log = structlog.get_logger(__name__)


def _no_orjson(_: object) -> bytes:
    raise AssertionError("orjson is used only when installed")  # pragma: no cover


# How encode() writes a reading of good values, by its (field names, value types):
_CAREFUL = 0  # one value at a time (_encode_fields): other types, empty names, bools in _TEXT
_DICT = 1  # orjson dumps the dict, its keys become field keys (plain names; floats and bools)
_SLOTS = 2  # orjson's text of each value fills a slot: b"a=%b,n=%bi" (plain names; ints)
_TEXT = 3  # one % formatting: "a=%r,n=%di" (floats and ints)


#: The fast path of one (field names, value types) pair, in any line: (the value types; the
#: path; which values are ints (their range is checked), None: no int; the _TEXT template
#: "a=%r,n=%di"; the template b"a=%b,n=%bi" orjson's text of each value fills, b"" when the
#: names are not plain). Plain tuples, here and in _Head: a NamedTuple's fields are slower to
#: read (Python 3.11 specializes reading and unpacking for exact tuples only).
_Template = tuple[tuple[type, ...], int, tuple[bool, ...] | None, str, bytes]
#: Encoder.encode_many's template of one (machine, tags, field names, value types): (the line up
#: to the timestamp, a ``%b`` slot for each value, b"" when the reading cannot take the orjson
#: path; the value types; which values are ints, None: no int; the same, always a tuple, for
#: chaining the masks of several heads).
_Head = tuple[bytes, tuple[type, ...], tuple[bool, ...] | None, tuple[bool, ...]]
_TEXTS, _TYPES, _INTS, _MASKS = map(itemgetter, range(4))  # a _Head's fields, read in C


def _in_int64(values: Iterable[Any], ints: Iterable[bool]) -> bool:
    """Whether the values ``ints`` selects (integers, at least one) are all within int64."""
    found: list[int] = list(compress(values, ints))
    return min(found) >= INT64_MIN and max(found) <= INT64_MAX


def _batch_fits(values: list[Any], heads: list[_Head], like: _Head | None) -> bool:
    """Whether all the values (of the readings whose heads these are) take the fast path, checked
    in C, at once: each of the type its head was made for, ints within int64, and floats
    finite and too small for any reading's sum to overflow, as :meth:`Encoder.encode` needs.

    The int64 check comes before ``hypot``, which raises ``OverflowError`` for an integer
    beyond 1e308 (and takes NaN, ±Inf: NaN and ±Inf propagate). ``like``: a head whose value
    types all the heads have (the common case), ``None`` when not known."""
    if not heads:
        return True
    ints: Iterable[bool] | None = None
    if like is not None:
        _, like_types, like_ints, _ = like
        types = list(like_types) * len(heads)
        if like_ints:
            ints = like_ints * len(heads)
    else:
        types = list(chain.from_iterable(map(_TYPES, heads)))
        if any(map(_INTS, heads)):
            ints = list(chain.from_iterable(map(_MASKS, heads)))
    return (
        list(map(type, values)) == types
        and (ints is None or _in_int64(values, ints))
        and _hypot(*values) * len(values) < 1e308
    )


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
        self._templates: dict[tuple[str, ...], _Template] = {}  # the last used for the names
        self._typed_templates: dict[tuple[Any, ...], _Template] = {}  # by (*names, *types)
        self._field_keys: dict[str, str] = {}
        self._head_cache: dict[tuple[Any, ...], _Head] = {}
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
            values = fields.values()
            names, types = tuple(fields), tuple(map(type, values))
            template = self._templates.get(names)
            if template is None or template[0] != types:  # new names, or other types
                template = self._template(names, types)
            _, path, ints, text, slots = template
            # Ints within int64; floats finite: their sum is finite (NaN and ±Inf propagate),
            # checked in C. A sum that overflows only sends the reading down the careful path.
            if path and (ints is None or _in_int64(values, ints)) and _isfinite(_sum(values)):
                self.points += 1
                if path == _DICT:
                    # orjson, plain names: {"a":1.5,"b":true} -> a=1.5,b=true in one C pass.
                    body = self._dump(fields)[1:-1].translate(_COLON_TO_EQUALS, b'"')
                    return b"%b%b %d" % (prefix[1], body, ts)
                if path == _SLOTS:  # orjson, plain names, ints: b"a=%b,n=%bi"
                    texts = self._dump(list(values))[1:-1].split(b",")  # numbers: no comma
                    return b"%b%b %d" % (prefix[1], slots % tuple(texts), ts)
                return f"{prefix[0]}{text % tuple(values)} {ts}".encode()
        return self._encode_fields(reading, prefix[0], ts)

    def encode_many(self, readings: Iterable[Reading]) -> bytes:
        """Lines joined by ``\\n`` (no trailing newline); points not emitted leave no line.

        The batch twin of :meth:`encode`, same output. With orjson, the readings that take
        encode()'s orjson paths are formatted together (:meth:`_format`); the others one by one
        with :meth:`encode`. Which readings those are is checked in C, for the whole batch at
        once: a line template each (:meth:`_heads_of`), and the types, int64 range and
        finiteness of one flat list of all the values (:func:`_batch_fits`); only when some
        value fails is each reading checked (:meth:`_refit`).
        """
        if self._dumps is None:
            return b"\n".join([line for r in readings if (line := self.encode(r)) is not None])
        batch = readings if isinstance(readings, list) else list(readings)
        if not batch:
            return b""
        fields = [r.fields for r in batch]
        heads, like = self._heads_of(batch)
        # encode()'s orjson paths take a reading with plain field names (a head), no quality
        # entry, and values of its head's types: finite floats, ints within int64, bools
        every = like is not None and not any(r.quality for r in batch)
        fast = (
            [True] * len(batch)
            if every
            else [bool(h[0]) and not r.quality for r, h in zip(batch, heads, strict=True)]
        )
        good = heads if every else list(compress(heads, fast))
        values = list(chain.from_iterable(map(dict.values, compress(fields, fast))))
        if not _batch_fits(values, good, like):
            refit = [  # reading by reading, as encode() does, each with its own types' head
                self._refit(r, h) if ok else None
                for r, h, ok in zip(batch, heads, fast, strict=True)
            ]
            fast = list(map(bool, refit))  # a head (a tuple of 4) is true, None false
            every = False
            good = list(filter(None, refit))
            values = list(chain.from_iterable(map(dict.values, compress(fields, fast))))
        body = self._format(batch if every else list(compress(batch, fast)), good, values)
        self.points += len(good)
        if every:
            return body
        texts = iter(body.split(b"\n"))  # a line a reading: no line holds a newline
        lines = [next(texts) if ok else self.encode(r) for r, ok in zip(batch, fast, strict=True)]
        return b"\n".join([line for line in lines if line is not None])

    def _refit(self, reading: Reading, head: _Head) -> _Head | None:
        """The head of the reading's own value types when encode() would take its orjson path
        with it (the check of :meth:`encode`), else ``None``."""
        values = reading.fields.values()
        if tuple(map(type, values)) != head[1]:  # not those its machine's first reading had
            head = self._head(reading)
        text, _, ints, _ = head
        if text and (ints is None or _in_int64(values, ints)) and _isfinite(_sum(values)):
            return head
        return None

    def _heads_of(self, batch: list[Reading]) -> tuple[list[_Head], _Head | None]:
        """:meth:`_head` of each reading, and a head on the fast path whose value types they all
        have (the common case; ``None`` when not so or not known).

        A machine's readings share the head of its first one when they have equal tags (so
        the same tag set) and the same field names (the common case), checked in C; the
        readings of a machine that does not are looked up one by one. A reading sharing the
        head of other value types than its own is found by :func:`_batch_fits`, and given its
        own head by :meth:`_refit`; but when the first reading's types cannot take the fast
        path (a string, None, NaN...), the machine's readings of the batch all go to
        :meth:`encode` (a string field is in every reading)."""
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
        like = head if head is not None and head[0] else None
        if len(groups) == 1 and head is not None:
            return [head] * len(batch), like
        if like is not None:  # several machines, of one set of value types: mapped in C
            alike = {m: h for m, h in shared.items() if h is not None and h[0] and h[1] == like[1]}
            if len(alike) == len(shared):
                return list(map(alike.__getitem__, machines)), like
        heads = [h if (h := shared[r.machine]) is not None else self._head(r) for r in batch]
        return heads, None

    def _format(self, batch: list[Reading], heads: list[_Head], values: list[Any]) -> bytes:
        """The lines of readings on the orjson path, from their heads and all their values.

        The heads, each followed by its reading's timestamp, make one template of all the
        lines; ``dumps`` of the values, split at the commas, fills its ``%b`` slots at once
        (an int's slot is ``%bi``).
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
            template = head[0] + (b"\n" + head[0]).join(times)
        else:
            template = b"\n".join(map(bytes.__add__, map(_TEXTS, heads), times))
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
        integer = isinstance(value, numbers.Integral)  # finite (isfinite(10**400) raises)
        if has_key and not integer and isinstance(value, numbers.Real) and not _isfinite(value):
            self.skipped_nonfinite += 1
            self._log_limited("nonfinite_value_skipped", name, machine, value=repr(value))
        else:
            self.skipped_invalid += 1
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

    def _template(self, names: tuple[str, ...], types: tuple[type, ...]) -> _Template:
        """The template of these field names and value types, made the names' current one (a
        device's types seldom change: :meth:`encode` looks a template up by the names)."""
        key = (*names, *types)
        template = self._typed_templates.get(key) or self._new_template(names, types)
        if len(self._typed_templates) >= CACHE_MAX:
            self._typed_templates.clear()
        if len(self._templates) >= CACHE_MAX:
            self._templates.clear()
        self._typed_templates[key] = self._templates[names] = template
        return template

    def _new_template(self, names: tuple[str, ...], types: tuple[type, ...]) -> _Template:
        """The fast path of readings with these field names and value types: the first that
        fits of :data:`_DICT`, :data:`_SLOTS`, :data:`_TEXT`, else :data:`_CAREFUL`."""
        keys = [self._field_keys.get(n) or self._new_field_key(n) for n in names]
        # orjson writes a key as "name": no escaping of ours, none of JSON's, no colon.
        plain = self._dumps is not None and all(_PLAIN.fullmatch(n) for n in names)
        ints = tuple(t is int for t in types) if int in types else None
        if not (
            names
            and all(keys)  # an empty name needs the careful path's count
            and _FAST_TYPES.issuperset(types)
            and (plain or bool not in types)  # %-formatting writes no bool as true/false
        ):
            return (types, _CAREFUL, ints, "", b"")
        pairs = list(zip([k.replace("%", "%%") for k in keys], types, strict=True))
        text = ",".join(k + ("%di" if t is int else "%r") for k, t in pairs)
        slots = ",".join(k + ("%bi" if t is int else "%b") for k, t in pairs)
        path = (_SLOTS if ints else _DICT) if plain else _TEXT
        return (types, path, ints, text, slots.encode() if plain else b"")

    def _head(self, reading: Reading) -> _Head:
        """The reading's :data:`_Head`: its line up to its timestamp, a ``%b`` slot for each
        value (text ``b""`` when the reading cannot take the orjson path: field names not plain
        or empty, no field, values of other types)."""
        tags, fields = reading.tags, reading.fields
        types = tuple(map(type, fields.values()))
        key = (reading.machine, len(tags), *tags.keys(), *tags.values(), *fields, *types)
        head = self._head_cache.get(key)
        if head is None:
            prefix_key = (reading.machine, *tags.keys(), *tags.values())
            prefix = self._prefixes.get(prefix_key) or self._new_prefix(
                prefix_key, reading.machine, tags
            )
            _, _, ints, _, slots = self._template(tuple(fields), types)
            text = prefix[1].replace(b"%", b"%%") + slots + b" " if slots else b""
            head = (text, types, ints, ints or (False,) * len(types))
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
