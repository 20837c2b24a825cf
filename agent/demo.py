"""``factory-agent demo``: the simulated plant and the agent in one process, with a live view.

The demo scenario (``configs/scenarios/demo.yaml``: five machines, a jam, a bearing wearing out,
a leak, a stuck sensor, a lost link) is served over OPC UA and Modbus on its documented ports,
and the agent reads it with ``configs/demo.yaml`` (or ``-c FILE``, e.g. to add an InfluxDB sink)
into the local history, in the default data directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import math
import sys
import time
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import IO

from agent.config import AgentConfig
from agent.runtime import Agent
from connectors.types import Reading
from simulators.engine import Plant
from simulators.modbus_server import ModbusSimServer
from simulators.opcua_server import OpcUaSimServer
from simulators.scenario import Scenario

ROOT = Path(__file__).resolve().parent.parent
DEMO_SCENARIO = ROOT / "configs" / "scenarios" / "demo.yaml"
DEMO_CONFIG = ROOT / "configs" / "demo.yaml"


class Counting:
    """The analytics hook slot, counting readings per machine for the live view."""

    def __init__(self) -> None:
        self.per_machine: Counter[str] = Counter()
        self.bad: Counter[str] = Counter()

    def __call__(self, reading: Reading) -> Iterable[Reading]:
        self.per_machine[reading.machine] += 1
        self.bad[reading.machine] += len(reading.quality)
        return (reading,)


def view(agent: Agent, plant: Plant, counts: Counting, rates: dict[str, float]) -> str:
    """The live table: machines, readings per second, not-good values, devices, spool."""
    snap = agent.snapshot()
    lines = [
        f"factory-agent demo: scenario {plant.scenario.name!r}, machine time "
        f"{plant.elapsed_s / 60:5.1f} min (x{plant.scenario.speed:g}), "
        f"uptime {snap.uptime_s:4.0f} s",
        "",
        f"  {'machine':<15}{'line':<11}{'kind':<20}{'readings/s':>11}{'not good':>10}",
    ]
    for m in plant.machines:
        lines.append(
            f"  {m.name:<15}{m.spec.line:<11}{m.spec.kind:<20}{rates.get(m.name, 0.0):>11.1f}"
            f"{counts.bad[m.name]:>10}"
        )
    lines.append("")
    for d in snap.devices:
        state = "up" if d["connected"] else "DOWN"
        rtt = d.get("rtt_median_s")
        rtt_txt = ""
        if isinstance(rtt, float) and math.isfinite(rtt):
            rtt_txt = f", round trip {rtt * 1000:.1f} ms"
        lines.append(f"  device {d['device']:<14} {state}{rtt_txt}, reconnects {d['reconnects']}")
    for s in snap.sinks:
        lines.append(f"  sink {s['sink']:<16} written {s['written_points']}, "
                     f"spooled {s['spool_points']}, dropped {s['dropped_points']}")  # fmt: skip
    if agent.history is not None:
        lines.append(f"  history          {agent.history.rows_added} readings in "
                     f"{agent.config.data_path('history.db')}")  # fmt: skip
    active = [f"{f.machine}: {f.type}" for f in plant.scenario.faults
              if f.start <= plant.elapsed_s < f.end]  # fmt: skip
    lines.append(f"  faults now       {', '.join(active) or 'none'}")
    lines.extend(anomaly_lines(agent, plant))
    return "\n".join(lines)


def anomaly_lines(agent: Agent, plant: Plant) -> list[str]:
    """Per machine: learning or watching; then the latest episodes as they open and close."""
    an = agent.analytics
    if an is None:
        return ["  anomalies        analytics disabled (analytics.enabled: false)"]
    out = [""]
    status = {s["machine"]: s for s in an.status()}
    for m in plant.machines:
        st = status.get(m.name)
        if st is None:
            text = "no data yet"
        elif st["state"] == "warm-up":
            text = f"learning normal running {st['warmup'] * 100:3.0f} %"
        elif st["open_episode"]:
            text = f"ANOMALY severity {st['severity']}: {st['why']}"
        else:
            text = f"watching (model {st['model_version']})"
        out.append(f"  {m.name:<15}{text}"[:160])
    events = [e for e in an.events if e.kind in ("opened", "reopened", "closed")][-6:]
    if events:
        out.append("")
        out.append("  recent anomaly events (machine time):")
    for e in events:
        ep = e.episode
        when = (e.time_ns - plant.start_ns) / 60e9
        out.append(f"    {when:6.1f} min  {e.kind:<8} {ep.machine:<14} severity {ep.severity:<4} "
                   f"{ep.explanation().sentence(1)}"[:160])  # fmt: skip
    return out


async def run_demo(
    scenario: Scenario, config: AgentConfig, duration_s: float | None, out: IO[str]
) -> int:
    plant = Plant(scenario)
    servers: list[ModbusSimServer | OpcUaSimServer] = [
        ModbusSimServer(plant, scenario.modbus),
        OpcUaSimServer(plant, scenario.opcua),
    ]
    for server in servers:
        await server.start()
    gc.freeze()
    counts = Counting()
    agent = Agent(config, hook=counts)
    stop = asyncio.Event()
    ticking = asyncio.create_task(plant.run([s.publish for s in servers], stop))
    running = asyncio.create_task(agent.run())
    agent.install_signals()
    tty = out.isatty()
    began = time.monotonic()
    last: Counter[str] = Counter()
    try:
        while not running.done():
            await asyncio.sleep(1.0 if tty else 5.0)
            now_counts = Counter(counts.per_machine)
            period = 1.0 if tty else 5.0
            rates = {k: (now_counts[k] - last[k]) / period for k in now_counts}
            last = now_counts
            text = view(agent, plant, counts, rates)
            out.write(("\x1b[H\x1b[2J" if tty else "\n") + text + "\n")
            out.flush()
            if duration_s is not None and time.monotonic() - began >= duration_s:
                break  # the last frame shown is a live one, not one of the agent stopping
    finally:
        agent.request_stop()
        with contextlib.suppress(Exception):
            await running
        stop.set()
        await ticking
        for server in servers:
            await server.stop()
    out.write(f"\ndemo stopped: {sum(counts.per_machine.values())} readings collected; "
              f"data in {config.agent.data_dir}\n")  # fmt: skip
    if agent.analytics is not None:
        opened = sum(s["opened"] for s in agent.analytics.status())
        out.write(f"{opened} anomaly episodes, in the journal {config.data_path('journal.db')}\n")
    return 0


def main_demo(scenario: Scenario, config: AgentConfig, duration_s: float | None) -> int:
    return asyncio.run(run_demo(scenario, config, duration_s, sys.stdout))
