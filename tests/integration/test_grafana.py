"""The Grafana dashboard ``configs/grafana/factory-agent.json`` against a real InfluxDB 1.x.

Grafana itself is not run (it is not packaged for Debian); what Grafana does with the file is
done here the way its InfluxDB data source does it (Grafana 10/11, InfluxQL, raw queries):

- import: ``${DS_INFLUXDB}`` becomes the chosen data source, each ``${VAR_*}`` the constant
  typed in (its default here);
- template variables are evaluated in order on the server, each with its ``regex`` applied to
  what ``SHOW TAG VALUES`` (column ``value``) or ``SHOW FIELD KEYS`` (``fieldKey``) return;
- macros: ``$timeFilter`` becomes ``time >= <from>ms and time <= <to>ms``, ``$__interval`` a
  duration such as ``1s``;
- a multi-value (or include-All) variable is regex-escaped, several values become ``(a|b)``,
  All becomes the custom all value (``.*``) or every option; a repeated panel gets one value;
- annotations take their columns by ``textColumn`` / ``tagsColumn`` / ``titleColumn``; tag
  columns must be text (Grafana splits them on commas).

The data is written by the real agent: an OPC UA CNC (machine time, 30x, so its warm-up ends
and it is scored) and a Modbus conveyor with a failed temperature sensor (so a ``_quality``
field exists) are read into InfluxDB with a short monitor interval. Episodes come from the real
alarm logic and reach InfluxDB through the running agent's pipeline (``episode_reading`` and the
agent's encoder, as the analytics hook does); acknowledgements are given in the agent's journal
and forwarded by the agent itself into ``anomaly_annotation``.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent.analysis import ANOMALY_MEASUREMENT, SCORE_MEASUREMENT, episode_reading
from agent.annotations import ANNOTATION_MEASUREMENT
from agent.config import AgentConfig, AgentSection, MonitorConfig
from agent.journal import Journal, Verdict
from agent.lineprotocol import Encoder
from agent.runtime import Agent
from analytics.alarm import AlarmConfig, AlarmLogic
from analytics.types import Contribution, Episode, Explanation
from simulators.agentconfig import device_section
from simulators.engine import Plant
from simulators.modbus_server import ModbusSimServer
from simulators.opcua_server import OpcUaSimServer
from simulators.scenario import Scenario
from tests.conftest import ROOT, free_port
from tests.servers import InfluxDB1

pytestmark = pytest.mark.integration

DASHBOARD = ROOT / "configs" / "grafana" / "factory-agent.json"
DS = {"type": "influxdb", "uid": "${DS_INFLUXDB}"}
GRID_COLUMNS = 24
NS = 1_000_000_000

SPEED = 30  # machine seconds per wall second: the OPC UA machine's clock (source timestamps)
# Warm-up steps (1 s of machine time): PCA needs its 67-step rate window plus 20 rows; the
# Modbus conveyor (wall-clock timestamps) stays in warm-up for the whole run.
WARMUP_ROWS = 150
MONITOR_S = 0.5
INTERVAL = "1s"  # $__interval: what Grafana picks for a 15-minute range on a wide panel
AGENT = "grafana-agent"
DB = "grafana"
CNC, CONVEYOR, NO_LINE = "cnc-01", "conveyor-01", "press-07"
FAILED = "motor_temperature"  # the conveyor's failed sensor: only <field>_quality is written

ALL = None  # a variable's "All" selection
Selection = Mapping[str, list[str] | None]


# -- the dashboard as Grafana imports it ------------------------------------------------------
def load() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return doc


def imported(doc: dict[str, Any], datasource_uid: str = "influx-test") -> dict[str, Any]:
    """Every ``${DS_…}``/``${VAR_…}`` replaced by what the import dialog sets (the defaults)."""
    values = {
        i["name"]: datasource_uid if i["type"] == "datasource" else i["value"]
        for i in doc["__inputs"]
    }

    def value(m: re.Match[str]) -> str:
        assert m.group(1) in values, f"${{{m.group(1)}}} is not declared in __inputs"
        return str(values[m.group(1)])

    text = re.sub(r"\$\{((?:DS|VAR)_\w+)\}", value, json.dumps(doc))
    out: dict[str, Any] = json.loads(text)
    del out["__inputs"]
    return out


def panels(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel, those inside rows included."""
    out: list[dict[str, Any]] = []
    for p in doc["panels"]:
        out.append(p)
        out.extend(p.get("panels", []))
    return out


def queries(doc: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(where, InfluxQL) of every panel target, template variable and annotation."""
    for p in panels(doc):
        for t in p.get("targets", []):
            yield f"panel {p['id']} {p['title']!r} target {t['refId']}", t["query"]
    for v in doc["templating"]["list"]:
        if v["type"] == "query":
            yield f"variable {v['name']}", v["query"]
    for a in doc["annotations"]["list"]:
        yield f"annotation {a['name']!r}", a["target"]["query"]


def variables(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in doc["templating"]["list"]}


def grafana_regex(value: str) -> str:
    """Grafana's regex escape for InfluxDB variable values."""
    return re.sub(r"[\\^$*+?.()|\[\]{}/]", lambda m: "\\" + m.group(), value)


VAR_REF = re.compile(r"\$\{(\w+)(?::(\w+))?\}|\$(\w+)")


@dataclass
class Grafana:
    """Evaluates the dashboard's variables and queries on InfluxDB the way Grafana would."""

    influx: InfluxDB1
    db: str
    doc: dict[str, Any]
    from_ms: int
    to_ms: int
    interval: str = INTERVAL
    vars: dict[str, dict[str, Any]] = field(init=False)

    def __post_init__(self) -> None:
        self.vars = variables(self.doc)

    def interpolate(
        self, query: str, selection: Selection, scoped: dict[str, str] | None = None
    ) -> str:
        time_filter = f"time >= {self.from_ms}ms and time <= {self.to_ms}ms"
        ms = int(self.interval.removesuffix("s")) * 1000
        q = query.replace("$__timeFilter", time_filter).replace("$timeFilter", time_filter)
        q = q.replace("$__interval_ms", str(ms)).replace("$__interval", self.interval)
        q = q.replace("$interval", self.interval)

        def value(m: re.Match[str]) -> str:
            name = m.group(1) or m.group(3)
            assert m.group(2) is None, f"format ${{{name}:{m.group(2)}}} is not simulated here"
            assert name in self.vars, f"${name} is not a template variable of the dashboard"
            var = self.vars[name]
            if var["type"] == "constant":
                return str(var["query"])
            if scoped and name in scoped:
                values = [scoped[name]]
            elif selection.get(name, ALL) is ALL:
                if var.get("allValue"):
                    return str(var["allValue"])  # a custom all value is used as it is
                values = self.options(name, selection)
            else:
                values = list(selection[name] or [])
            if not (var.get("multi") or var.get("includeAll")):
                regex = q[m.start() - 2 : m.start()] == "/^" and q[m.end() : m.end() + 2] == "$/"
                return grafana_regex(values[0]) if regex else values[0]
            escaped = [grafana_regex(v) for v in values]
            return escaped[0] if len(escaped) == 1 else "(" + "|".join(escaped) + ")"

        q = VAR_REF.sub(value, q)
        assert not re.search(r"\$[\w{]", q), f"left uninterpolated: {q}"
        return q

    def run(
        self, query: str, selection: Selection, scoped: dict[str, str] | None = None
    ) -> list[dict[str, Any]]:
        return self.influx.query(self.interpolate(query, selection, scoped), self.db)

    def options(self, name: str, selection: Selection) -> list[str]:
        """The variable's values: its query on the server, then its regex (as Grafana does)."""
        var = self.vars[name]
        rows = self.run(var["query"], selection)
        column = "value" if "SHOW TAG VALUES" in var["query"].upper() else "fieldKey"
        found = [str(r[column]) for r in rows]
        if var.get("regex"):
            m = re.fullmatch(r"/(.*)/([gimsuy]*)", var["regex"])
            assert m, f"variable {name}: regex {var['regex']!r} is not /pattern/flags"
            pattern = re.compile(m.group(1), re.IGNORECASE if "i" in m.group(2) else 0)
            kept = []
            for v in found:
                hit = pattern.search(v)
                if hit:
                    kept.append(hit.group(1) if hit.groups() else v)
            found = kept
        return sorted(set(found)) if var.get("sort") else found

    def targets(self, selection: Selection) -> Iterator[tuple[dict[str, Any], str, str, list[Any]]]:
        """(panel, repeat value or "", where, rows) of every panel target; a repeated panel
        once per value of its variable."""
        for p in panels(self.doc):
            repeat = p.get("repeat")
            values = self.options(repeat, selection) if repeat else [""]
            if repeat and selection.get(repeat, ALL) is not ALL:
                values = list(selection[repeat] or [])
            for v in values:
                scoped = {repeat: v} if repeat else None
                for t in p.get("targets", []):
                    where = f"panel {p['title']!r}{f' ({v})' if v else ''} {t['refId']}"
                    yield p, v, where, self.run(t["query"], selection, scoped)


# -- the structure ------------------------------------------------------------------------------
def test_dashboard_is_an_importable_grafana_export() -> None:  # noqa: PLR0915 (one checklist)
    doc = load()
    assert doc["schemaVersion"] >= 36 and doc["uid"] and doc["title"] and doc["id"] is None

    # inputs: one InfluxDB data source, constants with defaults; each declared and used
    inputs = {i["name"]: i for i in doc["__inputs"]}
    assert len(inputs) == len(doc["__inputs"])
    assert [n for n, i in inputs.items() if i["type"] == "datasource"] == ["DS_INFLUXDB"]
    assert inputs["DS_INFLUXDB"]["pluginId"] == "influxdb"
    for i in inputs.values():
        assert i["type"] in ("datasource", "constant")
        assert i["type"] == "datasource" or str(i["value"]), f"input {i['name']} has no default"
    text = DASHBOARD.read_text(encoding="utf-8")
    used = set(re.findall(r"\$\{((?:DS|VAR)_\w+)\}", text))
    assert used == set(inputs), f"declared {sorted(inputs)}, used {sorted(used)}"

    # the constants default to the agent's own measurement names
    consts = {v["name"]: v["query"] for v in doc["templating"]["list"] if v["type"] == "constant"}
    defaults = {f"${{{n}}}": i.get("value") for n, i in inputs.items()}
    assert defaults[consts["measurement"]] == AgentSection.model_fields["measurement"].default
    assert defaults[consts["internal"]] == MonitorConfig.model_fields["measurement"].default

    # panels: unique ids, a place on the 24-column grid, no two overlapping
    all_panels = panels(doc)
    ids = [p["id"] for p in all_panels]
    assert len(ids) == len(set(ids)) and all(isinstance(i, int) for i in ids)
    cells: dict[tuple[int, int], int] = {}
    for p in all_panels:
        g = p["gridPos"]
        assert all(isinstance(g[k], int) for k in "xywh"), f"panel {p['id']}: gridPos {g}"
        assert g["x"] >= 0 and g["y"] >= 0 and g["w"] >= 1 and g["h"] >= 1
        assert g["x"] + g["w"] <= GRID_COLUMNS, f"panel {p['id']} is wider than the grid"
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"panels {cells[(x, y)]} and {p['id']} overlap"
                cells[(x, y)] = p["id"]

    # every panel but a row reads the input data source, in raw InfluxQL
    types = set()
    for p in all_panels:
        if p["type"] == "row":
            assert not p.get("targets"), f"row {p['id']} has queries"
            continue
        types.add(p["type"])
        assert p["datasource"] == DS, f"panel {p['id']}: datasource {p.get('datasource')}"
        assert p["targets"], f"panel {p['id']} has no query"
        assert len({t["refId"] for t in p["targets"]}) == len(p["targets"])
        for t in p["targets"]:
            assert t["datasource"] == DS and t["rawQuery"] is True and t["query"].strip()
    required = {r["id"] for r in doc["__requires"] if r["type"] == "panel"}
    assert types <= required, f"__requires lacks {types - required}"
    assert {r["id"] for r in doc["__requires"] if r["type"] == "datasource"} == {"influxdb"}

    # variables and annotations read the input data source too
    declared = variables(doc)
    for v in declared.values():
        if v["type"] == "query":
            assert v["datasource"] == DS and v["query"] == v["definition"]
            assert v["multi"] and v["includeAll"], f"variable {v['name']} should be multi/All"
        else:
            assert v["type"] == "constant"
    for a in doc["annotations"]["list"]:
        assert a["datasource"] == DS and a["enable"]
        tgt = a["target"]
        assert tgt["rawQuery"] and tgt["query"].strip() and tgt["textColumn"]
        selected = re.match(r"SELECT (.*?) FROM", tgt["query"])
        assert selected, a["name"]
        columns = {c.strip().strip('"') for c in selected.group(1).split(",")}
        wanted = {tgt["textColumn"], tgt["titleColumn"], *tgt["tagsColumn"].split(",")}
        assert wanted <= columns, f"annotation {a['name']!r} maps columns it does not select"

    # each $name is a variable; a multi-value one only ever inside /^…$/, where (a|b) is valid
    macros = {"timeFilter", "__timeFilter", "__interval", "__interval_ms", "interval"}
    multi = {n for n, v in declared.items() if v.get("multi") or v.get("includeAll")}
    for where, q in queries(doc):
        for m in VAR_REF.finditer(q):
            name = m.group(1) or m.group(3)
            assert name in declared or name in macros, f"{where}: ${name} is not defined"
            if name in multi:
                assert q[m.start() - 2 : m.start()] == "/^" and q[m.end() : m.end() + 2] == "$/", (
                    f"{where}: ${name} outside /^…$/ breaks with several values"
                )
    for p in all_panels:
        if p.get("repeat"):
            assert p["repeat"] in multi, f"panel {p['id']} repeats over a single-value variable"

    # what the agent writes is all there: readings, scores, episodes, acks, self-metrics
    sources = {m for _, q in queries(doc) for m in re.findall(r'FROM "([^"]+)"', q)}
    assert sources >= {
        "$measurement", "$internal", SCORE_MEASUREMENT, ANOMALY_MEASUREMENT,
        ANNOTATION_MEASUREMENT,
    }  # fmt: skip

    # the score panel draws 1.0, the learned limit, as a threshold line
    reads_scores = f'FROM "{SCORE_MEASUREMENT}"'
    (score,) = [
        p for p in all_panels if any(reads_scores in t["query"] for t in p.get("targets", []))
    ]
    defaults_fc = score["fieldConfig"]["defaults"]
    assert [s["value"] for s in defaults_fc["thresholds"]["steps"]] == [None, 1]
    assert defaults_fc["custom"]["thresholdsStyle"]["mode"] in ("line", "dashed", "line+area")


# -- the data, written by the agent ------------------------------------------------------------
@dataclass
class Filled:
    influx: InfluxDB1
    from_ms: int
    lines: dict[str, str]  # machine -> line, of the machines the agent read
    signals: dict[str, list[str]]  # machine -> its signals (fields)
    episodes: dict[str, tuple[Episode, dict[str, Any]]]  # id -> (episode, last fields written)
    acks: dict[str, tuple[str, Verdict, str]]  # episode id -> (who, verdict, note)

    def grafana(self) -> Grafana:
        now_ms = time.time_ns() // 1_000_000
        return Grafana(self.influx, DB, imported(load()), self.from_ms, now_ms + 60_000)


def alarm_episode(
    machine: str, tags: dict[str, str], version: str, start_ns: int, *, close: bool,
    contributions: tuple[Contribution, ...], lines: list[bytes],
) -> tuple[Episode, dict[str, Any]]:  # fmt: skip
    """An episode from the real alarm logic, and the fields of its last ``anomaly`` point.

    Its lines are appended to ``lines`` event by event, as the analytics hook makes them (the
    point is rewritten at the same time as the episode grows and closes).
    """
    alarm = AlarmLogic(machine, AlarmConfig(), model_version=version, tags=dict(tags))
    encoder = Encoder(ANOMALY_MEASUREMENT)
    expl = Explanation("pca-t2q", 3.0, contributions)
    steps = [3.0 + 0.2 * i for i in range(10)]
    if close:
        steps += [0.1] * (int(AlarmConfig().off_delay_s) + 5)
    state, seen, written = "", set(), {}
    for i, score in enumerate(steps):
        for ev in alarm.update(start_ns + i * NS, score, expl if score >= 1 else None):
            assert ev.kind != "suppressed"
            state = "closed" if ev.kind == "closed" else "open"
            seen.add(id(ev.episode))
            ep = ev.episode
            reading = episode_reading(ev.episode, state)
            written = dict(reading.fields)
            line = encoder.encode(reading)
            assert line is not None
            lines.append(line)
    assert len(seen) == 1, "one episode, rewritten as it grows and closes"
    assert state == ("closed" if close else "open") and (ep.end_ns is not None) == close
    return ep, written


async def until(cond: Callable[[], bool], running: asyncio.Task[None], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        if running.done():
            running.result()  # the agent stopped: show why
            raise AssertionError("the agent stopped early")
        assert time.monotonic() < deadline, f"not ready within {timeout_s} s"
        await asyncio.sleep(0.1)


async def run_agent(influx: InfluxDB1, data_dir: Path) -> Filled:
    """A CNC over OPC UA and a conveyor over Modbus, served in this process, read by the agent."""
    start = datetime.now(UTC) - timedelta(hours=1)  # machine time runs 30x: keep it in the past
    scn = Scenario.model_validate({
        "name": "grafana", "site": "plant-a", "seed": 7, "speed": SPEED, "rate_hz": SPEED,
        "duration": "2h", "start": start.isoformat(),
        "opcua": {"port": 0}, "modbus": {"port": free_port()},
        "machines": [{"name": CNC, "kind": "cnc", "line": "press.1"},
                     {"name": CONVEYOR, "kind": "conveyor", "line": "pack.2"}],
        "faults": [{"machine": CONVEYOR, "type": "sensor_failure", "signal": FAILED,
                    "start": "0s", "duration": "1h", "severity": 1.0}],
    })  # fmt: skip
    plant = Plant(scn)
    opcua = OpcUaSimServer(plant, scn.opcua)
    modbus = ModbusSimServer(plant, scn.modbus.model_copy(update={"port": 0}))
    await opcua.start()
    await modbus.start()
    stop = asyncio.Event()
    ticking = asyncio.create_task(plant.run([opcua.publish, modbus.publish], stop))
    try:
        return await read_plant(
            influx, data_dir, scn, plant, endpoint=opcua.endpoint, port=modbus.port
        )
    finally:
        stop.set()
        await ticking
        await opcua.stop()
        await modbus.stop()


async def read_plant(
    influx: InfluxDB1, data_dir: Path, scn: Scenario, plant: Plant, *, endpoint: str, port: int
) -> Filled:
    """The agent reads the plant into InfluxDB; episodes and acknowledgements are added."""
    opc = yaml.safe_load(device_section(scn, "opcua"))["devices"][0]
    opc.update(endpoint=endpoint, interval_s=1 / SPEED)
    opc["machines"] = [m for m in opc["machines"] if m["name"] == CNC]
    mb = yaml.safe_load(device_section(scn, "modbus"))["devices"][0]
    mb.update(port=port, interval_s=0.2, timeout_s=1.0)
    mb["machines"] = [m for m in mb["machines"] if m["name"] == CONVEYOR]
    cfg = AgentConfig.model_validate({
        "agent": {"name": AGENT, "data_dir": str(data_dir), "log_level": "WARNING"},
        "devices": [opc, mb],
        "sinks": [{"name": "influx1", "type": "influxdb_v1", "url": influx.url, "database": DB}],
        "history": {"enabled": False},
        "http": {"listen": f"127.0.0.1:{free_port()}"},
        "monitor": {"interval_s": MONITOR_S},
        "spool": {"batch_interval_s": 0.2},
        "analytics": {"warmup_s": WARMUP_ROWS, "warmup_rows": WARMUP_ROWS},
    })  # fmt: skip
    agent = Agent(cfg)
    running = asyncio.create_task(agent.run())
    episodes: dict[str, tuple[Episode, dict[str, Any]]] = {}
    acks: dict[str, tuple[str, Verdict, str]] = {}
    try:

        def scored() -> bool:  # the CNC past its warm-up, the conveyor polled
            an = agent.analytics.analyzers.get(CNC) if agent.analytics else None
            polled = agent.pipeline.stats.by_device.get(mb["name"], 0) if agent.pipeline else 0
            trained = an is not None and an.model is not None and an.steps > WARMUP_ROWS + 20
            return trained and polled >= 10

        await until(scored, running, 60)
        assert agent.analytics is not None and agent.pipeline is not None
        cnc = agent.analytics.analyzers[CNC]
        assert cnc.model is not None
        conveyor = agent.analytics.analyzers[CONVEYOR]
        why = (Contribution("spindle_load", 0.61, observed=88.0, expected=52.0, spread=6.0,
                            unit="%"),
               Contribution("motor_current", 0.27, observed=41.0, expected=30.0, spread=2.5,
                            unit="A"))  # fmt: skip
        belt = (Contribution("vibration_rms", 0.8, observed=4.1, expected=1.2, spread=0.3,
                             unit="mm/s"),)  # fmt: skip
        now = time.time_ns()
        lines: list[bytes] = []
        for machine, tags, version, t0, close, contributions in (
            (CNC, cnc.alarm.tags, cnc.model.version, plant.start_ns + 40 * NS, True, why),
            (CNC, cnc.alarm.tags, cnc.model.version, plant.start_ns + 100 * NS, False, why),
            (CONVEYOR, conveyor.alarm.tags, "", now - 90 * NS, True, belt),
            (NO_LINE, {"site": "plant-a"}, "", now - 80 * NS, True, belt),  # a device without line
        ):
            ep, written = alarm_episode(machine, tags, version, t0, close=close,
                                      contributions=contributions, lines=lines)  # fmt: skip
            episodes[ep.id] = (ep, written)
        agent.pipeline.emit(lines)  # as the analytics hook emits them: spool, then InfluxDB
        journal = Journal(data_dir / "journal.db")  # another process would do the same
        try:
            given: list[tuple[str, Verdict, str]] = [
                ("Lan", "false-alarm", "coolant top-up, not a fault"),
                ("Minh", "confirmed", "bearing replaced"),
                ("Thu", "confirmed", "ram seal leaking"),
            ]
            closed = [ep for ep, written in episodes.values() if written["state"] == "closed"]
            for ep, (who, verdict, note) in zip(closed, given, strict=True):
                journal.record(ep)
                journal.acknowledge(ep.id, by=who, verdict=verdict, note=note)
                acks[ep.id] = (who, verdict, note)
        finally:
            journal.close()
        await asyncio.sleep(3)  # self-metrics every 0.5 s; the agent forwards the acks itself
    finally:
        agent.request_stop()
        await running
    signals = {CNC: [n["field"] for n in opc["machines"][0]["nodes"]],
               CONVEYOR: [r["field"] for r in mb["machines"][0]["registers"]]}  # fmt: skip
    return Filled(
        influx=influx,
        from_ms=plant.start_ns // 1_000_000 - 600_000,
        lines={CNC: "press.1", CONVEYOR: "pack.2"},
        signals=signals,
        episodes=episodes,
        acks=acks,
    )


@pytest.fixture(scope="module")
def filled(influxdb1: InfluxDB1, tmp_path_factory: pytest.TempPathFactory) -> Filled:
    influxdb1.create_database(DB)
    return asyncio.run(run_agent(influxdb1, tmp_path_factory.mktemp("agent")))


# -- the queries on the data --------------------------------------------------------------------
def test_template_variables_list_what_the_agent_wrote(filled: Filled) -> None:
    g = filled.grafana()
    assert g.options("line", {}) == sorted(filled.lines.values())
    assert g.options("machine", {}) == sorted(filled.lines)
    assert g.options("machine", {"line": [filled.lines[CNC]]}) == [CNC]  # chained on $line
    assert g.options("agent", {}) == [AGENT]
    # signals: every numeric field of both kinds; the failed sensor wrote only its _quality
    raw = g.run(g.vars["field"]["query"], {})
    kinds = {r["fieldKey"]: r["fieldType"] for r in raw}
    assert kinds[f"{FAILED}_quality"] == "string"  # the agent wrote why the value is missing
    fields = g.options("field", {})
    expected = (set(filled.signals[CNC]) | set(filled.signals[CONVEYOR])) - {FAILED}
    assert set(fields) == expected
    assert {kinds[f] for f in fields} == {"float"}


def test_every_panel_has_data_for_all_machines(filled: Filled) -> None:
    g = filled.grafana()
    seen = 0
    for p, _, where, rows in g.targets({}):
        assert rows, f"{where}: no rows ({g.interpolate(p['targets'][0]['query'], {})})"
        for column in set(rows[0]) - {"time"}:  # each field selected (or tag grouped by) exists
            assert any(r[column] is not None for r in rows), f"{where}: {column} is always null"
        seen += 1
    n_fields = len(g.options("field", {}))
    repeated = sum(len(p["targets"]) for p in panels(g.doc) if p.get("repeat"))
    plain = sum(len(p.get("targets", [])) for p in panels(g.doc) if not p.get("repeat"))
    assert seen == plain + repeated * n_fields  # every signal panel of the repeat ran


@pytest.mark.parametrize("machine", [CNC, CONVEYOR])
def test_selecting_a_line_or_machine_filters_every_panel(filled: Filled, machine: str) -> None:
    g = filled.grafana()
    for selection in ({"line": [filled.lines[machine]]}, {"machine": [machine]}):
        for p, signal, where, rows in g.targets(selection):
            for r in rows:
                assert r.get("machine") in (None, machine), f"{where}: {r}"
                assert r.get("line") in (None, filled.lines[machine]), f"{where}: {r}"
            reads = " ".join(t["query"] for t in p["targets"])
            if p.get("repeat"):  # a signal panel: data exactly for this machine's signals
                has = signal in filled.signals[machine] and signal != FAILED
                assert bool(rows) == has, f"{where}: {len(rows)} rows"
            elif "$internal" not in reads and "$agent" not in reads:
                assert rows, f"{where}: nothing for {machine}"  # scores, episodes, acks
    # the health panels follow $agent, not $machine (self-metrics carry no machine tag)
    for p, _, where, rows in g.targets({"agent": [AGENT]}):
        if "$agent" in " ".join(t["query"] for t in p["targets"]):
            assert rows and {r.get("agent") for r in rows} == {AGENT}, where


def test_episode_and_acknowledgement_tables(filled: Filled) -> None:
    g = filled.grafana()
    tables = [p for p in panels(g.doc) if p["type"] == "table"]
    (episodes,) = [p for p in tables if f'FROM "{ANOMALY_MEASUREMENT}"' in p["targets"][0]["query"]]
    (acks,) = [p for p in tables if f'FROM "{ANNOTATION_MEASUREMENT}"' in p["targets"][0]["query"]]
    rows = g.run(episodes["targets"][0]["query"], {})
    times = [r["time"] for r in rows]
    assert times == sorted(times, reverse=True)  # newest first
    by_id = {r["id"]: r for r in rows}
    for eid, (ep, written) in filled.episodes.items():
        r = by_id[eid]  # the episode's last state: an open one as last reported
        assert r["machine"] == ep.machine and r["line"] == ep.tags.get("line")
        # an acknowledged episode's point is rewritten by the agent with the journal's state
        state = "acknowledged" if eid in filled.acks else written["state"]
        assert r["state"] == state, f"{eid}: state {r['state']!r}, expected {state!r}"
        for k in ("severity", "peak_score", "top_signal", "explanation", "duration_s"):
            assert r[k] == written[k], f"{eid}: {k} {r[k]!r}, written {written[k]!r}"
    rows = g.run(acks["targets"][0]["query"], {})
    by_episode = {r["episode_id"]: r for r in rows}
    assert set(by_episode) == set(filled.acks)
    for eid, (who, verdict, note) in filled.acks.items():
        r = by_episode[eid]
        assert (r["who"], r["verdict"], r["note"]) == (who, verdict, note)
        assert r["machine"] == filled.episodes[eid][0].machine


def test_annotations_carry_the_explanation_and_the_verdict(filled: Filled) -> None:
    g = filled.grafana()
    texts: dict[str, dict[str, str]] = {}
    for a in g.doc["annotations"]["list"]:
        t = a["target"]
        rows = g.run(t["query"], {})
        assert rows, f"annotation {a['name']!r}: nothing"
        for r in rows:  # what Grafana makes of a row
            text, title = r[t["textColumn"]], r[t["titleColumn"]]
            assert isinstance(text, str) and text, f"{a['name']}: {r}"
            for tag in t["tagsColumn"].split(","):
                assert r[tag] is None or isinstance(r[tag], str), f"{a['name']}: {tag} not text"
            texts.setdefault(a["name"], {})[title] = text
        # the line filter keeps rows of the selected line only (and no line-less ones)
        for machine, line in filled.lines.items():
            for r in g.run(t["query"], {"line": [line]}):
                assert r["machine"] == machine, f"{a['name']} on {line}: {r}"
    episode_texts, ack_texts = (texts[a["name"]] for a in g.doc["annotations"]["list"])
    for eid, (_, written) in filled.episodes.items():
        assert episode_texts[eid] == written["explanation"]
    for eid, (who, _, note) in filled.acks.items():
        assert who in ack_texts[eid] and note in ack_texts[eid]
    no_line = [eid for eid, (ep, _) in filled.episodes.items() if ep.machine == NO_LINE]
    assert no_line and set(no_line) <= set(ack_texts)  # "All" lines includes a line-less device
