"""The episode view (signals around an episode, from the local history) and its plot."""

from __future__ import annotations

import doctest
import math
import struct
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from agent import anomalies, episode_view, plot
from agent.config import AgentConfig
from agent.episode_view import EpisodeView, explanation_lines, load_view
from agent.history import History
from agent.journal import Journal, StoredEpisode
from agent.plot import render_plot
from analytics.types import Contribution, Episode
from connectors.types import Quality, Reading

SECOND = 10**9
T0 = 1_767_592_800 * SECOND  # 2026-01-05T06:00:00Z: the episode's start
STEP_S = 2  # one reading every 2 s
SPAN_S = 900  # readings from T0 - 900 s to T0 + 900 s
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

CONTRIBUTIONS = (
    Contribution("spindle_load", 0.10, 80.0, 55.0, 6.0, "%"),
    Contribution("vibration_rms", 0.45, 6.1, 2.0, 0.4, "mm/s"),
    Contribution("bearing_temperature", 0.25, 0.08, 0.01, 0.02, "°C/s"),  # judged by its rate
    Contribution("motor_current", 0.15, 31.0, 24.0, 2.0, "A"),
    Contribution("door_open", 0.05, 1.0, math.nan, math.nan, ""),  # no expectation
)


def value(signal: str, i: int) -> float:
    """The value written for reading ``i``: distinct per signal and instant."""
    return {"spindle_load": 50.0, "vibration_rms": 2.0, "bearing_temperature": 40.0,
            "motor_current": 20.0}[signal] + i / 100  # fmt: skip


def reading(i: int, machine: str = "cnc-01") -> Reading:
    t = T0 + (i * STEP_S - SPAN_S) * SECOND
    fields: dict[str, float | int | bool | str | None] = {
        s: value(s, i) for s in ("spindle_load", "vibration_rms", "bearing_temperature")
    }
    fields["door_open"] = i % 2 == 0
    quality = {}
    if i % 10 == 3:  # a bad value (still stored) and a missing one
        quality["vibration_rms"] = Quality.bad(0x808B0000, "BadSensorFailure")
        fields["spindle_load"] = None
        quality["spindle_load"] = Quality.bad(0x808B0000, "BadSensorFailure")
    if i % 10 == 5:
        fields["motor_current"] = "n/a"  # not a number
    elif i % 3 == 0:  # reported only every third reading (OPC UA reports changes)
        fields["motor_current"] = value("motor_current", i)
    return Reading(machine, t, fields, {"line": "line-1"}, quality)


READINGS = 2 * SPAN_S // STEP_S + 1


def episode(
    end_s: int | None = 60, contributions: tuple[Contribution, ...] = CONTRIBUTIONS
) -> StoredEpisode:
    e = Episode("cnc-01", T0, "pca-t2q", "v7", peak_score=5.0, peak_ns=T0 + 20 * SECOND,
                contributions=contributions, note="bearing wear suspected",
                end_ns=None if end_s is None else T0 + end_s * SECOND,
                tags={"line": "line-1"})  # fmt: skip
    return StoredEpisode(e, "open" if end_s is None else "closed", line="line-1")


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    """A data dir whose history holds cnc-01 (and another machine) around T0."""
    h = History(tmp_path / "history.db")
    h.add(reading(i) for i in range(READINGS))
    h.add(reading(i, "imm-01") for i in range(READINGS))
    h.close()
    return tmp_path


def config(data_dir: Path, **extra: object) -> AgentConfig:
    return AgentConfig.model_validate({"agent": {"data_dir": str(data_dir)}, **extra})


def test_explanation_lines_note_first_then_by_share() -> None:
    lines = explanation_lines(episode())
    assert lines[0] == "bearing wear suspected"
    by_share = sorted(CONTRIBUTIONS, key=lambda c: -c.share)
    assert lines[1:] == [c.sentence() for c in by_share]
    assert "expected 2.00 ± 0.400" in lines[1]  # vibration_rms, 45 %, in its unit
    no_note = StoredEpisode(Episode("m", 0, "limits", "v1", 2.0, 0), "open")
    assert explanation_lines(no_note) == []


def test_view_from_the_history(data_dir: Path) -> None:
    stored = episode()
    view = load_view(stored, config(data_dir))
    assert view.source == "history"
    assert view.note == ""
    assert view.start_ns == T0 - 300 * SECOND
    assert view.end_ns == T0 + (60 + 120) * SECOND
    # the top four by share, in that order; door_open (5 %) left out
    assert [s.signal for s in view.series] == [
        "vibration_rms", "bearing_temperature", "motor_current", "spindle_load"
    ]  # fmt: skip
    by_name = {s.signal: s for s in view.series}
    vib = by_name["vibration_rms"]
    assert (vib.unit, vib.share, vib.expected, vib.spread) == ("mm/s", 0.45, 2.0, 0.4)
    # judged by its rate (°C/s): plotted in °C, no band
    temp = by_name["bearing_temperature"]
    assert temp.unit == "°C"
    assert math.isnan(temp.expected) and math.isnan(temp.spread)
    inside = [i for i in range(READINGS)
              if view.start_ns <= reading(i).time_ns <= view.end_ns]  # fmt: skip
    assert vib.times_ns == [reading(i).time_ns for i in inside]
    for got, i in zip(vib.values, inside, strict=True):
        if i % 10 == 3:
            assert math.isnan(got)  # bad quality
        else:
            assert got == value("vibration_rms", i)
    load = by_name["spindle_load"]
    assert sum(math.isnan(v) for v in load.values) == sum(i % 10 == 3 for i in inside)
    # motor_current: only where it was reported; the string becomes NaN
    current = by_name["motor_current"]
    reported = [i for i in inside if i % 10 == 5 or (i % 3 == 0)]
    assert current.times_ns == [reading(i).time_ns for i in reported]
    for got, i in zip(current.values, reported, strict=True):
        assert math.isnan(got) if i % 10 == 5 else got == value("motor_current", i)


def test_view_takes_a_history_object_or_path_and_max_signals(data_dir: Path) -> None:
    stored = episode()
    cfg = config(data_dir / "elsewhere")  # the argument wins over the config
    h = History(data_dir / "history.db")
    try:
        from_obj = load_view(stored, cfg, history=h, max_signals=5, before_s=10, after_s=0)
        assert h.span() is not None  # the caller's History is not closed
    finally:
        h.close()
    from_path = load_view(stored, cfg, history=data_dir / "history.db", max_signals=5,
                          before_s=10, after_s=0)  # fmt: skip
    assert from_obj.series == from_path.series
    assert [s.signal for s in from_obj.series][-1] == "door_open"
    door = from_obj.series[-1]
    assert set(door.values) <= {0.0, 1.0} and door.values  # booleans plot as 0/1
    assert math.isnan(door.expected)
    assert from_obj.start_ns == T0 - 10 * SECOND and from_obj.end_ns == T0 + 60 * SECOND
    assert not (data_dir / "elsewhere").exists()


def test_open_episode_window_runs_until_now(data_dir: Path) -> None:
    before = time.time_ns()
    view = load_view(episode(end_s=None), config(data_dir), after_s=60)
    assert before + 60 * SECOND <= view.end_ns <= time.time_ns() + 60 * SECOND


def test_no_history_file_no_data_and_no_file_created(tmp_path: Path) -> None:
    view = load_view(episode(), config(tmp_path / "data"))
    assert view.source == "none"
    assert f"no local history at {tmp_path / 'data' / 'history.db'}" in view.note
    assert "no InfluxDB 1.x sink" in view.note
    assert view.series[0].signal == "vibration_rms"
    assert all(s.values == [] and s.times_ns == [] for s in view.series)
    assert not (tmp_path / "data").exists()


def test_history_starting_after_the_window_is_used_with_a_note(data_dir: Path) -> None:
    late = data_dir / "late.db"
    h = History(late)
    h.add(reading(i) for i in range(READINGS) if reading(i).time_ns >= T0)
    h.close()
    view = load_view(episode(), config(data_dir), history=late)
    assert view.source == "history"
    assert "the local history starts at 2026-01-05T06:00:00.000Z, after the window's start" in (
        view.note
    )
    assert "showing what it holds" in view.note
    assert min(view.series[0].times_ns) == T0


def test_empty_history_and_other_machine_only(data_dir: Path) -> None:
    empty = data_dir / "empty.db"
    History(empty).close()
    view = load_view(episode(), config(data_dir), history=empty)
    assert (view.source, view.series[0].values) == ("none", [])
    assert "the local history is empty" in view.note
    other = Episode("press-9", T0, "limits", "v1", 2.0, T0, CONTRIBUTIONS[:1], end_ns=T0)
    view = load_view(StoredEpisode(other, "closed"), config(data_dir))
    assert view.source == "none"
    assert "no readings of press-9 in the local history for this window" in view.note


def test_influxdb_v2_sink_is_not_queried(tmp_path: Path) -> None:
    sinks = [{"type": "influxdb", "name": "central", "url": "http://127.0.0.1:9",
              "org": "o", "bucket": "b"}]  # fmt: skip
    view = load_view(episode(), config(tmp_path, sinks=sinks))
    assert view.source == "none"
    assert "InfluxDB 2.x sink central is not queried" in view.note


def test_episode_without_signals(data_dir: Path) -> None:
    view = load_view(episode(contributions=()), config(data_dir))
    assert (view.source, view.series) == ("none", [])
    assert view.note == "the episode names no signal"


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == PNG_MAGIC
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def test_plot_png_and_svg(data_dir: Path) -> None:
    view = load_view(episode(), config(data_dir))
    png = render_plot(view)
    width, height = png_size(png)
    assert width == 900
    assert height > 4 * 150  # four panels, each tall enough to read on a tablet
    wide = render_plot(view, "png", width_px=1400)
    assert png_size(wide)[0] == 1400
    svg = render_plot(view, "svg").decode()
    assert svg.lstrip().startswith("<?xml") and "<svg" in svg
    # matplotlib keeps each text as a comment beside its glyph paths
    assert "vibration_rms (mm/s) · 45 % of the score" in svg
    assert "bearing_temperature (°C) · 25 % of the score · judged by its rate of change" in svg
    assert "no data for this window" not in svg
    with pytest.raises(ValueError, match="png"):
        render_plot(view, "jpg")  # type: ignore[arg-type]


def test_plot_without_data(tmp_path: Path) -> None:
    view = load_view(episode(), config(tmp_path))
    assert view.source == "none"
    svg = render_plot(view, "svg").decode()
    assert "no data for this window" in svg
    assert "no local history at" in svg
    width, _ = png_size(render_plot(view))
    assert width == 900
    empty = EpisodeView(episode(contributions=()), T0, T0 + SECOND, [], "none")
    assert "no data for this window" in render_plot(empty, "svg").decode()


def test_plot_is_thread_safe(data_dir: Path) -> None:
    view = load_view(episode(), config(data_dir))
    results: dict[int, bytes] = {}

    def draw(n: int) -> None:
        results[n] = render_plot(view, "png" if n % 2 else "svg")

    threads = [threading.Thread(target=draw, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(results) == [0, 1, 2, 3]
    for n, data in results.items():
        assert data.startswith(PNG_MAGIC) if n % 2 else b"<svg" in data


def test_long_series_are_decimated_keeping_extremes() -> None:
    n = 200_000
    values = [math.sin(i / 1000) for i in range(n)]
    values[123_457] = 50.0  # one spike
    values[7] = math.nan  # one gap
    times, kept = plot._decimate(list(range(n)), values, 1800)
    assert len(kept) <= 3 * 1800
    finite = kept[np.isfinite(kept)]
    assert finite.max() == 50.0
    assert finite.min() == min(v for v in values if not math.isnan(v))
    assert any(math.isnan(v) for v in kept)
    assert list(times) == sorted(times)


def test_doctests() -> None:
    for module in (episode_view, plot, anomalies):
        assert doctest.testmod(module).failed == 0, module.__name__


def test_view_of_a_journal_episode(data_dir: Path) -> None:
    """What the CLI and the page do: an episode read back from the journal."""
    with Journal(data_dir / "journal.db") as j:
        j.record(episode().episode)
        stored = j.get(episode().episode.id)
    assert stored is not None
    view = load_view(stored, config(data_dir))
    assert view.stored == stored
    assert view.series[0].signal == "vibration_rms"
    assert view.series[0].values
