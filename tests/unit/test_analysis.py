"""The pipeline's analytics hook: readings through, scores and episodes out, models kept."""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.analysis import Analytics
from agent.config import AnalyticsSection
from agent.journal import Journal
from analytics.alarm import AlarmEvent
from connectors.types import FieldValue, Quality, Reading, SignalInfo

S = 1_000_000_000
T0 = 1_767_592_800 * S  # 2026-01-05T06:00:00Z
MACHINE = "press-1"
TAGS = {"line": "line-1", "device": "plc-1"}
SIGNALS = {
    "pressure": SignalInfo("pressure", "bar", 0.0, 10.0),
    "temp": SignalInfo("temp", "°C", 20.0, 80.0),
}
WARMUP_END = 61  # steps end at 1, 2, ... s; 61 rows span 60 s: the reading at 61 s fits


# -- line protocol, as InfluxDB reads it ----------------------------------------------------------
def _split(text: str, sep: str) -> list[str]:
    """Split on ``sep`` outside double quotes and not escaped."""
    parts, cur, quoted, escaped = [], [], False, False
    for ch in text:
        if escaped:
            cur.append(ch)
            escaped = False
        elif ch == "\\":
            cur.append(ch)
            escaped = True
        elif ch == sep and not quoted:
            parts.append("".join(cur))
            cur = []
        else:
            quoted ^= ch == '"'
            cur.append(ch)
    parts.append("".join(cur))
    return parts


def _value(text: str) -> FieldValue:
    if text.startswith('"'):
        return text[1:-1].replace('\\"', '"').replace("\\\\", "\\")
    if text in ("true", "false"):
        return text == "true"
    if text.endswith("i"):
        return int(text[:-1])
    return float(text)


def parse(line: bytes) -> tuple[str, dict[str, str], dict[str, FieldValue], int]:
    series, fieldset, ts = _split(line.decode(), " ")
    measurement, *pairs = _split(series, ",")
    tags = dict(p.replace("\\", "").split("=", 1) for p in pairs)
    fields = {}
    for pair in _split(fieldset, ","):
        key, value = pair.split("=", 1)
        fields[key] = _value(value)
    return measurement, tags, fields, int(ts)


# -- set-up ---------------------------------------------------------------------------------------
def wave(t: int) -> dict[str, FieldValue]:
    """Normal running: slow smooth waves, never flat, never out of range."""
    return {"pressure": 5.0 + 0.5 * math.sin(t / 5), "temp": 50.0 + 3.0 * math.cos(t / 7)}


def reading(t: int, machine: str = MACHINE, **fields: FieldValue) -> Reading:
    return Reading(machine, T0 + t * S, {**wave(t), **fields}, dict(TAGS))


class Rig:
    """An Analytics hook with its journal, models directory and everything it emitted."""

    def __init__(self, tmp_path: Path, journal: Journal, **cfg: Any) -> None:
        self.lines: list[bytes] = []
        self.events: list[AlarmEvent] = []
        self.journal = journal
        self.models = tmp_path / "models"
        section = AnalyticsSection(**{"detector": "none", "warmup_s": 60, "warmup_rows": 60,
                                      **cfg})  # fmt: skip
        self.hook = Analytics(
            section,
            models_dir=self.models,
            journal=journal,
            emit=self.lines.extend,
            signals=lambda machine: SIGNALS if machine == MACHINE else None,
            on_event=self.events.append,
        )

    def feed(self, t0: int, t1: int, values: Callable[[int], Reading] = reading) -> None:
        for t in range(t0, t1):
            r = values(t)
            assert tuple(self.hook(r)) == (r,)

    def parsed(self, measurement: str) -> list[tuple[dict[str, str], dict[str, FieldValue], int]]:
        out = []
        for line in self.lines:
            m, tags, fields, ts = parse(line)
            if m == measurement:
                out.append((tags, fields, ts))
        return out

    def scores(self) -> list[tuple[int, dict[str, float]]]:
        """(step end in seconds since T0, fields) of every anomaly_score point."""
        out = []
        for _, fields, ts in self.parsed("anomaly_score"):
            assert all(isinstance(v, float) for v in fields.values()), fields
            out.append(((ts - T0) // S, {k: float(v) for k, v in fields.items()}))  # type: ignore[arg-type]
        return out

    def anomalies(self) -> list[dict[str, FieldValue]]:
        return [{**fields, "time_ns": ts} for _, fields, ts in self.parsed("anomaly")]


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[Journal]:
    with Journal(tmp_path / "journal.db") as j:
        yield j


@pytest.fixture
def rig(tmp_path: Path, journal: Journal) -> Rig:
    return Rig(tmp_path, journal)


def out_of_range(t0: int, t1: int) -> Callable[[int], Reading]:
    """Pressure at 20 bar (range 0..10) for readings t0 .. t1 - 1."""
    return lambda t: reading(t, pressure=20.0) if t0 <= t < t1 else reading(t)


# -- tests ----------------------------------------------------------------------------------------
def test_readings_pass_through_unchanged(rig: Rig) -> None:
    readings = [reading(t) for t in range(80)]
    readings.append(Reading(MACHINE, T0 + 80 * S, {"pressure": None, "temp": 51.0, "mode": "auto"},
                            dict(TAGS), {"pressure": Quality.bad(0x808B0000, "BadSensorFailure")}))  # fmt: skip
    readings.append(reading(81, pressure=1e6))
    before = copy.deepcopy(readings)
    for r in readings:
        out = tuple(rig.hook(r))
        assert len(out) == 1 and out[0] is r
    assert readings == before
    assert rig.hook.readings == len(readings)


def test_scores_are_emitted_during_and_after_warmup(rig: Rig) -> None:
    rig.feed(0, 120)
    scores = rig.scores()
    assert [t for t, _ in scores] == list(range(1, 120))  # one point per completed step
    during = [f for t, f in scores if t <= WARMUP_END]
    after = [f for t, f in scores if t > WARMUP_END]
    assert len(during) == WARMUP_END and len(after) == 119 - WARMUP_END
    progress = [f["warmup"] for f in during]
    assert progress == sorted(progress) and 0.0 <= progress[0] < 0.1
    assert progress[-2] < 1.0 and progress[-1] == 1.0
    assert all(set(f) == {"score", "limits", "warmup"} for f in during)
    assert all("warmup" not in f for f in after)
    assert all(set(f) == {"score", "limits", "rate", "flatline", "gap"} for f in after)
    assert all(0.0 <= f["score"] < 0.8 for f in after)  # normal running stays clear
    tags = rig.parsed("anomaly_score")[0][0]
    assert tags == {**TAGS, "machine": MACHINE}
    assert rig.anomalies() == [] and rig.events == []


def test_out_of_range_run_opens_and_closes_an_episode(rig: Rig) -> None:
    rig.feed(0, 100)
    rig.feed(100, 106, out_of_range(100, 110))
    start = T0 + 101 * S  # the step [100, 101) s ends at 101 s
    ep_id = f"{MACHINE}-{start}"
    (first,) = rig.anomalies()
    assert first["state"] == "open" and first["time_ns"] == start
    assert first["id"] == ep_id
    assert first["top_signal"] == "pressure"
    assert first["end_ns"] == 0 and first["duration_s"] == 0.0
    assert isinstance(first["severity"], int) and first["severity"] >= 800
    assert "pressure" in str(first["explanation"])
    stored = rig.journal.get(ep_id)
    assert stored is not None and stored.state == "open"
    assert rig.hook.status()[0]["open_episode"] == ep_id

    rig.feed(106, 240, out_of_range(100, 110))
    lines = rig.anomalies()
    assert [a["state"] for a in lines][-1] == "closed"
    assert all(a["state"] == "open" for a in lines[:-1])
    assert {a["time_ns"] for a in lines} == {start}  # one series point, rewritten
    assert {a["id"] for a in lines} == {ep_id}
    closed = lines[-1]
    assert isinstance(closed["end_ns"], int) and closed["end_ns"] >= T0 + 110 * S
    assert closed["duration_s"] == pytest.approx((closed["end_ns"] - start) / S)
    stored = rig.journal.get(ep_id)
    assert stored is not None and stored.state == "closed"
    assert stored.episode.end_ns == closed["end_ns"]
    assert stored.episode.tags == TAGS
    assert (rig.events[0].kind, rig.events[-1].kind) == ("opened", "closed")
    assert len(rig.journal.list()) == 1
    assert not rig.hook.analyzers[MACHINE].alarm.active


def test_out_of_range_during_warmup_is_an_episode_too(rig: Rig) -> None:
    rig.feed(0, 30, out_of_range(10, 15))
    (line,) = rig.anomalies()
    assert line["state"] == "open" and line["detector"] == "limits"
    assert line["time_ns"] == T0 + 11 * S
    assert rig.hook.analyzers[MACHINE].warming_up


def test_model_is_saved_after_warmup_and_loaded_by_the_next_instance(
    tmp_path: Path, journal: Journal
) -> None:
    rig = Rig(tmp_path, journal)
    rig.feed(0, WARMUP_END)
    assert not (rig.models / f"{MACHINE}.pkl").exists()
    rig.feed(WARMUP_END, WARMUP_END + 1)
    assert (rig.models / f"{MACHINE}.pkl").exists()
    meta = json.loads((rig.models / f"{MACHINE}.json").read_text())
    version = rig.hook.analyzers[MACHINE].model.version  # type: ignore[union-attr]
    assert meta["features"] == ["pressure", "temp"] and meta["version"] == version
    rig.feed(WARMUP_END + 1, 100)

    again = Rig(tmp_path, journal)
    again.feed(1000, 1010)
    an = again.hook.analyzers[MACHINE]
    assert not an.warming_up
    assert an.model is not None and an.model.version == version
    assert an.alarm.model_version == version
    scores = again.scores()
    assert [t for t, _ in scores] == list(range(1001, 1010))
    assert all("warmup" not in f for _, f in scores)
    assert all(set(f) == {"score", "limits", "rate", "flatline", "gap"} for _, f in scores)
    assert again.hook.status()[0]["state"] == "scoring"


def test_a_model_of_other_signals_is_not_loaded(tmp_path: Path, journal: Journal) -> None:
    Rig(tmp_path, journal).feed(0, 70)
    assert (tmp_path / "models" / f"{MACHINE}.pkl").exists()
    other = Rig(tmp_path, journal)
    extra = {**SIGNALS, "flow": SignalInfo("flow", "m³/h", 0, 50)}
    other.hook.signals = lambda machine: extra
    other.feed(1000, 1010, lambda t: reading(t, flow=20.0))
    assert other.hook.analyzers[MACHINE].warming_up
    assert all("warmup" in f for _, f in other.scores())


def test_close_closes_an_open_episode(rig: Rig) -> None:
    rig.feed(0, 100)
    rig.feed(100, 105, out_of_range(100, 200))
    (opened,) = rig.anomalies()
    assert opened["state"] == "open"
    rig.hook.close()
    closed = rig.anomalies()[-1]
    assert closed["state"] == "closed" and closed["id"] == opened["id"]
    assert closed["time_ns"] == opened["time_ns"]
    stored = rig.journal.get(str(opened["id"]))
    assert stored is not None and stored.state == "closed"
    assert rig.events[-1].kind == "closed" and rig.events[-1].reason
    assert not rig.hook.analyzers[MACHINE].alarm.active
    n = len(rig.lines)
    rig.hook.close()  # nothing open any more: nothing said
    assert len(rig.lines) == n


def test_a_bad_signal_becomes_a_gap_episode(rig: Rig) -> None:
    rig.feed(0, 100)

    def temp_bad(t: int) -> Reading:
        return Reading(MACHINE, T0 + t * S, {"pressure": wave(t)["pressure"], "temp": None},
                       dict(TAGS), {"temp": Quality.bad(0x808B0000, "BadSensorFailure")})  # fmt: skip

    rig.feed(100, 160, temp_bad)
    lines = rig.anomalies()
    assert rig.events[0].kind == "opened"
    assert {(a["state"], a["detector"], a["top_signal"]) for a in lines} == {
        ("open", "gap", "temp")
    }
    # Last good value in the step ending at 100 s; 10 s without one is the gap limit (its floor).
    assert {a["time_ns"] for a in lines} == {T0 + 110 * S}
    assert "no good value of temp" in str(lines[-1]["explanation"])


def test_excluded_machines_are_not_analysed(tmp_path: Path, journal: Journal) -> None:
    rig = Rig(tmp_path, journal, exclude=["press-2"])
    rs = [reading(t, "press-2", pressure=20.0) for t in range(100)]
    for r in rs:
        assert tuple(rig.hook(r)) == (r,)
    assert rig.hook.analyzers == {}
    assert rig.lines == [] and rig.events == []
    assert journal.list() == []
    rig.feed(0, 3)  # the other machine is analysed
    assert list(rig.hook.analyzers) == [MACHINE]
    assert len(rig.lines) == 2


def test_a_sensor_dead_through_the_warmup_is_left_out_of_the_model(
    tmp_path: Path, journal: Journal, caplog: pytest.LogCaptureFixture
) -> None:
    """Found by the Grafana test: the PCA fit raised on a column with no value, and the
    exception stopped the device's readings. Now the model leaves the signal out and says so."""
    signals = {**SIGNALS, "flow": SignalInfo("flow", "m³/h", 0.0, 100.0)}
    rig = Rig(tmp_path, journal, detector="pca-t2q", warmup_s=200, warmup_rows=200)
    rig.hook.signals = lambda machine: signals

    def dead_flow(t: int) -> Reading:
        return Reading(MACHINE, T0 + t * S, {**wave(t), "flow": None}, dict(TAGS),
                       {"flow": Quality.bad(0x808B0000, "BadSensorFailure")})  # fmt: skip

    rig.feed(0, 400, dead_flow)
    an = rig.hook.analyzers[MACHINE]
    assert an.model is not None
    mv = an.model.detectors[-1]
    assert mv.name == "pca-t2q" and mv.columns == ("pressure", "temp")
    assert "left out of the pca-t2q model (no values): flow" in an.note
    assert rig.scores()[-1][1].get("pca_t2q") is not None  # it scores


def test_too_short_a_warmup_for_the_model_leaves_the_per_signal_checks(
    tmp_path: Path, journal: Journal
) -> None:
    # 40 rows cannot fill a 60 s temperature-rate window and then train: no model, no crash
    rig = Rig(tmp_path, journal, detector="pca-t2q", warmup_s=30, warmup_rows=40)
    rig.feed(0, 50)
    rig.feed(50, 80, out_of_range(55, 80))
    an = rig.hook.analyzers[MACHINE]
    assert an.model is not None and [d.name for d in an.model.detectors] == [
        "limits", "rate", "flatline", "gap",
    ]  # fmt: skip
    assert an.note.startswith("no pca-t2q model: too few complete training rows")
    assert [e.kind for e in rig.events][:1] == ["opened"]  # the limits still see the fault


def test_a_failing_analyzer_never_stops_the_readings(rig: Rig) -> None:
    rig.feed(0, 5)
    an = rig.hook.analyzers[MACHINE]

    def broken(*args: object, **kw: object) -> list[Any]:
        raise RuntimeError("a bug")

    an.add = broken  # type: ignore[method-assign]  # a bug cannot be made to happen for real
    rig.feed(5, 10)  # every reading still comes back unchanged
    assert MACHINE in rig.hook.exclude
