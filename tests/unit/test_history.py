"""The local history store: stores, queries, and stays within its age and size budgets."""

from __future__ import annotations

from pathlib import Path

from agent.history import History
from connectors.types import Quality, Reading

SECOND = 10**9


def reading(machine: str, t: int, **fields: float | None) -> Reading:
    quality = {
        k: Quality.bad(0x808C0000, "BadSensorFailure") for k, v in fields.items() if v is None
    }
    return Reading(machine, t, dict(fields), {"line": "l1"}, quality)


def test_query_by_machine_time_and_fields(tmp_path: Path) -> None:
    h = History(tmp_path / "h.db")
    h.add(reading("a", t * SECOND, speed=float(t), temp=20.0 + t) for t in range(10))
    h.add([reading("b", 5 * SECOND, speed=1.0, temp=None)])
    rows = h.query("a", 3 * SECOND, 5 * SECOND, ["speed"])
    assert rows == [(t * SECOND, {"speed": float(t)}, {}) for t in (3, 4, 5)]
    (b,) = h.query("b", 0, 10 * SECOND)
    assert b[1] == {"speed": 1.0, "temp": None}
    assert b[2] == {"temp": ["bad", 0x808C0000, "BadSensorFailure"]}
    h.close()
    reopened = History(tmp_path / "h.db")
    assert reopened.span() == (0, 9 * SECOND)


def test_retention_drops_what_is_older_than_the_window(tmp_path: Path) -> None:
    h = History(tmp_path / "h.db", retention_h=1.0)
    h.add(reading("a", t * 60 * SECOND, speed=1.0) for t in range(180))  # three hours
    h.prune()
    span = h.span()
    assert span is not None and span[1] - span[0] == 60 * 60 * SECOND
    assert h.rows_pruned == 119


def test_size_budget_drops_the_oldest(tmp_path: Path) -> None:
    h = History(tmp_path / "h.db", max_bytes=200_000, prune_every_s=3600)
    for block in range(20):
        h.add(reading("a", (block * 500 + i) * SECOND, speed=float(i), temp=1.5, load=3.25)
              for i in range(500))  # fmt: skip
    h.prune()
    assert h.size_bytes() <= 200_000
    span = h.span()
    assert span is not None and span[1] == (19 * 500 + 499) * SECOND  # the newest is kept
    assert span[0] > 0 and h.rows_pruned > 0


def test_sustained_writes_reuse_freed_pages_instead_of_growing(tmp_path: Path) -> None:
    """No VACUUM (it stalled the agent ~2 s at 256 MB): freed pages take the new rows, so the
    file stops growing near its budget."""
    h = History(tmp_path / "h.db", max_bytes=300_000, prune_every_s=3600)
    sizes = []
    for block in range(60):
        h.add(reading("a", (block * 500 + i) * SECOND, speed=float(i), temp=1.5, load=3.25)
              for i in range(500))  # fmt: skip
        h.prune()
        assert h.size_bytes() <= 300_000
        h._db.execute("PRAGMA wal_checkpoint(PASSIVE)")
        sizes.append((tmp_path / "h.db").stat().st_size)
    assert max(sizes) <= 1.2 * 300_000
    assert sizes[-1] == sizes[30]  # steady state: not a page more
    span = h.span()
    assert span is not None and span[1] == (59 * 500 + 499) * SECOND


def test_non_finite_values_are_stored_as_no_value(tmp_path: Path) -> None:
    h = History(tmp_path / "h.db")
    h.add([reading("a", 0, speed=float("nan"), temp=float("inf"), load=2.0)])
    assert h.query("a", 0, 0)[0][1] == {"speed": None, "temp": None, "load": 2.0}
