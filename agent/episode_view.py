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

Details a reader of the view needs: a signal's ``times_ns``/``values`` hold only the instants
when that signal was reported (OPC UA reports changes), so series of one view differ in length;
a signal the multivariate model judged by its rate of change (temperatures: the contribution's
unit is ``°C/s``) gets the level's unit and NaN expected/spread, since a band in °C/s cannot be
drawn over values in °C (its explanation line still says what the model saw). InfluxDB 2.x sinks
are not queried (a stated gap: only 1.x speaks InfluxQL on ``/query``).
"""

from __future__ import annotations

import base64
import http.client
import json
import math
import sqlite3
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from agent.history import History
from agent.journal import StoredEpisode, iso_utc
from agent.sinks.base import SinkError
from agent.sinks.influxdb import (
    ERROR_BODY_MAX_BYTES,
    InfluxV1Config,
    InfluxV2Config,
    read_secret,
    server_message,
)
from analytics.machine import TEMPERATURE_UNITS
from analytics.types import Contribution

if TYPE_CHECKING:
    from agent.config import AgentConfig

#: Seconds an InfluxDB query may take at most (the sink's own timeout_s if shorter).
QUERY_TIMEOUT_S = 5.0

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


def explanation_lines(stored: StoredEpisode) -> list[str]:
    """The explanation in words and units: the note first, then one line per signal by share.

    >>> from analytics.types import Contribution, Episode
    >>> e = Episode("cnc-01", 0, "pca", "v1", 2.0, 0, note="value unchanged for 40 s",
    ...             contributions=(Contribution("speed", 0.2, 10.0, 11.0, 0.5, "m/s"),
    ...                            Contribution("load", 0.8, 90.0, 50.0, 5.0, "%")))
    >>> explanation_lines(StoredEpisode(e, "open"))  # doctest: +NORMALIZE_WHITESPACE
    ['value unchanged for 40 s',
     'load contributes 80 %; observed 90.0 %, expected 50.0 ± 5.00',
     'speed contributes 20 %; observed 10.0 m/s, expected 11.0 ± 0.500']
    """
    e = stored.episode
    lines = [e.note] if e.note else []
    lines.extend(c.sentence() for c in _by_share(e.contributions))
    return lines


def load_view(
    stored: StoredEpisode,
    cfg: AgentConfig,
    *,
    history: History | Path | None = None,
    before_s: float = 300.0,
    after_s: float = 120.0,
    max_signals: int = 4,
) -> EpisodeView:
    """The episode's top signals over ``[start - before_s, (end or now) + after_s]``.

    Values come from the local history when it reaches back to the window's start, else from
    the first InfluxDB 1.x sink of ``cfg`` (InfluxQL over HTTP, a few seconds' timeout); if
    neither has them, what the history holds. Never raises for missing data or an
    unreachable server: ``source`` and ``note`` say what happened.
    """
    e = stored.episode
    start_ns = e.start_ns - round(before_s * 1e9)
    # An open episode runs until now; machine time may run ahead of this clock (a sped-up
    # simulator), so the window always reaches past the peak.
    last_ns = e.end_ns if e.end_ns is not None else max(time.time_ns(), e.start_ns, e.peak_ns)
    end_ns = last_ns + round(after_s * 1e9)
    chosen = _by_share(e.contributions)[: max(max_signals, 0)]
    if not chosen:
        return EpisodeView(stored, start_ns, end_ns, [], "none", "the episode names no signal")
    ask = _Ask(e.machine, [c.signal for c in chosen], start_ns, end_ns)

    def view(points: _Points, source: Source, note: str) -> EpisodeView:
        return EpisodeView(stored, start_ns, end_ns, _series(chosen, points), source, note)

    found = _from_history(history, cfg, ask)
    if found.covered and found.has_data:
        return view(found.data, "history", found.note)
    why = found.note  # why the history is not enough
    remote, remote_note = _from_influxdb(cfg, ask)
    if remote is not None and _has_data(remote):
        return view(remote, "influxdb", f"{remote_note}: {why}")
    if found.has_data:
        return view(found.data, "history", f"{why}; {remote_note}; showing what it holds")
    return view({}, "none", f"{why}; {remote_note}")


# -- pieces ----------------------------------------------------------------------------------

_Points = dict[str, tuple[list[int], list[float]]]  # signal -> (times_ns, values)


@dataclass(frozen=True, slots=True)
class _Ask:
    """What to fetch: these signals of this machine over [start_ns, end_ns]."""

    machine: str
    signals: list[str]
    start_ns: int
    end_ns: int


def _has_data(points: _Points) -> bool:
    return any(times for times, _ in points.values())


def _by_share(contributions: tuple[Contribution, ...]) -> list[Contribution]:
    return sorted(contributions, key=lambda c: -c.share)


def rate_base_unit(unit: str) -> str | None:
    """The level's unit when ``unit`` is a temperature rate (``°C/s``), else None.

    The multivariate model judges temperatures by their rate of change; the plotted values
    are levels, so such a contribution's expected ± spread (in °C/s) cannot be drawn over them.

    >>> rate_base_unit("°C/s"), rate_base_unit("m/s"), rate_base_unit("°C")
    ('°C', None, None)
    """
    if unit.endswith("/s") and unit[:-2] in TEMPERATURE_UNITS:
        return unit[:-2]
    return None


def _series(chosen: list[Contribution], points: _Points) -> list[SignalSeries]:
    series = []
    for c in chosen:
        times, values = points.get(c.signal, ([], []))
        level_unit = rate_base_unit(c.unit)
        if level_unit is None:
            unit, expected, spread = c.unit, c.expected, c.spread
        else:  # judged by its rate: no band in the level's unit
            unit, expected, spread = level_unit, math.nan, math.nan
        series.append(SignalSeries(c.signal, unit, c.share, expected, spread, times, values))
    return series


def _number(value: Any) -> float:
    """A plottable float: numbers (bools as 0/1) as they are, anything else NaN."""
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int | float):
        return float(value)
    return math.nan


@dataclass
class _Found:
    data: _Points
    covered: bool  # the history reaches back to the window's start
    note: str

    @property
    def has_data(self) -> bool:
        return _has_data(self.data)


def _from_history(history: History | Path | None, cfg: AgentConfig, ask: _Ask) -> _Found:
    if isinstance(history, History):
        return _query_history(history, ask)
    path = cfg.data_path("history.db") if history is None else history
    if not path.is_file():  # do not create one: this is a reader
        return _Found({}, False, f"no local history at {path}")
    try:
        opened = History(path)
    except sqlite3.Error as exc:
        return _Found({}, False, f"cannot read the local history {path}: {exc}")
    try:
        return _query_history(opened, ask)
    except sqlite3.Error as exc:
        return _Found({}, False, f"cannot read the local history {path}: {exc}")
    finally:
        opened.close()


def _query_history(history: History, ask: _Ask) -> _Found:
    span = history.span()
    data: _Points = {s: ([], []) for s in ask.signals}
    for t, values, quality in history.query(ask.machine, ask.start_ns, ask.end_ns, ask.signals):
        for name, value in values.items():
            times, out = data[name]
            q = quality.get(name)
            times.append(t)
            out.append(_number(value) if q is None or q[0] == "good" else math.nan)
    found = _Found(data, span is not None and span[0] <= ask.start_ns, "")
    if span is None:
        found.note = "the local history is empty"
    elif not found.covered:
        found.note = f"the local history starts at {iso_utc(span[0])}, after the window's start"
    elif not found.has_data:
        found.note = f"no readings of {ask.machine} in the local history for this window"
    return found


def _from_influxdb(cfg: AgentConfig, ask: _Ask) -> tuple[_Points | None, str]:
    """(points or None, a note) from the first InfluxDB 1.x sink."""
    sink = next((s for s in cfg.sinks if isinstance(s, InfluxV1Config)), None)
    if sink is None:
        v2 = next((s.name for s in cfg.sinks if isinstance(s, InfluxV2Config)), None)
        if v2 is not None:
            return None, f"InfluxDB 2.x sink {v2} is not queried (only 1.x sinks are)"
        return None, "no InfluxDB 1.x sink configured to ask instead"
    try:
        doc = _influxql(sink, influxql(cfg.agent.measurement, sink, ask))
    except SinkError as exc:  # an unreadable password_file
        return None, f"InfluxDB sink {sink.name}: {exc}"
    except urllib.error.HTTPError as exc:
        detail = server_message(exc.read(ERROR_BODY_MAX_BYTES), exc.code)
        return None, f"InfluxDB sink {sink.name} ({sink.url}) answered {exc.code}: {detail}"
    except (OSError, ValueError, http.client.HTTPException) as exc:  # refused, timed out, not JSON
        reason = getattr(exc, "reason", None) or exc
        return None, f"InfluxDB sink {sink.name} ({sink.url}) unreachable: {reason}"
    data: _Points = {s: ([], []) for s in ask.signals}
    for result in doc.get("results", []):
        if "error" in result:
            return None, f"InfluxDB sink {sink.name}: {result['error']}"
        for series in result.get("series", []):
            columns = series["columns"]
            for row in series.get("values", []):
                point = dict(zip(columns, row, strict=True))
                for s in ask.signals:
                    value, quality = point.get(s), point.get(f"{s}_quality")
                    if value is None and quality is None:
                        continue  # the field was not in this point
                    times, out = data[s]
                    times.append(int(point["time"]))
                    out.append(math.nan if quality is not None else _number(value))
    if not _has_data(data):
        return data, f"InfluxDB sink {sink.name} has no readings of {ask.machine} for this window"
    return data, f"from InfluxDB sink {sink.name}"


def _ident(name: str) -> str:
    r"""An InfluxQL identifier, double-quoted.

    >>> print(_ident('a"b'))
    "a\"b"
    """
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def influxql(measurement: str, sink: InfluxV1Config, ask: _Ask) -> str:
    """The query for one machine's signals (and their ``_quality`` fields) over a window.

    >>> cfg = InfluxV1Config(type="influxdb_v1", url="http://x:8086", database="factory")
    >>> print(influxql("machine", cfg, _Ask("cnc-01", ["speed"], 1, 2)))
    ... # doctest: +NORMALIZE_WHITESPACE
    SELECT "speed", "speed_quality" FROM "machine" WHERE "machine" = 'cnc-01'
        AND time >= 1 AND time <= 2 ORDER BY time ASC
    """
    fields = ", ".join(f"{_ident(s)}, {_ident(s + '_quality')}" for s in ask.signals)
    source = _ident(measurement)
    if sink.retention_policy:
        source = f"{_ident(sink.database)}.{_ident(sink.retention_policy)}.{source}"
    literal = ask.machine.replace("\\", "\\\\").replace("'", "\\'")
    return (  # every name is quoted and escaped above, the times are integers
        f"SELECT {fields} FROM {source} WHERE \"machine\" = '{literal}'"  # noqa: S608
        f" AND time >= {ask.start_ns} AND time <= {ask.end_ns} ORDER BY time ASC"
    )


def _influxql(sink: InfluxV1Config, query: str) -> dict[str, Any]:
    """POST ``/query`` (epoch=ns) and return the JSON document; urllib errors propagate."""
    headers = {"Content-Type": "application/x-www-form-urlencoded", "Accept": "application/json"}
    if sink.username is not None:
        password = read_secret(sink.password, sink.password_file, "password_file") or ""
        pair = f"{sink.username}:{password}".encode()
        headers["Authorization"] = "Basic " + base64.b64encode(pair).decode()
    body = urllib.parse.urlencode({"q": query, "db": sink.database, "epoch": "ns"}).encode()
    context = None
    if sink.url.startswith("https://"):
        context = ssl.create_default_context(cafile=sink.ca_file)
        if not sink.verify_tls:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
    # S310: the URL is the sink's, validated as http:// or https:// by its config model
    request = urllib.request.Request(sink.url + "/query", data=body, headers=headers)  # noqa: S310
    timeout = min(sink.timeout_s, QUERY_TIMEOUT_S)
    with urllib.request.urlopen(request, timeout=timeout, context=context) as resp:  # noqa: S310
        doc = json.loads(resp.read())
    if not isinstance(doc, dict):
        raise ValueError("the answer is not a JSON object")
    if "error" in doc:
        raise ValueError(doc["error"])
    return doc
