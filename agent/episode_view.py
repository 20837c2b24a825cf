"""What a person reviewing an episode looks at: its signals around it, and why it was raised.

Shared by the review page (``agent/review.py``) and ``factory-agent anomalies show``.
:func:`load_view` gathers, for the episode's top contributing signals, the observed values over
a window around the episode, from the local history (``<data_dir>/history.db``) or, when the
history no longer covers the window, from the first InfluxDB 1.x sink of the configuration.
Synchronous and self-contained (opens its own SQLite connection and HTTP requests): the page
calls it in a worker thread.

CONTRACT (written before the implementation; keep these names and fields):

- ``SignalSeries`` / ``EpisodeView`` as below;
- ``explanation_lines(stored) -> list[str]``: the explanation in words and units, one line per
  contributing signal (``Contribution.sentence()``), the episode note first when there is one;
- ``load_view(stored, cfg, *, history=None, before_s=300.0, after_s=120.0, max_signals=4)``:
  ``history`` is a ``History``, a path to a history file, or ``None`` for
  ``cfg.data_path("history.db")``; never raises for missing data (``source="none"`` and a
  ``note`` saying why), raises nothing on an unreachable InfluxDB either (note says so).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from agent.journal import StoredEpisode

Source = Literal["history", "influxdb", "none"]


@dataclass(frozen=True, slots=True)
class SignalSeries:
    """One signal over the window: observed values and what the model expected."""

    signal: str
    unit: str
    share: float  # its share of the episode's score, 0..1
    expected: float  # NaN when the detector has no expectation (gap, flatline)
    spread: float  # the band is expected ± spread; NaN as above
    times_ns: list[int]
    values: list[float]  # NaN where the reading was missing or not good


@dataclass(frozen=True, slots=True)
class EpisodeView:
    """An episode with its signals over ``[start_ns, end_ns]`` (the window, not the episode)."""

    stored: StoredEpisode
    start_ns: int
    end_ns: int
    series: list[SignalSeries]
    source: Source
    note: str = ""  # e.g. "from InfluxDB sink plant-influx: the local history starts later"
