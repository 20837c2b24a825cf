"""A step's means are the same floats whichever way MachineAnalyzer.add folds a reading in."""

from __future__ import annotations

import math
import random

from analytics.machine import MachineAnalyzer
from connectors.types import SignalInfo

SIGNALS = {f"s{k}": SignalInfo(f"s{k}", "%", 0.0, 100.0) for k in range(6)}
STEP_NS = 1_000_000_000


def readings(seed: int) -> list[dict[str, object]]:
    """Mostly complete float readings (the fast path), some that are not (the careful one)."""
    rng = random.Random(seed)
    out: list[dict[str, object]] = []
    for _ in range(400):
        fields: dict[str, object] = {
            k: rng.uniform(0, 100) * 10 ** rng.randint(-3, 3) for k in SIGNALS
        }
        roll = rng.random()
        if roll < 0.05:
            fields["s2"] = math.nan
        elif roll < 0.08:
            del fields["s4"]
        elif roll < 0.10:
            fields["s1"] = 7  # an int counts too
        elif roll < 0.12:
            fields["s3"] = True  # a boolean does not
        out.append(fields)
    return out


def rows(analyzer: MachineAnalyzer, data: list[dict[str, object]], *, reorder: bool) -> list:
    out = []
    for i, given in enumerate(data):
        # same values, keys in another order: never the fast path
        fields = dict(reversed(list(given.items()))) if reorder else given
        t = i * STEP_NS // 10
        for step in analyzer.add(t, fields):
            out.append(step)
    return out


def test_fast_and_careful_paths_give_identical_means() -> None:
    data = readings(11)
    fast = MachineAnalyzer("m", SIGNALS)
    careful = MachineAnalyzer("m", SIGNALS)
    a, b = rows(fast, data, reorder=False), rows(careful, data, reorder=True)
    assert len(a) == len(b) == 39
    for x, y in zip(a, b, strict=True):
        assert repr(x) == repr(y)  # bit for bit, NaN included
    assert fast._last == careful._last


def test_fast_path_is_taken_for_complete_float_readings() -> None:
    analyzer = MachineAnalyzer("m", SIGNALS)
    analyzer.add(0, dict.fromkeys(SIGNALS, 1.5))
    assert len(analyzer._rows) == 1
    analyzer.add(1, {k: (math.inf if k == "s0" else 1.5) for k in SIGNALS})
    assert analyzer._rows == []  # the infinite one went the careful way, the first was folded
    assert analyzer._count["s1"] == 2 and analyzer._count["s0"] == 1
