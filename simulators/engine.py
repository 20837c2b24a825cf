"""The plant engine: steps every machine of a scenario on one clock and emits labels.

Values are a function of (scenario, seed, tick index) only. The engine can run unpaced
(:meth:`Plant.step` in a loop, for tests and evaluation at full speed) or paced to the wall clock
(:meth:`Plant.run`), where each tick advances ``speed / rate_hz`` machine seconds and then calls
the listeners (the OPC UA and Modbus servers) to publish the new values.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from simulators.models import MODELS, PHYSICAL_FAULTS, MachineModel, Signal
from simulators.scenario import (
    MACHINE_FAULTS,
    SENSOR_FAULTS,
    FaultSpec,
    MachineSpec,
    Scenario,
    affected_signals,
    label_end,
)
from simulators.sensors import BAD_NO_COMMUNICATION, Sensor, SensorFault

#: Longest model step in machine seconds; faster speeds take several sub-steps per tick.
MAX_SUBSTEP_S = 1.0

Listener = Callable[["Plant"], Awaitable[None]]


def stream(seed: int, *names: object) -> random.Random:
    """An independent, reproducible random stream for (seed, names)."""
    key = "/".join(str(n) for n in (seed, *names)).encode()
    return random.Random(int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "big"))


@dataclass
class Machine:
    """One simulated machine and the values it shows right now."""

    spec: MachineSpec
    unit_id: int
    model: MachineModel
    sensors: list[Sensor]
    noise: random.Random
    physical: list[FaultSpec] = field(default_factory=list)
    comm_loss: list[FaultSpec] = field(default_factory=list)
    values: list[float | None] = field(default_factory=list)
    status: list[int] = field(default_factory=list)
    true_values: list[float] = field(default_factory=list)
    online: bool = True

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def signals(self) -> tuple[Signal, ...]:
        return self.model.signals

    def intensities(self, t: float) -> dict[str, float]:
        out: dict[str, float] = {}
        for f in self.physical:
            if f.start <= t < f.end:
                level = f.severity * (
                    (t - f.start) / f.duration if f.type == "bearing_wear" else 1.0
                )
                out[f.type] = max(out.get(f.type, 0.0), level)
        return out


@dataclass
class Stats:
    ticks: int = 0
    overruns: int = 0
    step_cpu_s: float = 0.0
    publish_cpu_s: float = 0.0


class Plant:
    """All machines of a scenario on one clock."""

    def __init__(self, scenario: Scenario, start: datetime | None = None) -> None:
        self.scenario = scenario
        begin = start or scenario.start or datetime.now(UTC)
        if begin.tzinfo is None:
            begin = begin.replace(tzinfo=UTC)
        # Whole milliseconds: Modbus serves ms timestamps, and clients compare them with OPC UA's.
        self.start_ns = int(begin.timestamp()) * 1_000_000_000 + begin.microsecond // 1000 * 10**6
        self.dt = scenario.speed / scenario.rate_hz
        self.substeps = max(1, math.ceil(self.dt / MAX_SUBSTEP_S - 1e-9))
        self.tick = 0
        self.stats = Stats()
        self.on_label: Callable[[dict[str, Any]], None] | None = None
        self._pending_labels = sorted(
            enumerate(scenario.faults), key=lambda item: (item[1].start, item[0])
        )
        units = scenario.unit_ids()
        seed = scenario.seed
        self.machines: list[Machine] = []
        for spec in scenario.machines:
            model = MODELS[spec.kind](stream(seed, spec.name, "process"))
            sensors = [Sensor(sig) for sig in model.signals]
            m = Machine(spec, units[spec.name], model, sensors, stream(seed, spec.name, "noise"))
            self.machines.append(m)
        by_name = {m.name: m for m in self.machines}
        for i, f in enumerate(scenario.faults):
            m = by_name[f.machine]
            if f.type in PHYSICAL_FAULTS:
                m.physical.append(f)
            elif f.type in MACHINE_FAULTS:
                m.comm_loss.append(f)
            elif f.type in SENSOR_FAULTS:
                idx = m.model.signal_names().index(f.signal or "")
                m.sensors[idx].faults.append(
                    SensorFault(f.type, f.start, f.end, f.severity, stream(seed, "fault", i))
                )
        self.by_name = by_name
        self.by_unit = {m.unit_id: m for m in self.machines}
        self._measure(0.0)

    # -- clock ---------------------------------------------------------------------------------
    @property
    def elapsed_s(self) -> float:
        """Machine seconds since the scenario start."""
        return self.tick * self.dt

    @property
    def time_ns(self) -> int:
        """Timestamp of the current values (source timestamp), ns since the epoch."""
        return self.start_ns + round(self.tick * self.dt * 1e9)

    def step(self) -> None:
        """Advance one tick: ``speed / rate_hz`` machine seconds."""
        t0 = self.elapsed_s
        sub = self.dt / self.substeps
        for m in self.machines:
            for k in range(self.substeps):
                m.true_values = m.model.step(sub, m.intensities(t0 + k * sub))
        self.tick += 1
        self._measure(self.dt)
        self.stats.ticks += 1

    def _measure(self, dt: float) -> None:
        t = self.elapsed_s
        if self.tick == 0:
            for m in self.machines:
                m.true_values = m.model.step(0.0, {})
        for m in self.machines:
            values: list[float | None] = []
            status: list[int] = []
            gauss = m.noise.gauss
            for sensor, true in zip(m.sensors, m.true_values, strict=True):
                v, s = sensor.measure(true, gauss(0.0, 1.0), t, dt)
                values.append(v)
                status.append(s)
            m.online = not any(f.start <= t < f.end for f in m.comm_loss)
            if not m.online:
                status = [BAD_NO_COMMUNICATION] * len(status)
            m.values, m.status = values, status
        self._emit_labels(t)

    # -- ground truth --------------------------------------------------------------------------
    def _emit_labels(self, t: float) -> None:
        while self._pending_labels and self._pending_labels[0][1].start <= t:
            _, fault = self._pending_labels.pop(0)
            if self.on_label is not None:
                self.on_label(self.label(fault))

    def iso(self, seconds: float) -> str:
        ns = self.start_ns + round(seconds * 1e9)
        return datetime.fromtimestamp(ns / 1e9, UTC).isoformat(timespec="milliseconds")

    def label(self, fault: FaultSpec) -> dict[str, Any]:
        m = self.by_name[fault.machine]
        effects_until = label_end(self.scenario, fault)
        return {
            "scenario": self.scenario.name,
            "seed": self.scenario.seed,
            "site": self.scenario.site,
            "line": m.spec.line,
            "machine": m.name,
            "kind": m.spec.kind,
            "fault": fault.type,
            "severity": fault.severity,
            "start": self.iso(fault.start),
            "end": self.iso(fault.end),
            "effects_until": self.iso(effects_until),
            "start_s": fault.start,
            "end_s": fault.end,
            "effects_until_s": effects_until,
            "signals": list(affected_signals(self.scenario, fault)),
            "detectable": fault.detectable,
        }

    # -- paced run -----------------------------------------------------------------------------
    async def run(
        self,
        listeners: list[Listener],
        stop: asyncio.Event,
        wall_s: float | None = None,
    ) -> None:
        """Tick at ``rate_hz`` against the wall clock until ``stop`` or ``wall_s`` elapses.

        When a tick overruns, the next one starts at once; more than a second behind, the
        backlog is dropped (machine time slows down, values stay deterministic per tick).
        """
        loop = asyncio.get_running_loop()
        period = 1.0 / self.scenario.rate_hz
        began = loop.time()
        deadline = None if wall_s is None else began + wall_s
        next_at = began
        for listener in listeners:
            await listener(self)
        while not stop.is_set():
            now = loop.time()
            if deadline is not None and now >= deadline:
                break
            next_at += period
            delay = next_at - now
            if delay > 0:
                try:
                    await asyncio.wait_for(stop.wait(), delay)
                    break
                except TimeoutError:
                    pass
            else:
                self.stats.overruns += 1
                if delay < -1.0:
                    next_at = loop.time()
                await asyncio.sleep(0)
            c0 = time.process_time()
            self.step()
            c1 = time.process_time()
            for listener in listeners:
                await listener(self)
            self.stats.step_cpu_s += c1 - c0
            self.stats.publish_cpu_s += time.process_time() - c1
