"""``factory-agent``: the agent's command line.

Exit codes: 0 ok, 2 a user's mistake (bad argument, bad file, unreachable device), 1 a bug.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence
from typing import IO

from connectors import logs
from connectors.validation import ConfigErrors


class UsageError(Exception):
    """A user's mistake: printed without a traceback, exit code 2."""


def cmd_probe(args: argparse.Namespace, out: IO[str]) -> int:
    from agent.probe import ProbeError, parse_target, read_registers, render  # noqa: PLC0415

    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)  # we report failures ourselves
    host, port = parse_target(args.target)
    limit = 2000 if args.function in (1, 2) else 125
    if not 1 <= args.count <= limit:
        raise UsageError(f"--count {args.count}: must be 1..{limit} for function {args.function}")
    if not 0 <= args.address <= 65535:
        raise UsageError(f"--address {args.address}: Modbus addresses are 0..65535 (16-bit)")
    try:
        regs = asyncio.run(
            read_registers(host, port, unit=args.unit, address=args.address, count=args.count,
                           function=args.function, timeout_s=args.timeout)
        )  # fmt: skip
    except ProbeError as exc:
        raise UsageError(str(exc)) from None
    out.write(render(regs, args.address, args.function) + "\n")
    return 0


def cmd_browse(args: argparse.Namespace, out: IO[str]) -> int:
    from connectors.opcua import browse  # noqa: PLC0415 (asyncua is slow to import)

    try:
        rows = asyncio.run(browse(args.endpoint, depth=args.depth, timeout_s=args.timeout))
    except (OSError, TimeoutError) as exc:
        raise UsageError(f"{args.endpoint}: cannot browse: {exc}") from None
    for row in rows:
        out.write("\t".join(str(c) for c in row) + "\n")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="factory-agent",
        description="Edge monitoring agent: OPC UA and Modbus acquisition, local anomaly "
        "detection, store-and-forward to InfluxDB.",
    )
    sub = p.add_subparsers(dest="command", required=True)

    probe = sub.add_parser("probe", help="read raw Modbus registers and show every decoding")
    probe_sub = probe.add_subparsers(dest="protocol", required=True)
    mb = probe_sub.add_parser("modbus", help="Modbus TCP")
    mb.add_argument("target", metavar="HOST[:PORT]", help="device address (port 502 by default)")
    mb.add_argument("--unit", type=int, default=1, help="unit id (default 1)")
    mb.add_argument("--address", type=int, required=True, help="0-based protocol address")
    mb.add_argument("--count", type=int, default=4, help="registers to read (default 4)")
    mb.add_argument("--function", type=int, default=3, choices=[1, 2, 3, 4],
                    help="1 coils, 2 discrete inputs, 3 holding (default), 4 input")  # fmt: skip
    mb.add_argument("--timeout", type=float, default=3.0, help="seconds (default 3)")
    mb.set_defaults(func=cmd_probe)

    br = sub.add_parser("browse", help="print an OPC UA server's address space")
    br.add_argument("endpoint", help="opc.tcp://host:port[/path]")
    br.add_argument("--depth", type=int, default=6, help="levels below Objects (default 6)")
    br.add_argument("--timeout", type=float, default=5.0, help="seconds (default 5)")
    br.set_defaults(func=cmd_browse)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logs.configure(level="WARNING")
    try:
        rc: int = args.func(args, sys.stdout)
    except ConfigErrors as exc:
        sys.stderr.write(exc.render() + "\n")
        return 2
    except UsageError as exc:
        sys.stderr.write(f"factory-agent: {exc}\n")
        return 2
    except KeyboardInterrupt:
        return 130
    return rc


if __name__ == "__main__":
    sys.exit(main())
