"""Leaf types shared by simulators, connectors, analytics glue and the agent.

This module imports nothing from the project. A :class:`Reading` is the values of one machine at
one instant and becomes one InfluxDB point; each field may carry a :class:`Quality` that says how
far the value can be trusted and what the source said about it.

>>> r = Reading(machine="cnc-01", time_ns=1_700_000_000_000_000_000,
...             fields={"spindle_speed": 8000.0, "bearing_temperature": None},
...             quality={"bearing_temperature": Quality.bad(0x808B0000, "BadSensorFailure")})
>>> r.quality_of("spindle_speed").level, r.quality_of("bearing_temperature").level
(<QualityLevel.GOOD: 'good'>, <QualityLevel.BAD: 'bad'>)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum

FieldValue = float | int | bool | str | None


class QualityLevel(StrEnum):
    """The three OPC UA quality classes; Modbus errors map onto them too."""

    GOOD = "good"
    UNCERTAIN = "uncertain"
    BAD = "bad"


@dataclass(frozen=True, slots=True)
class Quality:
    """How far a value can be trusted, with the source's own status.

    ``code`` is the source's numeric status: an OPC UA StatusCode (32-bit) or a Modbus exception
    code (1..11), 0 when the source gave none. ``text`` is its name, e.g. ``BadSensorFailure`` or
    ``modbus exception 2 (illegal data address)``.
    """

    level: QualityLevel
    code: int = 0
    text: str = ""

    @classmethod
    def bad(cls, code: int = 0, text: str = "") -> Quality:
        return cls(QualityLevel.BAD, code, text)

    @classmethod
    def uncertain(cls, code: int = 0, text: str = "") -> Quality:
        return cls(QualityLevel.UNCERTAIN, code, text)

    @property
    def is_good(self) -> bool:
        return self.level is QualityLevel.GOOD


GOOD = Quality(QualityLevel.GOOD)


@dataclass(slots=True)
class Reading:
    """Values of one machine at one instant: one InfluxDB point.

    ``time_ns`` is the source timestamp (nanoseconds since the Unix epoch) when the device gives
    one, else the acquisition time. ``fields`` maps signal name to value; a value whose quality is
    bad may be ``None`` (marked, never invented). ``quality`` lists only the fields that are not
    good, so the common case costs nothing.
    """

    machine: str
    time_ns: int
    fields: dict[str, FieldValue]
    tags: dict[str, str] = field(default_factory=dict)
    quality: dict[str, Quality] = field(default_factory=dict)

    def quality_of(self, name: str) -> Quality:
        return self.quality.get(name, GOOD)


@dataclass(frozen=True, slots=True)
class SignalInfo:
    """What a consumer needs to know about one signal: unit and normal engineering range."""

    name: str
    unit: str
    low: float
    high: float
    description: str = ""


def signal_table(signals: Mapping[str, SignalInfo]) -> str:
    """Format signals as an aligned text table (used by CLIs)."""
    rows = [(s.name, s.unit, f"{s.low:g}..{s.high:g}", s.description) for s in signals.values()]
    widths = [max((len(r[i]) for r in rows), default=0) for i in range(3)]
    return "\n".join(
        f"{n:<{widths[0]}}  {u:<{widths[1]}}  {rng:<{widths[2]}}  {d}".rstrip()
        for n, u, rng, d in rows
    )
