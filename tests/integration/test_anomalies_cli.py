"""``factory-agent anomalies`` as a maintenance engineer uses it, and the view's InfluxDB fallback.

The journal is filled with real episodes through :meth:`Journal.record`; the commands run
in-process through ``agent.cli.main`` (stdout/stderr captured), and as a subprocess where the
working directory matters (the default data dir) or a real file is drawn. The fallback reads
from a real InfluxDB 1.x that the project's own sink wrote to.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import math
import os
import re
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from agent.cli import main
from agent.config import AgentConfig
from agent.episode_view import load_view
from agent.history import History
from agent.journal import Journal, StoredEpisode, export_row
from agent.lineprotocol import Encoder
from agent.sinks.influxdb import InfluxV1Config, InfluxV1Sink
from analytics.types import Contribution, Episode
from connectors.types import Quality, Reading
from tests.conftest import CONFIGS, ROOT, free_port
from tests.servers import InfluxDB1

pytestmark = pytest.mark.integration

AGENT = [sys.executable, "-m", "agent.cli"]
SECOND = 10**9
NOW = time.time_ns()
HOUR = 3600 * SECOND
PASSWORD = "s3cret-pw"  # noqa: S105 (a test server's, made up here)

VIB = Contribution("vibration_rms", 0.62, 6.4, 2.1, 0.5, "mm/s")
CURRENT = Contribution("motor_current", 0.38, 31.0, 24.0, 2.0, "A")


def make_episodes() -> list[Episode]:
    """Four episodes of three machines over the last two days; one still open."""
    return [
        Episode("cnc-01", NOW - 3 * HOUR, "pca-t2q", "v3", peak_score=8.0,
                peak_ns=NOW - 3 * HOUR + 30 * SECOND, contributions=(VIB, CURRENT),
                note="bearing wear suspected", end_ns=NOW - 3 * HOUR + 725 * SECOND,
                tags={"line": "line-1", "site": "haiphong"}),
        Episode("conveyor-01", NOW - 30 * 60 * SECOND, "limits", "v1", peak_score=1.3,
                peak_ns=NOW - 29 * 60 * SECOND,
                contributions=(Contribution("belt_speed", 1.0, 2.02, 2.45, 0.15, "m/s"),),
                end_ns=NOW - 25 * 60 * SECOND, tags={"line": "line-1"}),
        Episode("compressor-01", NOW - 10 * 60 * SECOND, "pca-t2q", "v2", peak_score=2.5,
                peak_ns=NOW - 9 * 60 * SECOND,
                contributions=(Contribution("air_flow", 0.52, 6.9, 7.3, 0.3, "m³/min"),),
                tags={"line": "utilities"}),
        Episode("cnc-01", NOW - 40 * HOUR, "rate", "v1", peak_score=1.1, peak_ns=NOW - 40 * HOUR,
                contributions=(CURRENT,), end_ns=NOW - 40 * HOUR + 90 * SECOND,
                tags={"line": "line-1"}),
    ]  # fmt: skip


EPISODES = make_episodes()
CNC, CONVEYOR, COMPRESSOR, OLD = (e.id for e in EPISODES)


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    d = tmp_path / "agent-data"
    with Journal(d / "journal.db") as j:
        for e in EPISODES:
            j.record(e)
    return d


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """``factory-agent anomalies ARGS`` in this process: (exit code, stdout, stderr)."""
    code = main(["anomalies", *args])
    out, err = capsys.readouterr()
    return code, out, err


def run_process(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([*AGENT, "anomalies", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120, check=False)  # fmt: skip


def ids_listed(out: str) -> list[str]:
    return [line.split()[0] for line in out.splitlines()[1:] if not line.startswith("(")]


def assert_usage_error(code: int, out: str, err: str, *needles: str) -> None:
    assert code == 2
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("factory-agent: ")
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], lines[0]


# -- list ------------------------------------------------------------------------------------


def test_list_table_newest_first(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "list", "--data-dir", str(data_dir))
    assert (code, err) == (0, "")
    header = out.splitlines()[0].split()
    assert header[:3] == ["id", "machine", "line"]
    assert "duration" in header and "severity" in header and "state" in header
    by_start = sorted(EPISODES, key=lambda e: -e.start_ns)
    assert ids_listed(out) == [e.id for e in by_start]
    cnc = next(line for line in out.splitlines() if line.startswith(CNC))
    assert "12m 05s" in cnc and " closed " in cnc and f" {EPISODES[0].severity} " in cnc
    assert "vibration_rms 62 %, motor_current 38 %" in cnc
    open_row = next(line for line in out.splitlines() if line.startswith(COMPRESSOR))
    assert " open " in open_row


def test_list_filters(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = ["--data-dir", str(data_dir)]
    cases = {
        ("--machine", "cnc-01"): [CNC, OLD],
        ("--line", "utilities"): [COMPRESSOR],
        ("--severity", "500"): [CNC],  # peak 8x: 800; the others are below 500
        ("--state", "open"): [COMPRESSOR],
        ("--state", "closed"): [CONVEYOR, CNC, OLD],
        ("--since", "2h"): [COMPRESSOR, CONVEYOR],  # the open one overlaps any later window
        ("--since", "1d"): [COMPRESSOR, CONVEYOR, CNC],
        ("--until", "1d"): [OLD],
        ("--machine", "cnc-01", "--since", "5h", "--until", "2h"): [CNC],
    }
    for args, expected in cases.items():
        code, out, err = run(capsys, "list", *d, *args)
        assert (code, err) == (0, ""), args
        assert ids_listed(out) == expected, args
    start = EPISODES[1].start_ns // SECOND - 1
    iso = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(start))
    code, out, _ = run(capsys, "list", *d, "--since", iso)
    assert ids_listed(out) == [COMPRESSOR, CONVEYOR]
    code, out, _ = run(capsys, "list", *d, "--limit", "2")
    assert ids_listed(out) == [COMPRESSOR, CONVEYOR]
    assert "(the newest 2; --limit N shows more)" in out


def test_list_empty_results_and_json(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = ["--data-dir", str(data_dir)]
    code, out, _ = run(capsys, "list", *d, "--machine", "press-9")
    assert code == 0
    assert out == f"no episodes match (--machine press-9) in {data_dir / 'journal.db'}\n"
    code, out, _ = run(capsys, "list", *d, "--json", "--state", "closed")
    rows = json.loads(out)
    with Journal(data_dir / "journal.db") as j:
        expected = [export_row(s) for s in j.list(state="closed")]
    assert rows == expected
    assert [r["id"] for r in rows] == [CONVEYOR, CNC, OLD]
    empty = data_dir.parent / "empty"
    Journal(empty / "journal.db").close()
    code, out, _ = run(capsys, "list", "--data-dir", str(empty))
    assert out == f"no episodes yet in {empty / 'journal.db'}\n"


def test_bad_filters_are_one_line_and_exit_2(
    data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    d = ["--data-dir", str(data_dir)]
    cases = [
        (("--severity", "0"), ["--severity '0'", "1..1000"]),
        (("--severity", "high"), ["--severity 'high'", "1..1000"]),
        (("--severity", "1001"), ["1..1000"]),
        (("--state", "done"), ["--state 'done'", "open, closed, acknowledged"]),
        (("--since", "yesterday"), ["--since 'yesterday'", "ISO 8601", "2h"]),
        (("--until", "2026-13-01"), ["--until '2026-13-01'"]),
        (("--limit", "0"), ["--limit '0'"]),
        (("--since", "1h", "--until", "3h"), ["--since 1h", "is after --until 3h"]),
    ]
    for args, needles in cases:
        code, out, err = run(capsys, "list", *d, *args)
        assert_usage_error(code, out, err, *needles)


# -- show ------------------------------------------------------------------------------------


def test_show_every_field_explanation_and_audit(
    data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    d = ["--data-dir", str(data_dir)]
    code, out, err = run(capsys, "show", CNC, *d)
    assert (code, err) == (0, "")
    fields = {line[:12].strip(): line[12:] for line in out.splitlines() if line[:1] != " "}
    e = EPISODES[0]
    assert fields["episode"] == CNC
    assert fields["machine"] == "cnc-01"
    assert fields["line"] == "line-1"
    assert fields["tags"] == "line=line-1, site=haiphong"
    assert fields["state"] == "closed"
    assert fields["duration"] == "12m 05s"
    assert fields["severity"] == f"{e.severity} of 1000"
    assert fields["detector"] == "pca-t2q, model v3"
    assert fields["score"].startswith("8 × the limit")
    assert fields["start"].endswith("Z)") and fields["end"].endswith("Z)")
    assert fields["verdict"].startswith("none yet")
    assert fields["audit"] == "(none)"
    why = out.split("\nwhy\n")[1].split("\nverdict")[0].splitlines()
    assert why == ["  bearing wear suspected", f"  {VIB.sentence()}", f"  {CURRENT.sentence()}"]

    code, out, _ = run(capsys, "show", COMPRESSOR, *d)
    assert "end         (open)" in out
    # NOW was taken at collection: in a long run more than 10 minutes have passed since
    started = re.search(r"^duration    open \(started (\d+)m \d\ds ago\)$", out, re.M)
    assert started is not None and int(started.group(1)) >= 10, out


def test_show_unknown_id(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "show", "cnc-01-42", "--data-dir", str(data_dir))
    assert_usage_error(code, out, err, "no episode 'cnc-01-42'", "anomalies list")
    code, out, err = run(capsys, "show", "banana", "--data-dir", str(data_dir))
    assert_usage_error(code, out, err, "no episode 'banana'", "ids look like")
    code, out, err = run(capsys, "show", CNC, "--data-dir", str(data_dir), "--plot", "x.jpg")
    assert_usage_error(code, out, err, "--plot x.jpg", ".png or .svg")


# -- ack -------------------------------------------------------------------------------------


def test_ack_then_show_and_journal(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = ["--data-dir", str(data_dir)]
    code, out, err = run(capsys, "ack", CNC, *d, "--by", "ana", "--verdict", "confirmed",
                         "--note", "bearing replaced")  # fmt: skip
    assert (code, err) == (0, "")
    assert out == f"{CNC}: confirmed, acknowledged by ana\n"
    code, out, _ = run(capsys, "ack", CNC, *d, "--by", "bob", "--verdict", "false-alarm")
    assert out == f"{CNC}: false-alarm, acknowledged by bob; replaces confirmed by ana\n"
    with Journal(data_dir / "journal.db") as j:
        stored = j.get(CNC)
        audit = j.audit(CNC)
    assert stored is not None
    assert (stored.state, stored.verdict, stored.acked_by) == ("acknowledged", "false-alarm", "bob")
    assert [(a["who"], a["verdict"], a["note"]) for a in audit] == [
        ("ana", "confirmed", "bearing replaced"), ("bob", "false-alarm", "")
    ]  # fmt: skip
    code, out, _ = run(capsys, "show", CNC, *d)
    assert "state       acknowledged" in out
    assert "verdict     false-alarm, by bob at " in out
    audit_lines = out.split("\naudit\n")[1].splitlines()
    assert len(audit_lines) == 2
    assert 'ana  acknowledge  confirmed  "bearing replaced"' in audit_lines[0]
    assert audit_lines[1].endswith("bob  acknowledge  false-alarm")
    code, out, _ = run(capsys, "list", *d, "--state", "acknowledged")
    assert ids_listed(out) == [CNC]
    assert "acknowledged (false-alarm)" in out


def test_ack_mistakes(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = ["--data-dir", str(data_dir)]
    cases = [
        (("ack", CNC, *d, "--by", "ana", "--verdict", "yes"), ["--verdict 'yes'", "false-alarm"]),
        (("ack", CNC, *d, "--by", "ana"), ["--verdict missing"]),
        (("ack", CNC, *d, "--verdict", "confirmed"), ["--by NAME is required"]),
        (("ack", CNC, *d, "--by", "  ", "--verdict", "confirmed"), ["--by NAME is required"]),
        (("ack", "cnc-01-1", *d, "--by", "ana", "--verdict", "confirmed"), ["no episode"]),
    ]
    for args, needles in cases:
        code, out, err = run(capsys, *args)
        assert_usage_error(code, out, err, *needles)
    with Journal(data_dir / "journal.db") as j:
        assert j.audit() == []
        stored = j.get(CNC)
    assert stored is not None and stored.state == "closed"


# -- export ----------------------------------------------------------------------------------


def test_export_csv_and_json(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = ["--data-dir", str(data_dir)]
    run(capsys, "ack", CONVEYOR, *d, "--by", "ana", "--verdict", "false-alarm", "--note", 'a, "b"')
    with Journal(data_dir / "journal.db") as j:
        expected = j.export_rows()
    code, out, _ = run(capsys, "export", *d)  # CSV by default
    assert code == 0
    rows = list(csv.DictReader(io.StringIO(out)))
    assert rows == [{k: "" if v is None else str(v) for k, v in r.items()} for r in expected]
    code, out, _ = run(capsys, "export", *d, "--format", "json")
    assert json.loads(out) == expected
    target = data_dir.parent / "out.json"
    code, out, _ = run(capsys, "export", *d, "--format", "json", "--output", str(target))
    assert out == f"4 episodes written to {target} (json)\n"
    assert json.loads(target.read_text()) == expected
    code, out, _ = run(capsys, "export", *d, "--machine", "cnc-01", "--format", "json")
    assert [r["id"] for r in json.loads(out)] == [CNC, OLD]


def test_export_mistakes_and_empty(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = ["--data-dir", str(data_dir)]
    code, out, err = run(capsys, "export", *d, "--format", "xml")
    assert_usage_error(code, out, err, "--format 'xml'", "csv or json")
    code, out, err = run(capsys, "export", *d, "--output", str(data_dir / "no" / "such" / "x.csv"))
    assert_usage_error(code, out, err, "--output", "cannot write")
    code, out, _ = run(capsys, "export", *d, "--machine", "press-9")
    assert out.strip() == ",".join(export_row(StoredEpisode(EPISODES[0], "closed")))


# -- where the journal is --------------------------------------------------------------------


def test_default_data_dir_is_the_current_directory(tmp_path: Path) -> None:
    here = tmp_path / "plant"
    with Journal(here / "factory-agent-data" / "journal.db") as j:
        j.record(EPISODES[0])
    out = run_process(here, "list")
    assert out.returncode == 0, out.stderr
    assert ids_listed(out.stdout) == [CNC]
    empty = tmp_path / "elsewhere"
    empty.mkdir()
    out = run_process(empty, "list")
    assert out.returncode == 2
    assert out.stdout == ""
    assert out.stderr.count("\n") == 1 and "Traceback" not in out.stderr
    assert f"no anomaly journal at {empty / 'factory-agent-data' / 'journal.db'}" in out.stderr
    assert "--data-dir DIR" in out.stderr and "-c FILE" in out.stderr
    assert not (empty / "factory-agent-data").exists()  # looking does not create it


def test_demo_config_keeps_the_default_data_dir() -> None:
    demo = yaml.safe_load((CONFIGS / "demo.yaml").read_text())
    assert "data_dir" not in (demo.get("agent") or {})


def test_config_data_dir_and_override(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = yaml.safe_load((CONFIGS / "demo.yaml").read_text())
    cfg["agent"]["data_dir"] = str(data_dir)
    path = tmp_path / "agent.yaml"
    path.write_text(yaml.safe_dump(cfg, allow_unicode=True))
    code, out, _ = run(capsys, "list", "-c", str(path), "--machine", "conveyor-01")
    assert (code, ids_listed(out)) == (0, [CONVEYOR])
    code, out, err = run(capsys, "list", "-c", str(path), "--data-dir", str(tmp_path / "none"))
    assert_usage_error(code, out, err, "no anomaly journal at", "(--data-dir)")
    code, out, err = run(capsys, "list", "-c", str(tmp_path / "missing.yaml"))
    assert code == 2 and "missing.yaml" in err and "Traceback" not in err


def png_width(data: bytes) -> int:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return int(struct.unpack(">I", data[16:20])[0])


def test_show_plot_writes_a_png_from_the_history(tmp_path: Path) -> None:
    here = tmp_path / "plant"
    e = EPISODES[0]
    with Journal(here / "factory-agent-data" / "journal.db") as j:
        j.record(e)
    h = History(here / "factory-agent-data" / "history.db")
    h.add(Reading("cnc-01", e.start_ns + s * SECOND, {"vibration_rms": 2.0 + (s > 0) * 4,
                                                      "motor_current": 24.0 + s / 100})
          for s in range(-400, 900, 5))  # fmt: skip
    h.close()
    out = run_process(here, "show", CNC, "--plot", "episode.png")
    assert out.returncode == 0, out.stderr
    assert png_width((here / "episode.png").read_bytes()) == 900
    plot_line = next(line for line in out.stdout.splitlines() if line.startswith("plot"))
    assert "episode.png: 2 signals," in plot_line and "from the local history" in plot_line
    # (300 + 725 + 120) s of window at one reading per 5 s, for both signals
    assert f"{2 * (1145 // 5 + 1)} values" in plot_line
    out = run_process(here, "show", CNC, "--plot", "episode.svg")
    assert out.returncode == 0, out.stderr
    assert b"<svg" in (here / "episode.svg").read_bytes()


# -- the view's InfluxDB fallback ------------------------------------------------------------


def write_with_sink(server: InfluxDB1, database: str, readings: list[Reading], **auth: str) -> None:
    """Through the project's own encoder and InfluxDB 1.x sink, as the agent forwards."""
    cfg = InfluxV1Config(type="influxdb_v1", url=server.url, database=database, **auth)  # type: ignore[arg-type]

    async def go() -> None:
        sink = InfluxV1Sink(cfg)
        try:
            await sink.write(Encoder().encode_many(readings))
        finally:
            await sink.close()

    asyncio.run(go())


def cnc_readings(e: Episode) -> list[Reading]:
    """cnc-01 every 10 s around the episode; a failed and an uncertain value."""
    out = []
    for s in range(-600, 1000, 10):
        fields: dict[str, float | None] = {"vibration_rms": 2.0 + s / 1000, "motor_current": 24.0}
        quality = {}
        if s == 100:  # no value: the line carries only vibration_rms_quality
            fields["vibration_rms"] = None
            quality["vibration_rms"] = Quality.bad(0x808B0000, "BadSensorFailure")
        if s == 200:  # a value not to be trusted: written, and must not be plotted
            quality["vibration_rms"] = Quality.uncertain(0x40000000, "Uncertain")
        out.append(Reading("cnc-01", e.start_ns + s * SECOND, dict(fields),
                           {"line": "line-1", "device": "demo-opcua"}, quality))  # fmt: skip
    out.append(Reading("cnc-02", e.start_ns, {"vibration_rms": 99.0}))  # another machine
    return out


def influx_config(data_dir: Path, url: str, database: str, **extra: object) -> AgentConfig:
    sink = {"type": "influxdb_v1", "name": "plant-influx", "url": url, "database": database,
            **extra}  # fmt: skip
    return AgentConfig.model_validate({"agent": {"data_dir": str(data_dir)}, "sinks": [sink]})


def test_view_falls_back_to_influxdb_v1(influxdb1: InfluxDB1, data_dir: Path) -> None:
    influxdb1.create_database("anomalies_view")
    e = EPISODES[0]
    readings = cnc_readings(e)
    write_with_sink(influxdb1, "anomalies_view", readings)
    History(data_dir / "history.db").close()  # the local history is there, and empty
    stored = StoredEpisode(e, "closed", line="line-1")
    view = load_view(stored, influx_config(data_dir, influxdb1.url, "anomalies_view"))
    assert view.source == "influxdb"
    assert view.note == "from InfluxDB sink plant-influx: the local history is empty"
    vib, current = view.series
    assert (vib.signal, current.signal) == ("vibration_rms", "motor_current")
    expected = [r for r in readings
                if r.machine == "cnc-01" and view.start_ns <= r.time_ns <= view.end_ns]  # fmt: skip
    assert vib.times_ns == [r.time_ns for r in expected]
    for r, got in zip(expected, vib.values, strict=True):
        good = "vibration_rms" not in r.quality
        assert got == r.fields["vibration_rms"] if good else math.isnan(got)
    assert sum(math.isnan(v) for v in vib.values) == 2
    assert current.values == [24.0] * len(expected)
    assert (vib.expected, vib.spread, vib.unit) == (VIB.expected, VIB.spread, "mm/s")


def test_history_covering_the_window_wins(influxdb1: InfluxDB1, data_dir: Path) -> None:
    influxdb1.create_database("anomalies_cover")
    e = EPISODES[0]
    write_with_sink(influxdb1, "anomalies_cover", cnc_readings(e))
    h = History(data_dir / "history.db")
    h.add([Reading("cnc-01", e.start_ns - s * SECOND, {"vibration_rms": 1.0}) for s in (400, 0)])
    h.close()
    view = load_view(StoredEpisode(e, "closed"),
                     influx_config(data_dir, influxdb1.url, "anomalies_cover"))  # fmt: skip
    assert (view.source, view.note) == ("history", "")
    assert view.series[0].values == [1.0]  # only the reading inside the window


def test_influxdb_with_auth_and_password_file(
    start_server: Callable[..., InfluxDB1], tmp_path: Path
) -> None:
    server = start_server(InfluxDB1, auth_enabled=True)
    server.create_admin("admin", PASSWORD)
    server.create_database("secure")
    e = EPISODES[0]
    write_with_sink(server, "secure", cnc_readings(e), username="admin", password=PASSWORD)
    secret = tmp_path / "influx-password"
    secret.write_text(PASSWORD + "\n")
    cfg = influx_config(tmp_path, server.url, "secure", username="admin",
                        password_file=str(secret))  # fmt: skip
    view = load_view(StoredEpisode(e, "closed"), cfg)
    assert view.source == "influxdb"
    assert len(view.series[0].values) > 100
    secret.write_text("wrong")
    view = load_view(StoredEpisode(e, "closed"), cfg)
    assert view.source == "none"
    assert "answered 401" in view.note
    assert PASSWORD not in view.note and "wrong" not in view.note


def test_influxdb_unreachable_or_empty_is_a_note(influxdb1: InfluxDB1, data_dir: Path) -> None:
    stored = StoredEpisode(EPISODES[0], "closed")
    dead = f"http://127.0.0.1:{free_port()}"
    t0 = time.monotonic()
    view = load_view(stored, influx_config(data_dir, dead, "factory"))
    assert time.monotonic() - t0 < 6.0  # a few seconds at most
    assert view.source == "none"
    assert f"InfluxDB sink plant-influx ({dead}) unreachable" in view.note
    assert "no local history at" in view.note
    view = load_view(stored, influx_config(data_dir, influxdb1.url, "no_such_db"))
    assert view.source == "none"
    assert "database not found" in view.note
    influxdb1.create_database("anomalies_empty")
    view = load_view(stored, influx_config(data_dir, influxdb1.url, "anomalies_empty"))
    assert view.source == "none"
    assert "InfluxDB sink plant-influx has no readings of cnc-01 for this window" in view.note


def test_show_plot_through_influxdb(influxdb1: InfluxDB1, data_dir: Path, tmp_path: Path) -> None:
    influxdb1.create_database("anomalies_cli")
    write_with_sink(influxdb1, "anomalies_cli", cnc_readings(EPISODES[0]))
    cfg = yaml.safe_load((CONFIGS / "demo.yaml").read_text())
    cfg["agent"]["data_dir"] = str(data_dir)
    cfg["sinks"] = [{"name": "plant-influx", "type": "influxdb_v1", "url": influxdb1.url,
                     "database": "anomalies_cli"}]  # fmt: skip
    path = tmp_path / "agent.yaml"
    path.write_text(yaml.safe_dump(cfg, allow_unicode=True))
    out = run_process(tmp_path, "show", CNC, "-c", str(path), "--plot", "p.png")
    assert out.returncode == 0, out.stderr
    assert "from InfluxDB" in out.stdout
    assert "(from InfluxDB sink plant-influx: no local history at" in out.stdout
    assert png_width((tmp_path / "p.png").read_bytes()) == 900
