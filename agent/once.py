"""``run --once`` (like ``telegraf --test``) and ``check`` (Home Assistant's test before setup)."""

from __future__ import annotations

import asyncio
import contextlib
from statistics import median

from agent.config import AgentConfig
from agent.devices import build_connector
from agent.lineprotocol import Encoder
from agent.sinks.base import SinkError
from agent.sinks.influxdb import build_sink
from connectors.base import Connector, ConnectorError
from connectors.types import Reading


async def _first_cycle(conn: Connector, machines: set[str], timeout_s: float) -> list[Reading]:
    """Readings until every machine of the device has given one, or the timeout."""
    got: dict[str, Reading] = {}

    async def collect() -> None:
        await conn.connect()
        async for r in conn.readings():
            got.setdefault(r.machine, r)
            if machines <= set(got):
                return

    try:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(collect(), timeout_s)
    finally:
        await conn.close()
    return list(got.values())


async def read_once(cfg: AgentConfig, timeout_s: float = 10.0) -> tuple[list[str], list[str]]:
    """One cycle of every enabled device: (line protocol lines, problems)."""
    enc = Encoder(cfg.agent.measurement)
    devices = [d for d in cfg.devices if d.enabled]
    conns = [build_connector(d, cfg.agent.data_dir) for d in devices]
    results = await asyncio.gather(
        *(_first_cycle(c, {m.name for m in d.machines}, timeout_s)
          for c, d in zip(conns, devices, strict=True)),
        return_exceptions=True,
    )  # fmt: skip
    lines: list[str] = []
    problems: list[str] = []
    for d, res in zip(devices, results, strict=True):
        if isinstance(res, BaseException):
            problems.append(f"{d.name}: {res}")
            continue
        missing = {m.name for m in d.machines} - {r.machine for r in res}
        if missing:
            problems.append(f"{d.name}: no reading within {timeout_s:g} s from "
                            f"{', '.join(sorted(missing))}")  # fmt: skip
        for r in sorted(res, key=lambda r: r.machine):
            for k, v in cfg.agent.tags.items():
                r.tags.setdefault(k, v)
            line = enc.encode(r)
            if line is not None:
                lines.append(line.decode())
    return lines, problems


async def check(cfg: AgentConfig, timeout_s: float = 10.0) -> list[tuple[str, bool, str]]:
    """Connect once to every device and sink: (name, ok, what was found)."""

    async def device(d: object) -> tuple[str, bool, str]:
        conn = build_connector(d, cfg.agent.data_dir)  # type: ignore[arg-type]
        machines = {m.name for m in d.machines}  # type: ignore[attr-defined]
        name = f"device {d.name}"  # type: ignore[attr-defined]
        try:
            got = await _first_cycle(conn, machines, timeout_s)
        except ConnectorError as exc:
            return name, False, str(exc)
        if not got:
            return name, False, f"no reading within {timeout_s:g} s"
        values = sum(len(r.fields) for r in got)
        bad = sum(len(r.quality) for r in got)
        rtt = list(conn.health.rtt_s)
        rtt_txt = f", round trip {median(rtt) * 1000:.1f} ms" if rtt else ""
        text = f"{len(got)}/{len(machines)} machines, {values} values ({bad} not good){rtt_txt}"
        return name, len(got) == len(machines), text

    async def sink(s: object) -> tuple[str, bool, str]:
        name = f"sink {s.name}"  # type: ignore[attr-defined]
        try:
            snk = build_sink(s)  # type: ignore[arg-type]
        except SinkError as exc:  # a secret file that cannot be read
            return name, False, str(exc).removeprefix(f"{name}: ")
        try:
            text = await asyncio.wait_for(snk.check(), timeout_s)
            return name, True, str(text)
        except (SinkError, TimeoutError) as exc:
            return name, False, str(exc) or "timed out"
        finally:
            await snk.close()

    tasks = [device(d) for d in cfg.devices if d.enabled] + [sink(s) for s in cfg.sinks]
    return list(await asyncio.gather(*tasks))
