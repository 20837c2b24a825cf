"""The Modbus register map of a simulated machine, generated from its model.

Every unit id (one per machine) has the same layout; addresses are 0-based protocol addresses
(what goes on the wire; "40001"-style numbers are this plus 40001):

Holding registers (FC3)
    ``0``      status word, uint16: bit 0 = device healthy (every sensor good),
               bit 1 = at least one sensor failed.
    ``1..4``   timestamp of the current values, uint64, ms since the Unix epoch (word order).
    ``100+2i`` signal ``i`` as float32 (word order); NaN while the sensor has failed.
Input registers (FC4)
    ``i``      signal ``i`` as scaled int16: ``raw = round(value / resolution)`` clamped to
               -32767..32767; -32768 (0x8000) marks a failed sensor.
Discrete inputs (FC2)
    ``i``      1 while signal ``i`` is good.
Coils (FC1)
    ``0``      device healthy; ``1`` any sensor failed.

Everything else is unmapped: a read that touches it gets Modbus exception 2. A sensor is *good*
when it has a value and its OPC UA status is Good (0). The word order (ABCD, CDAB, BADC, DCBA,
see :mod:`connectors.codec`) is the scenario's ``modbus.word_order``.

>>> from simulators.models.cnc import CncMachine
>>> rmap = RegisterMap.for_model(CncMachine, "CDAB")
>>> e = rmap.entry("bearing_temperature")
>>> e.table, e.address, e.type, e.count, e.order, e.unit
('holding', 106, 'float32', 2, 'CDAB', '°C')
>>> rmap.entry("bearing_temperature", "input").scale
0.01
>>> [(b.start, b.count) for b in rmap.blocks("holding")]
[(0, 5), (100, 14)]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from functools import cache
from math import isnan
from typing import Any, Literal, get_args

from connectors.codec import Codec, RegisterType, WordOrder
from simulators.models.base import MachineModel, Signal

Table = Literal["coil", "discrete", "holding", "input"]
TABLES: tuple[Table, ...] = get_args(Table)
#: The Modbus function code that reads each table.
READ_FUNCTION: dict[Table, int] = {"coil": 1, "discrete": 2, "holding": 3, "input": 4}

STATUS_ADDRESS = 0
TIMESTAMP_ADDRESS = 1
FLOAT_BASE = 100
STATUS_HEALTHY = 0x0001
STATUS_SENSOR_FAILED = 0x0002
INT16_MAX = 32767
#: The int16 copy of a failed sensor: -32768, as the unsigned register value 0x8000.
INT16_FAILED = -32768
_FAILED_REG = 0x8000
_NAN = float("nan")


@dataclass(frozen=True, slots=True)
class RegisterEntry:
    """One mapped value: where it lives, how it is encoded, what it means."""

    name: str
    table: Table
    address: int
    type: RegisterType
    count: int = 1
    scale: float = 1.0
    unit: str = ""
    order: WordOrder = "ABCD"
    description: str = ""

    @property
    def end(self) -> int:
        """First address after this entry."""
        return self.address + self.count

    def as_dict(self) -> dict[str, Any]:
        """The entry as plain data (field name -> value)."""
        return asdict(self)


@dataclass(frozen=True, slots=True)
class Block:
    """A contiguous mapped address range of one table."""

    table: Table
    start: int
    count: int


@dataclass(slots=True)
class RegisterImage:
    """The served contents of one unit: per table, blocks of (start address, plain list)."""

    tables: dict[Table, tuple[tuple[int, list[int]], ...]]

    def read(self, table: Table, address: int, count: int) -> list[int] | None:
        """Values at ``address .. address+count-1``, or None if any of them is unmapped."""
        for start, values in self.tables[table]:
            off = address - start
            if off >= 0 and count >= 1 and off + count <= len(values):
                return values[off : off + count]
        return None


class RegisterMap:
    """The register layout of one machine kind in one word order, and its encoder."""

    __slots__ = ("_f32", "_res", "_ts", "entries", "kind", "signals", "word_order")

    def __init__(
        self, signals: Sequence[Signal], word_order: WordOrder = "ABCD", kind: str = ""
    ) -> None:
        if not signals:
            raise ValueError("a register map needs at least one signal")
        if FLOAT_BASE + 2 * len(signals) > 65536:
            raise ValueError(f"{len(signals)} signals do not fit in 16-bit register addresses")
        self.kind = kind
        self.word_order: WordOrder = word_order
        self.signals = tuple(signals)
        self._f32 = Codec("float32", word_order)
        self._ts = Codec("uint64", word_order)
        self._res = tuple(s.resolution for s in self.signals)
        self.entries = self._layout()

    @classmethod
    def for_model(
        cls, model_cls: type[MachineModel], word_order: WordOrder = "ABCD"
    ) -> RegisterMap:
        """The (shared, immutable) map of a machine model class."""
        return _for_model(model_cls, word_order)

    def _layout(self) -> tuple[RegisterEntry, ...]:
        order = self.word_order
        out = [
            RegisterEntry("status", "holding", STATUS_ADDRESS, "uint16",
                          description="bit 0 device healthy, bit 1 a sensor failed"),
            RegisterEntry("timestamp", "holding", TIMESTAMP_ADDRESS, "uint64", 4, unit="ms",
                          order=order, description="time of the values, ms since the Unix epoch"),
        ]  # fmt: skip
        for i, s in enumerate(self.signals):
            out.append(
                RegisterEntry(
                    s.name,
                    "holding",
                    FLOAT_BASE + 2 * i,
                    "float32",
                    2,
                    unit=s.unit,
                    order=order,
                    description=s.description,
                )
            )
        for i, s in enumerate(self.signals):
            out.append(
                RegisterEntry(
                    s.name,
                    "input",
                    i,
                    "int16",
                    scale=s.resolution,
                    unit=s.unit,
                    description=f"{s.description}; -32768 = failed",
                )
            )
        for i, s in enumerate(self.signals):
            out.append(RegisterEntry(s.name, "discrete", i, "bit", description=f"{s.name} good"))
        out.append(RegisterEntry("healthy", "coil", 0, "bit", description="every sensor good"))
        out.append(RegisterEntry("sensor_failed", "coil", 1, "bit", description="a sensor failed"))
        return tuple(out)

    # -- lookup --------------------------------------------------------------------------------
    def entries_in(self, table: Table) -> tuple[RegisterEntry, ...]:
        """Entries of one table in address order."""
        return tuple(e for e in self.entries if e.table == table)

    def entry(self, name: str, table: Table = "holding") -> RegisterEntry:
        """The entry for ``name`` (a signal, ``status``, ``timestamp``...) in ``table``."""
        for e in self.entries:
            if e.name == name and e.table == table:
                return e
        raise KeyError(f"no {table} entry named {name!r} in the {self.kind or 'machine'} map")

    def blocks(self, table: Table) -> tuple[Block, ...]:
        """Contiguous mapped ranges of ``table``; a read must stay inside one of them."""
        out: list[Block] = []
        for e in self.entries_in(table):
            if out and out[-1].start + out[-1].count == e.address:
                last = out.pop()
                out.append(Block(table, last.start, last.count + e.count))
            else:
                out.append(Block(table, e.address, e.count))
        return tuple(out)

    # -- printing ------------------------------------------------------------------------------
    def as_dict(self) -> dict[str, Any]:
        """Plain data (JSON/YAML friendly) for ``factory-sim print-config`` and docs."""
        return {
            "kind": self.kind,
            "word_order": self.word_order,
            "registers": [e.as_dict() for e in self.entries],
        }

    def describe(self) -> str:
        """An aligned text table of every entry, one per line."""
        head = ("table", "address", "type", "count", "order", "scale", "unit", "name")
        rows = [head] + [
            (e.table, str(e.address), e.type, str(e.count),
             e.order if e.count > 1 else "", f"{e.scale:g}", e.unit, e.name)
            for e in self.entries
        ]  # fmt: skip
        widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
        return "\n".join(
            "  ".join(f"{c:<{w}}" for c, w in zip(r, widths, strict=True)).rstrip() for r in rows
        )

    # -- encoding (hot path) -------------------------------------------------------------------
    def render(
        self, values: Sequence[float | None], status: Sequence[int], time_ns: int
    ) -> RegisterImage:
        """Encode one machine's current values into a fresh :class:`RegisterImage`.

        ``values``/``status`` are in signal order (``None`` value = failed sensor). Costs a few
        microseconds per machine: two struct calls for the floats, a loop for the int16 copy.
        A NaN value (never produced by the sensor layer) is served as NaN and -32768.
        """
        n = len(self._res)
        if len(values) != n or len(status) != n:
            raise ValueError(f"{self.kind or 'machine'} has {n} signals, got "
                             f"{len(values)} values and {len(status)} statuses")  # fmt: skip
        healthy = None not in values and not any(status)  # the common case, at C speed
        if healthy:
            bits = [1] * n
        else:
            bits = [int(v is not None and s == 0) for v, s in zip(values, status, strict=True)]
        head = [STATUS_HEALTHY if healthy else STATUS_SENSOR_FAILED,
                *self._ts.encode(time_ns // 1_000_000)]  # fmt: skip
        floats = self._f32.encode_many([_NAN if v is None else v for v in values])
        ints: list[int] = []
        for v, res in zip(values, self._res, strict=True):
            if v is None or isnan(v):
                ints.append(_FAILED_REG)
                continue
            x = v / res
            raw = INT16_MAX if x >= INT16_MAX else -INT16_MAX if x <= -INT16_MAX else round(x)
            ints.append(raw & 0xFFFF)
        return RegisterImage({
            "holding": ((STATUS_ADDRESS, head), (FLOAT_BASE, floats)),
            "input": ((0, ints),),
            "discrete": ((0, bits),),
            "coil": ((0, [1 if healthy else 0, 0 if healthy else 1]),),
        })  # fmt: skip


@cache
def _for_model(model_cls: type[MachineModel], word_order: WordOrder) -> RegisterMap:
    return RegisterMap(model_cls.signals, word_order, model_cls.kind)
