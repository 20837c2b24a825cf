"""What the analytics produce: explanations and anomaly episodes.

Plain data, no project imports. A score is normalised so that **1.0 is the limit** learned from
training (a quantile of the training scores): below 1 is normal, above 1 is beyond anything
normal running showed. An :class:`Explanation` says which signals made the score, with
what was observed and what was expected, in the signal's unit. An :class:`Episode` is one
anomaly from the moment it opened to the moment it closed.

>>> c = Contribution("flow_rate", 0.71, observed=24.1, expected=31.5, spread=1.2, unit="m³/h")
>>> c.sentence()
'flow_rate contributes 71 %; observed 24.1 m³/h, expected 31.5 ± 1.2'
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any


def _num(v: float) -> str:
    """A value the way an engineer reads it: 3 significant digits, no exponent below 1e6."""
    if math.isnan(v):
        return "n/a"
    a = abs(v)
    if a >= 1e6 or (a < 1e-3 and a != 0):
        return f"{v:.3g}"
    if a >= 100:
        return f"{v:.0f}"
    if a >= 10:
        return f"{v:.1f}"
    if a >= 1:
        return f"{v:.2f}"
    return f"{v:.3f}"


@dataclass(frozen=True, slots=True)
class Contribution:
    """One signal's part in a score: its share (0..1), observed vs expected ± spread."""

    signal: str
    share: float
    observed: float
    expected: float
    spread: float
    unit: str = ""

    def sentence(self) -> str:
        unit = f" {self.unit}" if self.unit else ""
        if math.isnan(self.expected):  # a detector with no expectation (gap, flatline)
            head = f"{self.signal} contributes {self.share * 100:.0f} %"
            return (
                head
                if math.isnan(self.observed)
                else f"{head}; observed {_num(self.observed)}{unit}"
            )
        return (
            f"{self.signal} contributes {self.share * 100:.0f} %; observed "
            f"{_num(self.observed)}{unit}, expected {_num(self.expected)} ± {_num(self.spread)}"
        )


@dataclass(frozen=True, slots=True)
class Explanation:
    """Why a score is what it is: the detector that gave it and the signals behind it."""

    detector: str
    score: float
    contributions: tuple[Contribution, ...] = ()
    note: str = ""  # e.g. "no data for 12 s", "value unchanged for 40 s"

    def top(self, n: int = 3) -> tuple[Contribution, ...]:
        return tuple(sorted(self.contributions, key=lambda c: -c.share)[:n])

    def sentence(self, n: int = 3) -> str:
        parts = [c.sentence() for c in self.top(n)]
        if self.note:
            parts.insert(0, self.note)
        return "; ".join(parts) if parts else self.detector


#: OPC UA Alarms & Conditions severities: 1 (lowest) .. 1000 (highest).
SEVERITY_MIN, SEVERITY_MAX = 1, 1000


def severity(score: float) -> int:
    """Map a normalised peak score to 1..1000 on a log scale.

    1.0 (just at the limit) is 200 ("low"), 2× the limit 400, 4× 600, 8× 800, ≥ 16× is 1000.

    >>> [severity(s) for s in (0.5, 1.0, 2.0, 4.0, 8.0, 100.0)]
    [100, 200, 400, 600, 800, 1000]
    """
    if not score > 0:
        return SEVERITY_MIN
    value = 200 + 200 * math.log2(score)
    return int(min(SEVERITY_MAX, max(SEVERITY_MIN, round(value))))


@dataclass(slots=True)
class Episode:
    """One anomaly: machine, start, end, how bad, why, and who raised it.

    Times are nanoseconds since the Unix epoch in the source's clock (machine time). ``end_ns``
    is ``None`` while the episode is open. ``contributions`` are the top signals at the peak.
    """

    machine: str
    start_ns: int
    detector: str
    model_version: str
    peak_score: float
    peak_ns: int
    contributions: tuple[Contribution, ...] = ()
    note: str = ""
    end_ns: int | None = None
    tags: dict[str, str] = field(default_factory=dict)
    id: str = ""  # set by whoever stores it: "<machine>-<start_ns>"

    def __post_init__(self) -> None:
        if not self.id:
            self.id = f"{self.machine}-{self.start_ns}"

    @property
    def severity(self) -> int:
        return severity(self.peak_score)

    @property
    def is_open(self) -> bool:
        return self.end_ns is None

    def explanation(self) -> Explanation:
        return Explanation(self.detector, self.peak_score, self.contributions, self.note)

    def summary(self) -> str:
        """One line for logs and the inbox: what, where, how bad, why."""
        return (
            f"{self.machine}: anomaly severity {self.severity} ({self.detector}); "
            f"{self.explanation().sentence()}"
        )

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["severity"] = self.severity
        d["contributions"] = [asdict(c) for c in self.contributions]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Episode:
        d = dict(d)
        d.pop("severity", None)
        d["contributions"] = tuple(Contribution(**c) for c in d.get("contributions", ()))
        d["tags"] = dict(d.get("tags") or {})
        return cls(**d)
