"""A synthetic plant of any size, for sizing: N machines × M signals at R Hz.

The scenario machine kinds have 6-9 signals each and physics that costs several µs per signal
and tick; a sizing run needs any N × M (10,000 signals at 10 Hz) with the simulator's own cost
kept small. So here every machine has ``M`` signals (``s00``, ``s01``, ..., unit %, range
0..100) driven by three shared hidden processes (load, speed, temperature-like AR(1) series
with a 20 s time constant) plus sensor noise, computed for the whole plant in one numpy
expression per tick. The signals are correlated the way a machine's are (what the agent's PCA
model learns), stay inside their range, and never flatline.

:class:`SyntheticPlant` is a :class:`~simulators.engine.Plant`: the same OPC UA and Modbus
servers serve it, with the same register map and address space as a scenario machine
(``Objects/bench/line-1/<machine>/<signal>``; holding registers ``100 + 2i`` as float32).
Timestamps are the wall clock at each tick (whole ms), so a reading's age is its true age.

As a process (what ``factory-agent bench`` starts)::

    python -m simulators.synthetic --protocol modbus --machines 200 --signals 50 --rate 10

prints one JSON line when it serves (``{"port": ..., "endpoint": ...}``), answers ``snap``
on stdin with ``{"ticks", "overruns", "values", "time_ns", "cpu_s"}`` and stops on ``stop``,
end of input or SIGTERM (printing a last snap).

>>> plant = SyntheticPlant(3, 4, rate_hz=10)
>>> [m.name for m in plant.machines], plant.machines[0].model.signal_names()
(['m0', 'm1', 'm2'], ('s0', 's1', 's2', 's3'))
>>> plant.step(); all(0 < v < 100 for m in plant.machines for v in m.values)
True
>>> rows = training_rows(4, rate_hz=10, steps=50)
>>> rows.shape
(50, 4)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import math
import os
import random
import signal
import sys
import time
from collections.abc import Mapping, Sequence
from functools import cache
from typing import IO, Any, ClassVar

import numpy as np
from numpy.typing import NDArray

from connectors import logs
from simulators.engine import Machine, Plant, Stats
from simulators.models.base import MachineModel, Signal
from simulators.registermap import FLOAT_BASE
from simulators.scenario import ModbusSpec, OpcUaSpec, Scenario

SITE = "bench"
LINE = "line-1"
NAMESPACE = "urn:factory-agent:simulator"
#: Hidden processes per machine, their time constant, and how the signals sit on them.
LATENT = 3
TAU_S = 20.0
MID, SPREAD, NOISE = 50.0, 8.0, 2.0
#: The loadings (which signal follows which hidden process) are the same for every machine and
#: every seed, so one model fits every machine of a plant.
STRUCTURE_SEED = 20_260_105
MODBUS_MAX_UNITS = 247


class SyntheticModel(MachineModel):
    """Base of the per-size model classes: ``signals`` is set by :func:`synthetic_model`.

    The plant computes the values itself (vectorised); ``step`` exists for the contract only.
    """

    kind = "synthetic"
    title = "Synthetic machine"
    signals: ClassVar[tuple[Signal, ...]] = ()
    fault_effects: ClassVar[Mapping[str, tuple[str, ...]]] = {}
    settle_s = 0.0

    def step(self, dt: float, faults: Mapping[str, float]) -> list[float]:
        return [MID] * len(self.signals)


@cache
def synthetic_model(signals: int) -> type[SyntheticModel]:
    """The model class of a machine with ``signals`` signals (one class per size, cached).

    >>> synthetic_model(12).signal_names()[:3], synthetic_model(12) is synthetic_model(12)
    (('s00', 's01', 's02'), True)
    """
    if signals < 1:
        raise ValueError(f"a machine needs at least one signal, not {signals}")
    width = len(str(signals - 1))
    sigs = tuple(
        Signal(f"s{i:0{width}d}", "%", 0.0, 100.0, NOISE, 0.01, f"synthetic signal {i}")
        for i in range(signals)
    )
    return type(f"SyntheticModel{signals}", (SyntheticModel,), {"signals": sigs})


class SignalSource:
    """Values of ``machines`` × ``signals``: hidden AR(1) processes plus noise, one tick a call."""

    def __init__(self, machines: int, signals: int, rate_hz: float, seed: int = 1) -> None:
        structure = np.random.default_rng(STRUCTURE_SEED)
        self.loadings = structure.normal(0.0, 1.0 / math.sqrt(LATENT), (LATENT, signals))
        self.rng = np.random.default_rng(seed)
        self.a = math.exp(-1.0 / (rate_hz * TAU_S))
        self.b = math.sqrt(1.0 - self.a * self.a)
        self.shape = (machines, signals)
        self.z = self.rng.normal(size=(machines, LATENT))

    def next(self) -> NDArray[np.float64]:
        """The next tick's values, shape (machines, signals)."""
        rng = self.rng
        self.z = self.a * self.z + self.b * rng.normal(size=self.z.shape)
        noise = rng.normal(0.0, NOISE, size=self.shape)
        return np.asarray(MID + SPREAD * (self.z @ self.loadings) + noise, dtype=np.float64)


def training_rows(
    signals: int, *, rate_hz: float, steps: int, step_s: float = 1.0, seed: int = 7
) -> NDArray[np.float64]:
    """``steps`` rows of one machine's step means (what the agent's analytics fold), for a model
    trained before a sizing run; from another seed than the served plant."""
    src = SignalSource(1, signals, rate_hz, seed)
    per_step = max(1, round(rate_hz * step_s))
    ticks = np.stack([src.next()[0] for _ in range(steps * per_step)])
    return np.asarray(ticks.reshape(steps, per_step, signals).mean(axis=1), dtype=np.float64)


def machine_names(machines: int) -> list[str]:
    width = len(str(machines - 1))
    return [f"m{i:0{width}d}" for i in range(machines)]


class SyntheticPlant(Plant):
    """``machines`` × ``signals`` at ``rate_hz``, served by the scenario servers unchanged."""

    def __init__(
        self,
        machines: int,
        signals: int,
        *,
        rate_hz: float,
        seed: int = 1,
        opcua: OpcUaSpec | None = None,
        modbus: ModbusSpec | None = None,
    ) -> None:
        # Plant.__init__ builds scenario machine kinds; this plant builds its own machines.
        names = machine_names(machines)
        self.scenario = Scenario.model_validate({
            "name": "synthetic", "site": SITE, "seed": seed, "speed": 1.0, "rate_hz": rate_hz,
            "duration": 10 * 365 * 86400.0,
            "opcua": opcua or {"enabled": False}, "modbus": modbus or {"enabled": False},
            "machines": [{"name": n, "kind": SyntheticModel.kind, "line": LINE} for n in names],
        })  # fmt: skip
        self.source = SignalSource(machines, signals, rate_hz, seed)
        model_cls = synthetic_model(signals)
        self.dt = 1.0 / rate_hz
        self.substeps = 1
        self.tick = 0
        self.stats = Stats()
        self.on_label = None
        self._pending_labels = []
        units = self.scenario.unit_ids()
        self.machines = []
        for spec in self.scenario.machines:
            m = Machine(spec, units[spec.name], model_cls(random.Random(0)), [], random.Random(0))
            m.status = [0] * signals
            self.machines.append(m)
        self.by_name = {m.name: m for m in self.machines}
        self.by_unit = {m.unit_id: m for m in self.machines}
        self.start_ns = self._now_ns = _ms(time.time_ns())
        self._fill()

    @property
    def time_ns(self) -> int:
        """The wall-clock time of the current values (whole milliseconds)."""
        return self._now_ns

    def step(self) -> None:
        """Advance one tick: new values for every signal, stamped with the wall clock."""
        self.tick += 1
        self._now_ns = _ms(time.time_ns())
        self._fill()
        self.stats.ticks += 1

    def _fill(self) -> None:
        for m, row in zip(self.machines, self.source.next().tolist(), strict=True):
            m.values = row


def _ms(ns: int) -> int:
    return ns // 1_000_000 * 1_000_000


# -- the agent's devices for a synthetic plant ---------------------------------------------------
def agent_devices(
    protocol: str, machines: int, signals: int, *, host: str, port: int, rate_hz: float
) -> list[dict[str, Any]]:
    """The agent's ``devices:`` entries reading every signal (plain data, for YAML or JSON).

    Modbus: one device (connection) per machine, as on a plant where each machine has its own
    PLC. OPC UA: one device (session, subscription) for the whole plant, as behind one server,
    publishing every ``1 / rate_hz`` with a queue of 5 per item: with the simulator ticking at
    the same rate, two or more ticks fall between two publishes whenever the server is late,
    and a queue of 1 would keep only the newest.
    """
    sigs = synthetic_model(signals).signals
    names = machine_names(machines)
    tags = {"site": SITE, "line": LINE}
    interval = 1.0 / rate_hz
    if protocol == "modbus":
        registers = [
            {"field": s.name, "table": "holding", "address": FLOAT_BASE + 2 * i,
             "type": "float32", "unit": s.unit, "low": s.low, "high": s.high}
            for i, s in enumerate(sigs)
        ]  # fmt: skip
        return [
            {"name": f"plc-{name}", "type": "modbus", "host": host, "port": port,
             "interval_s": interval, "timeout_s": 2.0,
             "machines": [{"name": name, "unit_id": i + 1, "tags": tags,
                           "registers": registers}]}
            for i, name in enumerate(names)
        ]  # fmt: skip
    from simulators.opcua_server import node_id  # noqa: PLC0415 (asyncua is slow to import)

    return [{
        "name": "bench-opcua", "type": "opcua", "endpoint": f"opc.tcp://{host}:{port}",
        "security_policy": "None", "allow_insecure": True, "interval_s": interval,
        "timeout_s": 10.0, "queue_size": 5,  # a late publish still carries every tick
        "machines": [
            {"name": name, "tags": tags,
             "nodes": [{"field": s.name, "node_id": node_id(NAMESPACE, SITE, LINE, name, s.name),
                        "unit": s.unit, "low": s.low, "high": s.high} for s in sigs]}
            for name in names
        ],
    }]  # fmt: skip


# -- the simulator process -------------------------------------------------------------------------
def _snap(plant: SyntheticPlant, final: bool = False) -> str:
    n_values = sum(len(m.values) for m in plant.machines)
    t = os.times()
    return json.dumps({
        "ticks": plant.stats.ticks, "overruns": plant.stats.overruns,
        "values": plant.stats.ticks * n_values, "time_ns": time.time_ns(),
        "cpu_s": t.user + t.system, "final": final,
    })  # fmt: skip


async def serve(args: argparse.Namespace, out: IO[str]) -> int:
    """Serve the plant until ``stop``, end of input or SIGTERM; answer ``snap`` on stdin."""
    from simulators.modbus_server import ModbusSimServer  # noqa: PLC0415 (heavy imports)
    from simulators.opcua_server import OpcUaSimServer  # noqa: PLC0415

    server: Any
    if args.protocol == "modbus":
        spec = ModbusSpec.model_validate({"host": args.host, "port": args.port})
        plant = SyntheticPlant(args.machines, args.signals, rate_hz=args.rate, modbus=spec)
        server = ModbusSimServer(plant, spec)
    else:
        ospec = OpcUaSpec.model_validate(
            {"host": args.host, "port": args.port, "security": ["None"]}
        )
        plant = SyntheticPlant(args.machines, args.signals, rate_hz=args.rate, opcua=ospec)
        server = OpcUaSimServer(plant, ospec)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)

    async def commands() -> None:
        while line := await reader.readline():
            if line.strip() == b"snap":
                out.write(_snap(plant) + "\n")
                out.flush()
            elif line.strip() == b"stop":
                break
        stop.set()

    await server.start()
    try:
        gc.freeze()  # the address space and register maps live for the whole run
        endpoint = getattr(server, "endpoint", "") or f"tcp://{args.host}:{server.port}"
        port = int(endpoint.rstrip("/").rsplit(":", 1)[1])
        out.write(json.dumps({"ready": True, "protocol": args.protocol, "port": int(port),
                              "endpoint": endpoint, "machines": args.machines,
                              "signals": args.signals}) + "\n")  # fmt: skip
        out.flush()
        listener = asyncio.create_task(commands())
        await plant.run([server.publish], stop)
        listener.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await listener
    finally:
        await server.stop()
    out.write(_snap(plant, final=True) + "\n")
    out.flush()
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m simulators.synthetic", description=__doc__)
    p.add_argument("--protocol", choices=["modbus", "opcua"], default="modbus")
    p.add_argument("--machines", type=int, default=10)
    p.add_argument("--signals", type=int, default=50, help="signals per machine")
    p.add_argument("--rate", type=float, default=10.0, help="ticks per second")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="0 picks a free port")
    return p


def check_size(protocol: str, machines: int, signals: int, rate_hz: float) -> list[str]:
    """What is wrong with a plant size, as ``--option value: reason`` messages.

    >>> check_size("modbus", 300, 50, 10)
    ['--machines 300: Modbus has 247 unit ids per server; give each machine more --signals']
    """
    problems = []
    if machines < 1:
        problems.append(f"--machines {machines}: must be at least 1")
    if protocol == "modbus" and machines > MODBUS_MAX_UNITS:
        problems.append(f"--machines {machines}: Modbus has {MODBUS_MAX_UNITS} unit ids per "
                        "server; give each machine more --signals")  # fmt: skip
    if signals < 1:
        problems.append(f"--signals {signals}: must be at least 1")
    if protocol == "modbus" and FLOAT_BASE + 2 * signals > 65536:
        problems.append(f"--signals {signals}: does not fit in 16-bit register addresses")
    if not 0 < rate_hz <= 50:
        problems.append(f"--rate {rate_hz:g}: must be in (0, 50] Hz")
    return problems


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    problems = check_size(args.protocol, args.machines, args.signals, args.rate)
    if problems:
        sys.stderr.write("".join(f"simulators.synthetic: {p}\n" for p in problems))
        return 2
    logs.configure(level="WARNING")  # stdout carries the JSON lines; logs go to stderr
    return asyncio.run(serve(args, sys.stdout))


if __name__ == "__main__":
    sys.exit(main())
