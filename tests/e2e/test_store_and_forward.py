"""Store and forward, end to end: Modbus plant → agent → InfluxDB, with the sink taken away.

The plant is a speed-1 factory-sim subprocess (200 machines, 10 Hz; tests/e2e/conftest.py), so
reading timestamps are ≈ now. The agent runs in this process (its hook records every reading
it encodes: the ground truth the database is compared with), except in the crash test, where
it is a subprocess that gets SIGKILLed.
"""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.request
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent.config import AgentConfig
from agent.deflate import Chunk, inflate
from agent.runtime import Agent
from connectors.types import Reading
from tests.conftest import ROOT
from tests.e2e.conftest import Plant, agent_config, wait_for
from tests.servers import InfluxDB1

pytestmark = pytest.mark.e2e


class Recorder:
    """The analytics hook slot used as a tap: every reading the agent encodes, by machine."""

    def __init__(self) -> None:
        self.times: dict[str, list[int]] = defaultdict(list)
        self.count = 0

    def __call__(self, reading: Reading) -> Iterable[Reading]:
        self.times[reading.machine].append(reading.time_ns)
        self.count += 1
        return (reading,)


async def run_agent(cfg: dict[str, Any], hook: Recorder) -> tuple[Agent, asyncio.Task[None]]:
    agent = Agent(AgentConfig(**cfg), hook=hook)
    task = asyncio.create_task(agent.run())
    await wait_for(lambda: agent.pipeline is not None and agent.forwarders, 10)
    return agent, task


async def stop_agent(agent: Agent, task: asyncio.Task[None]) -> None:
    agent.request_stop()
    await asyncio.wait_for(task, 15)


def sink_stats(agent: Agent) -> dict[str, Any]:
    return agent.forwarders[0].snapshot()


def v1_sink(server: InfluxDB1, db: str) -> dict[str, Any]:
    return {"name": "influx", "type": "influxdb_v1", "url": server.url, "database": db}


def counts_by_machine(server: InfluxDB1, db: str, field: str = "motor_current") -> dict[str, int]:
    rows = server.query(f'SELECT count("{field}") FROM machine GROUP BY machine', db)
    return {r["machine"]: r["count"] for r in rows}


def times_of(server: InfluxDB1, db: str, machine: str) -> list[int]:
    rows = server.query(f"SELECT motor_current FROM machine WHERE machine = '{machine}'", db)
    return [r["time"] for r in rows]


async def test_outage_every_reading_exactly_once_and_fast_drain(
    plant: Plant, start_server: Any, tmp_path: Path
) -> None:
    outage_s = 60.0
    server: InfluxDB1 = start_server(InfluxDB1)
    server.create_database("outage")
    rec = Recorder()
    cfg = agent_config(tmp_path / "agent", plant.devices(4, 50), v1_sink(server, "outage"))
    agent, task = await run_agent(cfg, rec)
    try:
        await wait_for(lambda: sink_stats(agent)["written_points"] > 0, 15)
        n0, t0 = rec.count, time.monotonic()
        await asyncio.sleep(10)
        rate = (rec.count - n0) / (time.monotonic() - t0)

        await asyncio.to_thread(server.stop)
        n1, t1 = rec.count, time.monotonic()
        await asyncio.sleep(outage_s)
        backlog = sink_stats(agent)["spool_points"]
        outage_rate = (rec.count - n1) / (time.monotonic() - t1)
        restart = time.monotonic()
        await asyncio.to_thread(server.restart)
        # Drained: less than one batch left, i.e. only what a running agent always holds.
        await wait_for(lambda: sink_stats(agent)["spool_points"] < 5000, 40, 0.05)
        drain_s = time.monotonic() - restart  # from before the restart: influxd's start counts
        await asyncio.sleep(2)
    finally:
        await stop_agent(agent, task)
    st = sink_stats(agent)
    print(f"\nrate {rate:.0f}/s (during outage {outage_rate:.0f}/s), backlog {backlog} points, "
          f"drain {drain_s:.1f} s, readings {rec.count}, written {st['written_points']}, "
          f"polls {[c.health.polls for c in agent.connectors]}")  # fmt: skip
    assert st["spool_points"] == 0
    assert st["dropped_points"] == 0
    assert drain_s <= outage_s / 5, f"drain took {drain_s:.1f} s"

    # Exactly once: each series holds one point per poll, no more (a duplicate produced by the
    # agent would collapse onto its twin, so the agent's own record must be free of them too).
    for machine, times in rec.times.items():
        assert len(set(times)) == len(times), f"{machine}: the agent produced duplicate stamps"
    in_db = await asyncio.to_thread(counts_by_machine, server, "outage")
    expected = {m: len(t) for m, t in rec.times.items()}
    assert in_db == expected
    for machine in ("m000", "m051", "m102", "m199"):  # one per device: the stamps themselves
        assert await asyncio.to_thread(times_of, server, "outage", machine) == sorted(
            rec.times[machine]
        )


def spooled_lines(path: Path) -> list[bytes]:
    """Every line the spool file holds (table and columns of agent/spool.py; rows compressed)."""
    db = sqlite3.connect(path)
    try:
        rows = db.execute("SELECT payload, crc, text_bytes FROM batches ORDER BY id").fetchall()
    finally:
        db.close()
    texts = [inflate(Chunk(bytes(data), crc, size)) for data, crc, size in rows]
    return [line for text in texts for line in text.split(b"\n") if line]


def machine_key(line: bytes) -> tuple[str, int] | None:
    """(machine, timestamp) of a ``machine`` line; None for other measurements."""
    series = line.split(b" ", 1)[0].decode()
    measurement, *tags = series.split(",")
    if measurement != "machine":
        return None
    machine = dict(t.split("=", 1) for t in tags)["machine"]
    return machine, int(line.rsplit(b" ", 1)[1])


def machine_keys_in_db(server: InfluxDB1, db: str) -> set[tuple[str, int]]:
    rows = server.query("SELECT motor_current FROM machine GROUP BY machine", db)
    return {(r["machine"], r["time"]) for r in rows}


def write_config(path: Path, cfg: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(cfg))
    return path


def start_agent_process(config: Path) -> subprocess.Popen[bytes]:
    with config.with_suffix(".log").open("ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "agent.cli", "run", "-c", str(config)], cwd=ROOT,
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip


def metric(listen: str, name: str) -> float:
    """One value of the agent's ``/metrics`` (the first row of ``name``); 0 if not there."""
    try:
        with urllib.request.urlopen(f"http://{listen}/metrics", timeout=2) as resp:
            text = resp.read().decode()
    except OSError:
        return 0.0
    for line in text.splitlines():
        if line.startswith(f"factory_agent_{name}{{"):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def test_sigkill_loses_nothing_spooled(
    plant: Plant, start_server: Any, tmp_path: Path
) -> None:
    server: InfluxDB1 = start_server(InfluxDB1)
    server.create_database("crash")
    await asyncio.to_thread(server.stop)  # the sink is down from the start
    data = tmp_path / "agent"
    cfg = agent_config(data, plant.devices(1, 50), v1_sink(server, "crash"))
    config = write_config(tmp_path / "agent.yaml", cfg)
    spool = data / "spool" / "influx.db"
    proc = start_agent_process(config)
    try:
        listen = cfg["http"]["listen"]
        try:  # the spool is locked while the agent runs: ask the agent
            await wait_for(lambda: metric(listen, "points_spooled_total") > 0, 20, 0.2)
        except AssertionError:
            raise AssertionError(config.with_suffix(".log").read_text()[-3000:]) from None
        await asyncio.sleep(10)
        assert proc.poll() is None
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        lines = spooled_lines(spool)
        keys = {k for k in map(machine_key, lines) if k is not None}
        assert len(keys) >= 50 * 10 * 8, f"only {len(keys)} readings spooled in ~10 s"

        await asyncio.to_thread(server.restart)
        proc = start_agent_process(config)
        t0 = time.monotonic()

        def delivered() -> bool:
            return keys <= machine_keys_in_db(server, "crash")

        await asyncio.to_thread(lambda: asyncio.run(wait_for(delivered, 30, 0.5)))
        print(f"\ncrash: {len(lines)} lines spooled at SIGKILL ({len(keys)} readings), "
              f"delivered {time.monotonic() - t0:.1f} s after the restart")  # fmt: skip
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(15)


async def test_budget_drops_exactly_the_oldest_and_counts_them(
    plant: Plant, start_server: Any, tmp_path: Path
) -> None:
    server: InfluxDB1 = start_server(InfluxDB1)
    server.create_database("budget")
    await asyncio.to_thread(server.stop)
    rec = Recorder()
    cfg = agent_config(
        tmp_path / "agent", plant.devices(2, 50), v1_sink(server, "budget"),
        spool={"max_bytes": 1_000_000}, monitor={"interval_s": 3600},
    )  # fmt: skip
    agent, task = await run_agent(cfg, rec)
    try:
        spool = agent.spools["influx"]
        # ~1,000 readings/s of ~150 B: the 1 MB budget is reached in ~7 s, then overrun 3x
        await wait_for(lambda: spool.stats.appended_points * 150 > 4_000_000, 60, 0.2)
        assert sink_stats(agent)["dropped_points"] > 0
        await asyncio.to_thread(server.restart)
        await wait_for(lambda: sink_stats(agent)["spool_points"] < 5000, 30, 0.1)
    finally:
        await stop_agent(agent, task)
    st = sink_stats(agent)
    assert st["spool_points"] == 0
    assert st["rejected_points"] == 0
    in_db = await asyncio.to_thread(machine_keys_in_db, server, "budget")
    recorded = sorted((t, m) for m, times in rec.times.items() for t in times)
    assert len(recorded) == spool.stats.appended_points  # no agent_internal lines here
    assert st["dropped_points"] == spool.stats.appended_points - len(in_db)
    missing = [(t, m) for t, m in recorded if (m, t) not in in_db]
    assert len(missing) == st["dropped_points"]
    # The oldest went, except the batch the forwarder was retrying (its rows are never dropped:
    # they are being sent; each retry re-peeks up to batch_points of the oldest rows left, so
    # that batch may be islands between dropped rows). Newer than the last drop: all there.
    last_missing = missing[-1][0]
    kept_before = [t for t, m in recorded if (m, t) in in_db and t < last_missing]
    print(f"\nbudget: {spool.stats.appended_points} spooled, {st['dropped_points']} dropped, "
          f"{len(in_db)} in InfluxDB, {len(kept_before)} kept older than the last drop")  # fmt: skip
    assert len(kept_before) <= 5000  # batch_points: one batch
    assert len(in_db) - len(kept_before) > 0
