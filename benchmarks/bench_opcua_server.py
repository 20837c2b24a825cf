"""Benchmark the OPC UA simulator: many machines at 10 Hz with one client subscribed to everything.

Run: ``.venv/bin/python benchmarks/bench_opcua_server.py [--signals 500] [--seconds 20]``.

The server runs in this process, paced by ``Plant.run`` exactly as ``factory-sim run`` does; the
client runs in a child process (so this process's CPU is the server's alone) and subscribes to
every signal with a 100 ms publishing interval. Prints signals, achieved tick rate, overruns,
process CPU, median/p99 publish time per tick and data changes the client received per second.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from asyncua import Client, Node, ua
from asyncua.crypto import security_policies as sp

from simulators.engine import Listener, Plant
from simulators.models import MODELS
from simulators.opcua_security import generate_certificate
from simulators.opcua_server import OpcUaSimServer
from simulators.scenario import Scenario

SITE = "bench"
NAMESPACE = "urn:factory-agent:simulator"
POLICY_CLASSES: dict[str, type[Any]] = {
    "Basic256Sha256": sp.SecurityPolicyBasic256Sha256,
    "Aes256_Sha256_RsaPss": sp.SecurityPolicyAes256Sha256RsaPss,
    "Aes128_Sha256_RsaOaep": sp.SecurityPolicyAes128Sha256RsaOaep,
}


def build_scenario(min_machines: int, min_signals: int, rate_hz: float, security: str) -> Scenario:
    """Machines of every kind in turn, over four lines, until both minimums are met."""
    kinds = sorted(MODELS)
    machines: list[dict[str, Any]] = []
    signals = 0
    while len(machines) < min_machines or signals < min_signals:
        kind = kinds[len(machines) % len(kinds)]
        machines.append(
            {"name": f"{kind}-{len(machines) + 1:03d}", "kind": kind,
             "line": f"line-{len(machines) % 4 + 1}"}
        )  # fmt: skip
        signals += len(MODELS[kind].signals)
    return Scenario.model_validate(
        {
            "name": "bench",
            "site": SITE,
            "rate_hz": rate_hz,
            "duration": "24h",
            "machines": machines,
            "opcua": {"security": [security]},
            "modbus": {"enabled": False},
        }
    )


# -- client (child process) ----------------------------------------------------------------------


class _Counter:
    def __init__(self) -> None:
        self.count = 0

    def datachange_notification(self, node: Node, val: object, data: object) -> None:
        self.count += 1


async def _variables(client: Client) -> list[Node]:
    idx = await client.get_namespace_index(NAMESPACE)
    site = await client.nodes.objects.get_child(f"{idx}:{SITE}")
    out: list[Node] = []
    for line in await site.get_children():
        for machine in await line.get_children():
            out.extend(await machine.get_children(nodeclassmask=ua.NodeClass.Variable))
    return out


async def run_client(endpoint: str, interval_ms: float, security: str) -> None:
    """Subscribe to all signals; on stdin 'start'/'stop' report notifications and CPU."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    client = Client(endpoint, timeout=10)
    tmp = tempfile.TemporaryDirectory()
    if security != "None":
        policy, mode = security.rsplit("_", 1)
        cert, key = Path(tmp.name) / "c.der", Path(tmp.name) / "k.pem"
        generate_certificate(cert, key, "urn:factory-agent:bench-client", client=True)
        client.application_uri = "urn:factory-agent:bench-client"
        await client.set_security(
            POLICY_CLASSES[policy], str(cert), str(key), mode=getattr(ua.MessageSecurityMode, mode)
        )
    async with client:
        nodes = await _variables(client)
        counter = _Counter()
        sub = await client.create_subscription(interval_ms, counter)
        await sub.subscribe_data_change(nodes, queuesize=1)
        print(json.dumps({"ready": len(nodes)}), flush=True)
        assert (await reader.readline()).strip() == b"start"
        c0, t0, n0 = time.process_time(), time.perf_counter(), counter.count
        assert (await reader.readline()).strip() == b"stop"
        wall = time.perf_counter() - t0
        print(json.dumps({
            "changes": counter.count - n0, "wall_s": wall,
            "cpu_pct": 100 * (time.process_time() - c0) / wall,
        }), flush=True)  # fmt: skip
        await sub.delete()
    tmp.cleanup()


# -- server (this process) -----------------------------------------------------------------------


async def run_bench(args: argparse.Namespace) -> None:
    """Serve, start the client, measure for ``args.seconds`` and print the figures."""
    plant = Plant(build_scenario(args.machines, args.signals, args.rate, args.security))
    server = OpcUaSimServer(plant, port=0)
    await server.start()
    extra: list[Listener] = []
    modbus = None
    if args.with_modbus:  # the production set-up: both servers in one process
        from simulators.modbus_server import ModbusSimServer  # noqa: PLC0415 (optional)

        spec = plant.scenario.modbus.model_copy(update={"enabled": True, "port": 0})
        modbus = ModbusSimServer(plant, spec)
        await modbus.start()
        extra.append(modbus.publish)
    if args.gc_freeze:  # keep the static address space out of every full GC pass
        gc.freeze()
    cmd = [__file__, "--client", server.endpoint, "--interval-ms", str(args.interval_ms),
           "--security", args.security]  # fmt: skip
    pipe = asyncio.subprocess.PIPE
    child = await asyncio.create_subprocess_exec(sys.executable, *cmd, stdin=pipe, stdout=pipe)
    try:
        figures = await _measure(plant, server, child, args.seconds, extra)
        await asyncio.wait_for(child.wait(), 30)
    finally:
        if child.returncode is None:
            child.kill()
            await child.wait()
        await server.stop()
        if modbus is not None:
            await modbus.stop()
    _print(args, plant, server, figures)


async def _measure(
    plant: Plant,
    server: OpcUaSimServer,
    child: asyncio.subprocess.Process,
    seconds: float,
    extra: list[Listener],
) -> dict[str, Any]:
    assert child.stdin is not None
    assert child.stdout is not None
    times: list[float] = []

    async def timed_publish(p: Plant) -> None:
        t = time.perf_counter()
        await server.publish(p)
        times.append(time.perf_counter() - t)

    # readiness: wait until the client has browsed and subscribed, publishing meanwhile
    ready_line = asyncio.ensure_future(child.stdout.readline())
    warm = asyncio.Event()
    warmup = asyncio.ensure_future(plant.run([server.publish, *extra], warm))
    ready = json.loads(await asyncio.wait_for(ready_line, 60))
    warm.set()
    await warmup
    ticks0, overruns0, written0 = plant.stats.ticks, plant.stats.overruns, server.stats.written
    child.stdin.write(b"start\n")
    await child.stdin.drain()
    c0, t0 = time.process_time(), time.perf_counter()
    await plant.run([timed_publish, *extra], asyncio.Event(), wall_s=seconds)
    wall = time.perf_counter() - t0
    cpu = time.process_time() - c0
    child.stdin.write(b"stop\n")
    await child.stdin.drain()
    report = json.loads(await asyncio.wait_for(child.stdout.readline(), 30))
    return {
        "subscribed": ready["ready"], "ticks": plant.stats.ticks - ticks0, "wall": wall,
        "cpu": cpu, "overruns": plant.stats.overruns - overruns0, "times": times,
        "client": report, "written": server.stats.written - written0,
    }  # fmt: skip


def _print(
    args: argparse.Namespace, plant: Plant, server: OpcUaSimServer, f: dict[str, Any]
) -> None:
    n_signals = sum(len(m.signals) for m in plant.machines)
    ms = sorted(t * 1000 for t in f["times"])
    p99 = ms[min(len(ms) - 1, round(0.99 * (len(ms) - 1)))]
    kinds = ", ".join(sorted({m.spec.kind for m in plant.machines}))
    client = f["client"]
    wall = f["wall"]
    rows = [
        ("machines", f"{len(plant.machines)} ({kinds})"),
        ("signals", f"{n_signals} (client subscribed to {f['subscribed']})"),
        ("target tick rate", f"{args.rate:g} Hz"),
        ("achieved tick rate", f"{f['ticks'] / wall:.2f} Hz ({f['ticks']} ticks in {wall:.1f} s)"),
        ("overruns", str(f["overruns"])),
        ("server process CPU", f"{100 * f['cpu'] / wall:.1f} %"),
        ("publish per tick", f"median {statistics.median(ms):.2f} ms, p99 {p99:.2f} ms, "
                             f"max {ms[-1]:.2f} ms"),
        ("values written", f"{f['written'] / wall:.0f} /s ({f['written'] / f['ticks']:.1f} per "
                           "tick; unchanged values are skipped)"),
        ("client data changes", f"{client['changes'] / client['wall_s']:.0f} /s, client CPU "
                                f"{client['cpu_pct']:.1f} %"),
    ]  # fmt: skip
    also = " + Modbus server in-process" if args.with_modbus else ""
    also += ", gc.freeze()" if args.gc_freeze else ""
    print(f"OPC UA simulator benchmark{also}: security {args.security}, {args.seconds:g} s")
    for name, value in rows:
        print(f"  {name + ':':<25}{value}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--machines", type=int, default=20, help="at least this many machines")
    p.add_argument("--signals", type=int, default=500, help="at least this many signals")
    p.add_argument("--rate", type=float, default=10.0, help="ticks per second")
    p.add_argument("--seconds", type=float, default=20.0, help="measured wall-clock seconds")
    p.add_argument("--interval-ms", type=float, default=100.0, help="publishing interval")
    p.add_argument("--security", default="None", help="policy, e.g. Basic256Sha256_SignAndEncrypt")
    p.add_argument("--gc-freeze", action="store_true", help="gc.freeze() after start-up")
    p.add_argument("--with-modbus", action="store_true", help="serve Modbus TCP in-process too")
    p.add_argument("--client", metavar="ENDPOINT", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.client:
        asyncio.run(run_client(args.client, args.interval_ms, args.security))
    else:
        asyncio.run(run_bench(args))


if __name__ == "__main__":
    main()
