"""Acknowledgements reach InfluxDB as annotations through the journal's outbox.

An ack is written only to the journal, by whoever gives it (the CLI in another process, the
review page); the running agent spools it as measurement ``anomaly_annotation``. An ack given
while the agent was stopped is delivered when it starts; without a sink it waits.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from agent.config import AgentConfig
from agent.journal import Journal
from agent.runtime import Agent
from analytics.types import Contribution, Episode
from tests.e2e.conftest import wait_for
from tests.servers import InfluxDB1

pytestmark = pytest.mark.e2e

T0 = 1_767_592_800 * 10**9


def config(data_dir: Path, sinks: list[dict[str, Any]]) -> AgentConfig:
    return AgentConfig.model_validate({
        "agent": {"name": "ack-agent", "data_dir": str(data_dir), "log_level": "WARNING"},
        "devices": [], "sinks": sinks, "history": {"enabled": False},
        "http": {"enabled": False}, "analytics": {"enabled": False},
    })  # fmt: skip


def annotations(influx: InfluxDB1) -> list[dict[str, Any]]:
    return influx.query(
        "SELECT who, verdict, note, text, episode_id, episode_end_ns, line, machine"
        " FROM anomaly_annotation", "factory",
    )  # fmt: skip


async def test_acks_from_another_process_become_annotations(
    start_server: Callable[..., Any], tmp_path: Path
) -> None:
    influx = start_server(InfluxDB1)
    influx.create_database("factory")
    ep = Episode("hoist-01", T0, "pca-t2q", "v7", 5.0, T0 + 10**9, end_ns=T0 + 90 * 10**9,
                 contributions=(Contribution("gearbox_vibration", 0.8, 9.1, 2.0, 0.3, "mm/s"),),
                 tags={"line": "crane-2", "site": "haiphong"})  # fmt: skip
    cli = Journal(tmp_path / "journal.db")  # the CLI's connection, as another process has it
    cli.record(ep)
    cli.acknowledge(ep.id, by="ana", verdict="confirmed", note="bearing replaced", now_ns=T0 + 5)

    sink = {"name": "influx1", "type": "influxdb_v1", "url": influx.url, "database": "factory"}
    agent = Agent(config(tmp_path, [sink]))
    task = asyncio.create_task(agent.run())
    try:  # given while the agent was stopped: delivered once it runs
        await wait_for(lambda: len(annotations(influx)) == 1, 20, 0.2)
        (row,) = annotations(influx)
        assert row["time"] == T0 + 5  # the acknowledgement time
        assert (row["machine"], row["line"], row["verdict"], row["who"]) == (
            "hoist-01", "crane-2", "confirmed", "ana",
        )  # fmt: skip
        assert row["text"] == "Confirmed fault (ana): bearing replaced"
        assert (row["episode_id"], row["episode_end_ns"]) == (ep.id, T0 + 90 * 10**9)
        # the episode's own point (its series, its start) now says acknowledged
        (point,) = influx.query("SELECT state, verdict, acked_by, machine, line FROM anomaly",
                                "factory")  # fmt: skip
        assert point["time"] == T0
        assert (point["state"], point["verdict"], point["acked_by"]) == (
            "acknowledged", "confirmed", "ana",
        )  # fmt: skip
        assert (point["machine"], point["line"]) == ("hoist-01", "crane-2")

        cli.acknowledge(ep.id, by="bo", verdict="false-alarm", note="test lift", now_ns=T0 + 6)
        await wait_for(lambda: len(annotations(influx)) == 2, 20, 0.2)
        assert [r["verdict"] for r in annotations(influx)] == ["confirmed", "false-alarm"]
        assert cli.pending_annotations() == []
    finally:
        agent.request_stop()
        await task
    cli.close()


async def test_without_a_sink_acks_wait_in_the_outbox(tmp_path: Path) -> None:
    with Journal(tmp_path / "journal.db") as cli:
        ep = Episode("cnc-01", T0, "limits", "v1", 2.0, T0)
        cli.record(ep)
        cli.acknowledge(ep.id, by="ana", verdict="false-alarm")
        agent = Agent(config(tmp_path, []))
        task = asyncio.create_task(agent.run())
        try:
            await asyncio.sleep(2.5)  # more than one outbox interval
        finally:
            agent.request_stop()
            await task
        assert [p.who for p in cli.pending_annotations()] == ["ana"]
