"""``factory-sim``: run simulated machines over OPC UA and Modbus, list models, print configs.

Exit codes: 0 ok, 2 bad input (scenario file, arguments, port in use), 1 unexpected failure.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

import structlog

from connectors import logs
from connectors.cli import UsageError, run_command
from connectors.types import signal_table
from simulators.engine import Plant
from simulators.modbus_server import ServerStartError
from simulators.models import MODELS
from simulators.opcua_security import OpcUaSetupError
from simulators.scenario import Scenario, check_scenario, load_scenario

log = structlog.get_logger()


def _scenario(args: argparse.Namespace) -> Scenario:
    scn = load_scenario(args.scenario)
    update: dict[str, Any] = {}
    if getattr(args, "seed", None) is not None:
        update["seed"] = args.seed
    if getattr(args, "speed", None) is not None:
        if not 0 < args.speed <= 3600:
            raise UsageError(f"--speed {args.speed:g}: must be in (0, 3600]")
        update["speed"] = args.speed
    opcua: dict[str, Any] = {}
    modbus: dict[str, Any] = {}
    if getattr(args, "opcua_port", None) is not None:
        opcua["port"] = args.opcua_port
    if getattr(args, "modbus_port", None) is not None:
        modbus["port"] = args.modbus_port
    if getattr(args, "host", None) is not None:
        opcua["host"] = modbus["host"] = args.host
    if opcua:
        update["opcua"] = scn.opcua.model_copy(update=opcua)
    if modbus:
        update["modbus"] = scn.modbus.model_copy(update=modbus)
    if update:
        scn = scn.model_copy(update=update)
        check_scenario(scn, str(args.scenario) + " (with command-line overrides)")
    return scn


def cmd_models(args: argparse.Namespace, out: IO[str]) -> int:
    if args.json:
        doc = {
            kind: {
                "title": model.title,
                "faults": list(model.fault_effects),
                "signals": [
                    {"name": s.name, "unit": s.unit, "low": s.low, "high": s.high,
                     "description": s.description}
                    for s in model.signals
                ],
            }
            for kind, model in sorted(MODELS.items())
        }  # fmt: skip
        json.dump(doc, out, indent=2, ensure_ascii=False)
        out.write("\n")
        return 0
    for kind, model in sorted(MODELS.items()):
        out.write(f"{kind}: {model.title}\n")
        out.write(f"  physical faults: {', '.join(model.fault_effects)}\n")
        table = signal_table({s.name: s.info() for s in model.signals})
        out.write("".join(f"  {line}\n" for line in table.splitlines()))
        out.write("\n")
    out.write(
        "Every kind also takes the sensor faults spike, stuck, drift, noise_burst, "
        "sensor_failure (on one signal)\nand comm_loss (the device stops answering).\n"
    )
    return 0


def cmd_validate(args: argparse.Namespace, out: IO[str]) -> int:
    scn = load_scenario(args.scenario)
    out.write(
        f"{args.scenario}: ok ({len(scn.machines)} machines, {len(scn.faults)} faults, "
        f"{scn.duration:g} s at speed {scn.speed:g})\n"
    )
    return 0


def cmd_print_config(args: argparse.Namespace, out: IO[str]) -> int:
    from simulators.agentconfig import device_section  # noqa: PLC0415 (imports servers)

    out.write(device_section(_scenario(args), protocols=args.protocol))
    return 0


def cmd_run(args: argparse.Namespace, out: IO[str]) -> int:
    scn = _scenario(args)
    labels = Path(args.labels) if args.labels else Path(f"{scn.name}-labels.jsonl")
    wall_s = args.duration if args.duration is not None else scn.duration / scn.speed
    if wall_s <= 0:
        raise UsageError(f"--duration {wall_s:g}: must be positive")
    return asyncio.run(_serve(scn, labels, wall_s, out))


async def _serve(scn: Scenario, labels_path: Path, wall_s: float, out: IO[str]) -> int:
    from simulators.modbus_server import ModbusSimServer  # noqa: PLC0415 (heavy imports)
    from simulators.opcua_server import OpcUaSimServer  # noqa: PLC0415

    plant = Plant(scn)
    try:
        labels = labels_path.open("w", encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"--labels {labels_path}: cannot write: {exc.strerror}") from None

    def write_label(label: dict[str, Any]) -> None:
        labels.write(json.dumps(label) + "\n")
        labels.flush()
        log.info("fault_started", machine=label["machine"], fault=label["fault"],
                 until=label["end"], signals=label["signals"])  # fmt: skip

    plant.on_label = write_label
    servers: list[Any] = []
    if scn.modbus.enabled:
        servers.append(ModbusSimServer(plant, scn.modbus))
    if scn.opcua.enabled:
        servers.append(OpcUaSimServer(plant, scn.opcua))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        for server in servers:
            await server.start()
        # asyncua's address space is large and long-lived: keep it out of full GC passes, which
        # otherwise stall a tick for ~200 ms now and then (measured with both servers running).
        gc.freeze()
        out.write(
            f"factory-sim: scenario {scn.name!r}, {len(plant.machines)} machines, seed {scn.seed}, "
            f"speed {scn.speed:g}x, {scn.rate_hz:g} updates/s, running {wall_s:g} s\n"
        )
        for server in servers:
            out.write(f"  {server.describe()}\n")
        out.write(f"  labels: {labels_path}\n")
        out.flush()
        await plant.run([s.publish for s in servers], stop, wall_s)
    finally:
        for server in reversed(servers):
            await server.stop()
        labels.close()
    st = plant.stats
    log.info("simulation_finished", ticks=st.ticks, overruns=st.overruns,
             machine_time_s=round(plant.elapsed_s, 1))  # fmt: skip
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="factory-sim",
        description="Simulated machines over OPC UA and Modbus TCP, with scripted faults "
        "and ground-truth labels.",
    )
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="serve a scenario over OPC UA and Modbus")
    run.add_argument("scenario", type=Path)
    run.add_argument("--speed", type=float, help="machine seconds per wall second (override)")
    run.add_argument("--seed", type=int, help="random seed (override)")
    run.add_argument("--host", help="address to listen on for both protocols (override)")
    run.add_argument("--opcua-port", type=int, metavar="P")
    run.add_argument("--modbus-port", type=int, metavar="P")
    run.add_argument(
        "--labels",
        metavar="FILE",
        help="ground-truth labels, JSON lines (default: <scenario name>-labels.jsonl)",
    )
    run.add_argument(
        "--duration",
        type=float,
        metavar="S",
        help="wall-clock seconds to run (default: the scenario's duration / speed)",
    )
    run.set_defaults(func=cmd_run)

    models = sub.add_parser("models", help="list machine kinds and their signals")
    models.add_argument("--json", action="store_true", help="machine-readable output")
    models.set_defaults(func=cmd_models)

    pc = sub.add_parser("print-config", help="print the agent's device section for a scenario")
    pc.add_argument("scenario", type=Path)
    pc.add_argument("--protocol", choices=["opcua", "modbus", "both"], default="both")
    pc.add_argument("--host", help="host the agent should connect to (override)")
    pc.add_argument("--opcua-port", type=int, metavar="P")
    pc.add_argument("--modbus-port", type=int, metavar="P")
    pc.set_defaults(func=cmd_print_config)

    val = sub.add_parser("validate", help="check a scenario file and exit")
    val.add_argument("scenario", type=Path)
    val.set_defaults(func=cmd_validate)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logs.configure()
    return run_command(
        "factory-sim", lambda: int(args.func(args, sys.stdout)), (ServerStartError, OpcUaSetupError)
    )


if __name__ == "__main__":
    sys.exit(main())
