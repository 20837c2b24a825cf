"""``factory-agent bench``: how much one agent costs on this box, per reading, measured end to end.

For each plant size it starts, each in its own process:

1. a sink for the run (VictoriaMetrics or InfluxDB 1.x from their Debian binaries, on a free
   loopback port; :mod:`agent.benchservers`), or none (``--sink none``: a sink that accepts
   every batch at once, so only the HTTP write and the server are left out);
2. the simulator (:mod:`simulators.synthetic`): N machines × M signals at R Hz over Modbus (one
   unit id per machine) or OPC UA (one server); optionally behind the loopback fault proxy
   (``--latency MS --jitter MS``, each way, :mod:`simulators.faultproxy`);
3. the agent (:mod:`agent.benchagent`: ``Agent`` as ``factory-agent run`` runs it, default
   settings) reading every signal (Modbus: one connection per machine; OPC UA: one subscription)
   with detection on: its models were trained beforehand on the same synthetic plant, as after
   a restart, so the measured window is scored, not learnt (the output says which it was).

It waits until the first readings reached the sink, lets the agent settle for
:data:`SETTLE_S`, then measures a steady window of ``--duration`` seconds:

- offered/s: values the simulator published; received/s: values the agent's devices read;
  delivered/s: values in the sink whose acquisition time falls in the window (``--sink
  none``: values the null sink was given during the window);
- CPU µs per reading: user + system CPU of the agent process over the window, divided by the
  values it received (a reading is one value: a register value or a data change); CPU % is
  of one core; peak RSS is the agent process's high-water mark over the whole run;
- latency p50/p99: acquisition time (the Modbus poll time, the OPC UA source timestamp) to the
  sink's 2xx, sampled on every delivered batch;
- lost: values the agent received that are not in the sink after it stopped reading and
  delivered its spool (must be 0); spool: the most points waiting during the window;
- first delivery: seconds from starting the agent process to the first readings in the sink.

``--sweep`` runs the sizes of :data:`SWEEP_SIGNALS` (M signals per machine, N = total / M).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from connectors.cli import UsageError

SWEEP_SIGNALS = (100, 500, 1_000, 2_000, 5_000, 10_000)
#: a little over the targets (100,000 values/s, 15,000 changes/s): 105,000 and 16,000 offered
DEFAULT_MACHINES = {"modbus": 210, "opcua": 32}
DEFAULT_SIGNALS = 50
SETTLE_S = 3.0
START_TIMEOUT_S = 180.0
SNAP_TIMEOUT_S = 30.0
MEASUREMENT = "machine"
#: The keys every run's JSON object has (the issue's), besides the others.
KEYS = ("delivered_per_s", "cpu_us_per_reading", "rss_peak_mb", "latency_p50_s",
        "latency_p99_s", "lost")  # fmt: skip


class BenchError(RuntimeError):
    """A process of the bench failed; the message says which and shows its last log lines."""


@dataclass(frozen=True)
class Options:
    protocol: str = "modbus"
    machines: int = DEFAULT_MACHINES["modbus"]
    signals: int = DEFAULT_SIGNALS
    rate_hz: float = 10.0
    duration_s: float = 30.0
    sink: str = "victoriametrics"
    latency_ms: float = 0.0
    jitter_ms: float = 0.0
    sweep: bool = False

    def sizes(self) -> list[Options]:
        """One Options per plant size: itself, or the sweep's series."""
        if not self.sweep:
            return [self]
        machines = dict.fromkeys(max(1, total // self.signals) for total in SWEEP_SIGNALS)
        return [replace(self, machines=n) for n in machines]


# -- command line ------------------------------------------------------------------------------
def add_parser(sub: Any) -> None:
    """The ``bench`` sub-command (called by :func:`agent.cli.build_parser`)."""
    b = sub.add_parser(
        "bench", help="measure CPU per reading, memory and latency on this box",
        description="Starts a simulated plant, the agent (detection on) and a sink, each in its "
        "own process, and measures the agent over a steady window.",
    )  # fmt: skip
    b.add_argument("--protocol", choices=["modbus", "opcua"], default="modbus",
                   help="how the agent reads the plant (default modbus)")  # fmt: skip
    b.add_argument("--machines", type=int, metavar="N",
                   help="machines (default: modbus 210, opcua 32)")  # fmt: skip
    b.add_argument("--signals", type=int, default=DEFAULT_SIGNALS, metavar="M",
                   help=f"signals per machine (default {DEFAULT_SIGNALS})")  # fmt: skip
    b.add_argument("--rate", type=float, default=10.0, metavar="HZ",
                   help="updates (and polls) per second (default 10)")  # fmt: skip
    b.add_argument("--duration", type=float, default=30.0, metavar="S",
                   help="measured window per size (default 30)")  # fmt: skip
    b.add_argument("--sink", choices=["victoriametrics", "influxdb", "none"],
                   default="victoriametrics", help="server started for the run (default "
                   "victoriametrics; influxdb = InfluxDB 1.x)")  # fmt: skip
    sweep = f"sizes of {SWEEP_SIGNALS[0]:,} to {SWEEP_SIGNALS[-1]:,} signals"
    b.add_argument("--sweep", action="store_true", help=sweep)
    b.add_argument("--latency", type=float, default=0.0, metavar="MS",
                   help="delay added each way between agent and simulator")  # fmt: skip
    b.add_argument("--jitter", type=float, default=0.0, metavar="MS", help="± on --latency")
    b.add_argument("--json", type=Path, metavar="FILE", help="also write the figures here")
    b.set_defaults(func=cmd_bench)


def options(args: argparse.Namespace) -> Options:
    """Check the arguments (every problem at once, as a UsageError) and make Options."""
    from simulators.synthetic import check_size  # noqa: PLC0415 (numpy)

    if args.sweep and args.machines is not None:
        raise UsageError("--machines: --sweep sets the machines itself (total signals / "
                         "--signals); leave --machines out")  # fmt: skip
    machines = DEFAULT_MACHINES[args.protocol] if args.machines is None else args.machines
    opts = Options(args.protocol, machines, args.signals, args.rate, args.duration, args.sink,
                   args.latency, args.jitter, args.sweep)  # fmt: skip
    problems = []
    for size in opts.sizes():
        where = f"--sweep ({size.machines * size.signals:,} signals): " if opts.sweep else ""
        problems += [where + p for p in check_size(size.protocol, size.machines, size.signals,
                                                   size.rate_hz)]  # fmt: skip
    if args.duration <= 0:
        problems.append(f"--duration {args.duration:g}: must be positive")
    if args.latency < 0 or args.jitter < 0:
        problems.append(f"--latency {args.latency:g} --jitter {args.jitter:g}: must be >= 0")
    if problems:
        raise UsageError("; ".join(dict.fromkeys(problems)))
    return opts


def cmd_bench(args: argparse.Namespace, out: IO[str]) -> int:
    from agent.benchservers import BenchServerError  # noqa: PLC0415

    opts = options(args)
    command = "factory-agent " + " ".join(sys.argv[1:]) if sys.argv[1:2] == ["bench"] else ""
    try:
        doc = asyncio.run(bench(opts, command=command))
    except BenchServerError as exc:
        raise UsageError(str(exc)) from None
    except BenchError as exc:
        sys.stderr.write(f"factory-agent bench: {exc}\n")
        return 1
    out.write(render(doc) + "\n")
    if args.json is not None:
        try:
            args.json.write_text(json.dumps(doc, indent=2) + "\n")
        except OSError as exc:
            raise UsageError(f"--json {args.json}: cannot write: {exc.strerror}") from None
    return 0 if all("error" not in r for r in doc["runs"]) else 1


# -- one run -----------------------------------------------------------------------------------
class Child:
    """A child process speaking JSON lines on stdout, commands on stdin; stderr to a file."""

    def __init__(self, name: str, proc: asyncio.subprocess.Process, log: Path) -> None:
        self.name, self.proc, self.log = name, proc, log

    @classmethod
    async def start(cls, name: str, module: str, args: Sequence[str], workdir: Path) -> Child:
        log = workdir / f"{name}.log"
        with log.open("wb") as err:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", module, *args, cwd=workdir, limit=1 << 22,
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=err,
            )  # fmt: skip
        return cls(name, proc, log)

    def tail(self, lines: int = 8) -> str:
        try:
            text = self.log.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return "\n  ".join(text[-lines:])

    async def read(self, timeout_s: float = SNAP_TIMEOUT_S) -> dict[str, Any]:
        """The next JSON object on its stdout (anything else a library printed is skipped)."""
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                line = await asyncio.wait_for(
                    self.proc.stdout.readline(), max(0.0, deadline - time.monotonic())
                )
            except TimeoutError:
                raise BenchError(f"the {self.name} did not answer in {timeout_s:g} s; its log "
                                 f"({self.log}):\n  {self.tail()}") from None  # fmt: skip
            if not line:
                await self.proc.wait()
                raise BenchError(f"the {self.name} exited with {self.proc.returncode}; its log "
                                 f"({self.log}):\n  {self.tail()}")  # fmt: skip
            if line.startswith(b"{"):
                with contextlib.suppress(ValueError):
                    doc: dict[str, Any] = json.loads(line)
                    return doc

    async def ask(self, command: str, timeout_s: float = SNAP_TIMEOUT_S) -> dict[str, Any]:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(command.encode() + b"\n")
            await self.proc.stdin.drain()
        except (BrokenPipeError, ConnectionResetError):
            pass  # it has exited: read() says so with its log
        return await self.read(timeout_s)

    async def finish(self, timeout_s: float = 60.0) -> dict[str, Any]:
        """``stop``, its last JSON line, and its exit."""
        doc = await self.ask("stop", timeout_s)
        await asyncio.wait_for(self.proc.wait(), timeout_s)
        return doc

    async def kill(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()


def agent_config(
    opts: Options, data_dir: Path, port: int, sink: dict[str, Any] | None
) -> dict[str, Any]:
    """The agent's configuration: the defaults, the plant's devices, the sink, a free port."""
    from agent.benchservers import free_port  # noqa: PLC0415
    from simulators.synthetic import agent_devices  # noqa: PLC0415

    devices = agent_devices(
        opts.protocol, opts.machines, opts.signals, host="127.0.0.1", port=port,
        rate_hz=opts.rate_hz,
    )  # fmt: skip
    return {
        "agent": {"name": "bench-agent", "data_dir": str(data_dir), "measurement": MEASUREMENT},
        "devices": devices,
        "sinks": [sink] if sink else [],
        "http": {"listen": f"127.0.0.1:{free_port()}"},
    }


def pretrain(config_path: Path, opts: Options) -> str:
    """Models for every machine, trained on the synthetic plant as the warm-up would; the name
    of the detector. Saved where the agent looks for them at start."""
    from agent.analysis import analyzer_config  # noqa: PLC0415
    from agent.config import load_config  # noqa: PLC0415
    from analytics.machine import MachineAnalyzer, SignalMeta  # noqa: PLC0415
    from simulators.synthetic import machine_names, synthetic_model, training_rows  # noqa: PLC0415

    cfg = load_config(config_path)
    acfg = analyzer_config(cfg.analytics)
    if not cfg.analytics.enabled:
        return "off"
    metas = {
        s.name: SignalMeta(s.unit, s.low, s.high) for s in synthetic_model(opts.signals).signals
    }
    steps = max(cfg.analytics.warmup_rows, 2 * opts.signals + 60)
    rows = training_rows(opts.signals, rate_hz=opts.rate_hz, steps=steps, step_s=acfg.step_s)
    model = MachineAnalyzer("template", metas, acfg).fit(rows.tolist())
    models = cfg.data_path("models")
    for name in machine_names(opts.machines):
        replace(model, machine=name).save(models)
    return acfg.multivariate


def _percentile(hist: dict[int, float], q: float) -> float | None:
    from agent.benchagent import bucket_upper_s  # noqa: PLC0415

    total = sum(hist.values())
    if total <= 0:
        return None
    acc = 0.0
    for b in sorted(hist):
        acc += hist[b]
        if acc >= q * total:
            return round(bucket_upper_s(b), 4)
    return round(bucket_upper_s(max(hist)), 4)


def _hist_diff(a: dict[str, float], b: dict[str, float]) -> dict[int, float]:
    out = {int(k): v - a.get(k, 0.0) for k, v in b.items()}
    return {k: v for k, v in out.items() if v > 1e-9}


class Run:
    """One plant size: its processes, started in order, measured, and always stopped."""

    def __init__(self, opts: Options, workdir: Path, progress: Callable[[float, str], None]):
        self.opts, self.workdir, self.progress = opts, workdir, progress
        self.server: Any = None  # a BenchServer once started
        self.proxy: Any = None  # a FaultProxy with --latency/--jitter
        self.children: list[Child] = []
        self.detector = "off"
        self.started_ns = 0

    async def start(self) -> tuple[Child, Child]:
        """Sink, simulator (and proxy), models, agent; returns (simulator, agent)."""
        from agent.benchservers import SERVERS  # noqa: PLC0415
        from simulators.faultproxy import FaultProxy  # noqa: PLC0415

        opts = self.opts
        self.progress(0.0, "starting the sink")
        if opts.sink != "none":
            self.server = SERVERS[opts.sink](self.workdir / "sink")
            await asyncio.to_thread(self.server.start)
        self.progress(0.03, "starting the simulator")
        sim_args = ["--protocol", opts.protocol, "--machines", str(opts.machines),
                    "--signals", str(opts.signals), "--rate", str(opts.rate_hz)]  # fmt: skip
        sim = await self._child("simulator", "simulators.synthetic", sim_args)
        port = int((await sim.read(START_TIMEOUT_S))["port"])
        if opts.latency_ms or opts.jitter_ms:
            link = FaultProxy("127.0.0.1", port, latency_s=opts.latency_ms / 1000,
                              jitter_s=opts.jitter_ms / 1000, seed=1)  # fmt: skip
            self.proxy = await link.start()
            port = self.proxy.port
        self.progress(0.06, "training the models")
        config_path = await asyncio.to_thread(self._write_config, port)
        self.detector = await asyncio.to_thread(pretrain, config_path, opts)
        self.progress(0.08, "starting the agent")
        self.started_ns = time.time_ns()
        null = ["--null-sink"] if self.server is None else []
        agent = await self._child("agent", "agent.benchagent", [str(config_path), *null])
        return sim, agent

    def _write_config(self, port: int) -> Path:
        import yaml  # noqa: PLC0415

        from agent.config import load_config  # noqa: PLC0415

        sink = self.server.sink_config() if self.server is not None else None
        path = self.workdir / "agent.yaml"
        doc = agent_config(self.opts, self.workdir / "agent", port, sink)
        path.write_text(yaml.safe_dump(doc))
        load_config(path)  # a mistake of ours shows here, not in the child
        return path

    async def _child(self, name: str, module: str, args: list[str]) -> Child:
        child = await Child.start(name, module, args, self.workdir)
        self.children.append(child)
        return child

    async def finish(self, sim: Child, agent: Child) -> tuple[dict[str, Any], dict[str, Any]]:
        """Stop the simulator, then the agent once it took in and delivered everything;
        (quiesce snap, final snap)."""
        self.progress(0.92, "delivering the spool")
        await sim.finish()
        quiesced = await agent.ask("quiesce", 300.0)
        final = await agent.finish()
        self.children.clear()
        if self.proxy is not None:
            await self.proxy.stop()
            self.proxy = None
        return quiesced, final

    async def count(
        self, s0: dict[str, Any], s1: dict[str, Any], final: dict[str, Any]
    ) -> tuple[int, int]:
        """(values in the sink, values in the sink stamped inside the window)."""
        self.progress(0.96, "counting in the sink")
        if self.server is None:
            in_window = int(s1["values_delivered"]) - int(s0["values_delivered"])
            return int(final["values_delivered"]), in_window
        since, until = self.started_ns - 60 * 10**9, time.time_ns() + 60 * 10**9
        total = await asyncio.to_thread(self.server.count_values, MEASUREMENT, since, until)
        in_window = await asyncio.to_thread(
            self.server.count_values, MEASUREMENT, s0["time_ns"], s1["time_ns"]
        )
        return int(total), int(in_window)

    async def close(self) -> None:
        if self.proxy is not None:
            await self.proxy.stop()
        for child in self.children:
            await child.kill()
        if self.server is not None:
            await asyncio.to_thread(self.server.kill)


async def run_size(
    opts: Options, workdir: Path, progress: Callable[[float, str], None]
) -> dict[str, Any]:
    """Measure one plant size; the figures as one JSON-ready dict."""
    await asyncio.to_thread(workdir.mkdir, parents=True, exist_ok=True)
    run = Run(opts, workdir, progress)
    try:
        sim, agent = await run.start()
        first = await _until_delivering(agent, run.started_ns)
        progress(0.1, "settling")
        await asyncio.sleep(SETTLE_S)
        window = await _measure(agent, sim, opts, progress)
        quiesced, final = await run.finish(sim, agent)
        delivered, in_window = await run.count(window["s0"], window["s1"], final)
    finally:
        await run.close()
    received = final["data_changes"] if opts.protocol == "opcua" else final["values_in"]
    return _figures(
        opts, run, first, window, {**final, "drained": quiesced.get("drained")},
        counts=(int(received), delivered, in_window),
    )  # fmt: skip


async def _until_delivering(agent: Child, started_ns: int) -> dict[str, Any]:
    """Snaps until every device is connected and readings reached the sink."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        snap = await agent.ask("snap")
        if snap["first_delivery_ns"] and snap["devices"] and snap["connected"] == snap["devices"]:
            return snap
        if time.monotonic() > deadline:
            raise BenchError(
                f"nothing delivered {START_TIMEOUT_S:g} s after the agent started "
                f"({snap['connected']} of {snap['devices']} devices connected); its log "
                f"({agent.log}):\n  {agent.tail()}"
            )
        await asyncio.sleep(0.2)


async def _measure(
    agent: Child, sim: Child, opts: Options, progress: Callable[[float, str], None]
) -> dict[str, Any]:
    """The steady window: snaps of both at its ends, the spool watched in between."""
    load0 = os.getloadavg()[0]
    m0, s0 = await sim.ask("snap"), await agent.ask("snap")
    end = time.monotonic() + opts.duration_s
    spool_max = s0["spool_points"]
    learning = s0["learning"]
    while (left := end - time.monotonic()) > 0:
        await asyncio.sleep(min(1.0, left))
        snap = await agent.ask("snap")
        spool_max = max(spool_max, snap["spool_points"])
        learning = max(learning, snap["learning"])
        done = 1.0 - max(0.0, end - time.monotonic()) / opts.duration_s
        progress(0.1 + 0.8 * done, "measuring")
    s1, m1 = await agent.ask("snap"), await sim.ask("snap")
    spool_max = max(spool_max, s1["spool_points"])
    return {"s0": s0, "s1": s1, "m0": m0, "m1": m1, "spool_max": spool_max,
            "learning": max(learning, s1["learning"]),
            "load": (load0, os.getloadavg()[0])}  # fmt: skip


def _detection(detector: str, analyzers: int, learning: int) -> str:
    """Whether the window was scored, learnt, or both (some machines still learning).

    >>> _detection("pca-t2q", 10, 0), _detection("pca-t2q", 10, 3)
    ('scoring (pca-t2q)', 'mixed: 3 of 10 learning')
    """
    if detector == "off" or not analyzers:
        return "off"
    if learning == 0:
        return f"scoring ({detector})"
    if learning >= analyzers:
        return f"learning ({detector})"
    return f"mixed: {learning} of {analyzers} learning"


def _figures(
    opts: Options,
    run: Run,
    first: dict[str, Any],
    w: dict[str, Any],
    final: dict[str, Any],
    *,
    counts: tuple[int, int, int],
) -> dict[str, Any]:
    received, delivered, in_window = counts
    s0, s1, m0, m1 = w["s0"], w["s1"], w["m0"], w["m1"]
    window_s = (s1["time_ns"] - s0["time_ns"]) / 1e9
    sim_s = (m1["time_ns"] - m0["time_ns"]) / 1e9
    values = s1["values_in"] - s0["values_in"]
    cpu_s = s1["cpu_s"] - s0["cpu_s"]
    hist = _hist_diff(s0["latency_hist"], s1["latency_hist"])
    first_ns = first["first_delivery_ns"]
    return {
        "protocol": opts.protocol,
        "machines": opts.machines,
        "signals_per_machine": opts.signals,
        "signals": opts.machines * opts.signals,
        "rate_hz": opts.rate_hz,
        "sink": opts.sink,
        "latency_ms": opts.latency_ms,
        "jitter_ms": opts.jitter_ms,
        "window_s": round(window_s, 2),
        "offered_per_s": round((m1["values"] - m0["values"]) / sim_s, 1),
        "received_per_s": round(values / window_s, 1),
        "delivered_per_s": round(in_window / window_s, 1),
        "cpu_us_per_reading": round(cpu_s / values * 1e6, 2) if values else None,
        "cpu_pct": round(100 * cpu_s / window_s, 1),
        "rss_peak_mb": round(final["rss_peak_kb"] / 1024, 1),
        "latency_p50_s": _percentile(hist, 0.50),
        "latency_p99_s": _percentile(hist, 0.99),
        "lost": max(0, received - delivered),
        "received": received,
        "delivered": delivered,
        "spool_max_points": w["spool_max"],
        "first_delivery_s": round((first_ns - run.started_ns) / 1e9, 2) if first_ns else None,
        "detection": _detection(run.detector, s1["analyzers"], w["learning"]),
        "episodes": final["episodes"],
        "missed_polls": s1["missed_polls"] - s0["missed_polls"],
        "failed_polls": s1["failed_polls"] - s0["failed_polls"],
        "failed_writes": final["failed_writes"],
        "connector_dropped": final["connector_dropped"],
        "drained": bool(final["drained"]),
        "sim_ticks_per_s": round((m1["ticks"] - m0["ticks"]) / sim_s, 2),
        "sim_overruns": m1["overruns"] - m0["overruns"],
        "sim_cpu_pct": round(100 * (m1["cpu_s"] - m0["cpu_s"]) / sim_s, 1),
        "load_avg": [round(x, 2) for x in w["load"]],
    }


# -- the whole command -------------------------------------------------------------------------
def host_info() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gb = None
    try:
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem_gb = round(kb / 1024 / 1024, 1)
    except (OSError, ValueError, IndexError):
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gb": mem_gb,
            "python": platform.python_version(), "system": platform.platform()}  # fmt: skip


async def bench(opts: Options, *, command: str = "") -> dict[str, Any]:
    """Run every size; the JSON document (``runs``: one object per size).

    Each size works in its own directory under one temporary directory, removed at the end
    unless a size failed: then its logs and data are kept, and the message says where.
    """
    from agent.evaluate import Progress  # noqa: PLC0415

    started = datetime.now(UTC).isoformat(timespec="seconds")
    sizes = opts.sizes()
    bar = Progress(len(sizes), f"bench {opts.protocol}")
    runs: list[dict[str, Any]] = []
    tmp = await asyncio.to_thread(tempfile.mkdtemp, prefix="factory-agent-bench-")
    keep = False
    try:
        for i, size in enumerate(sizes):
            label = f"{size.machines}x{size.signals}"

            def progress(frac: float, note: str, i: int = i, label: str = label) -> None:
                bar.update(i + frac, f"{label}: {note}")

            try:
                runs.append(await run_size(size, Path(tmp) / f"run-{i}", progress))
            except BenchError as exc:
                keep = True
                bar.done()
                if not opts.sweep:
                    raise BenchError(f"{exc}\n(the run's files are kept in {tmp})") from None
                sys.stderr.write(f"factory-agent bench: {label}: {exc}\n"
                                 f"(the run's files are kept in {tmp})\n")  # fmt: skip
                runs.append({
                    "protocol": size.protocol, "machines": size.machines,
                    "signals_per_machine": size.signals, "signals": size.machines * size.signals,
                    "error": str(exc),
                })  # fmt: skip
        bar.update(len(sizes), "done")
        bar.done()
    finally:
        if not keep:
            await asyncio.to_thread(shutil.rmtree, tmp, ignore_errors=True)
    return {"command": command, "started": started, "host": host_info(), "runs": runs}


def _n(v: Any, digits: int = 0) -> str:
    if v is None:
        return "-"
    if isinstance(v, float) and digits:
        return f"{v:,.{digits}f}"
    return f"{round(v):,}"


def render(doc: dict[str, Any]) -> str:
    """The table: one row per size."""
    head = ("protocol", "machines x signals", "Hz", "offered/s", "delivered/s", "CPU µs/reading",
            "CPU %", "RSS MB", "latency p50 / p99 s", "lost", "spool max", "first s",
            "detection")  # fmt: skip
    rows: list[tuple[str, ...]] = [head]
    for r in doc["runs"]:
        size = f"{r['machines']} x {r['signals_per_machine']} = {r['signals']:,}"
        if "error" in r:
            rows.append((r["protocol"], size, "failed: " + r["error"].splitlines()[0]))
            continue
        lat = f"{_n(r['latency_p50_s'], 2)} / {_n(r['latency_p99_s'], 2)}"
        rows.append((r["protocol"], size, f"{r['rate_hz']:g}", _n(r["offered_per_s"]),
                     _n(r["delivered_per_s"]), _n(r["cpu_us_per_reading"], 2),
                     _n(r["cpu_pct"], 1), _n(r["rss_peak_mb"], 1), lat, _n(r["lost"]),
                     _n(r["spool_max_points"]), _n(r["first_delivery_s"], 1),
                     r["detection"]))  # fmt: skip
    widths = [max(len(row[i]) for row in rows if len(row) > i) for i in range(len(head))]
    lines = []
    for row in rows:
        cells = [c.rjust(widths[i]) if i and i not in (1, 12) and len(row) > 3 else
                 c.ljust(widths[i]) for i, c in enumerate(row)]  # fmt: skip
        lines.append("  ".join(cells).rstrip())
    h = doc["host"]
    first = next((r for r in doc["runs"] if "error" not in r), None)
    notes = [f"host: {h['cpu']}, {h['cores']} cores, {h['memory_gb']} GB, Python {h['python']}"]
    if first is not None:
        link = (f", link +{first['latency_ms']:g} ± {first['jitter_ms']:g} ms each way"
                if first["latency_ms"] or first["jitter_ms"] else "")  # fmt: skip
        notes.append(
            f"sink: {first['sink']}{link}; window {first['window_s']:g} s per size; "
            f"load average {first['load_avg'][0]:g} at the first window's start"
        )
    return "\n".join([*lines, "", *notes])
