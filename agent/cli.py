"""``factory-agent``: the agent's command line.

Exit codes: 0 ok, 2 a user's mistake (bad argument, bad file, unreachable device), 1 a bug.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from agent.config import AgentConfig, load_config
from connectors import logs
from connectors.base import ConnectorError
from connectors.cli import UsageError, run_command


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
    except ConnectorError as exc:
        raise UsageError(str(exc)) from None
    except (OSError, TimeoutError) as exc:
        raise UsageError(f"{args.endpoint}: cannot browse: {exc}") from None
    out.write("node_id\tbrowse_path\tnode_class\tdata_type\tunit\n")
    for row in rows:
        out.write("\t".join(str(c) for c in row) + "\n")
    return 0


def _load(args: argparse.Namespace) -> AgentConfig:
    return load_config(args.config, data_dir=args.data_dir)


def cmd_validate(args: argparse.Namespace, out: IO[str]) -> int:
    cfg = _load(args)
    out.write(
        f"{args.config}: ok ({len(cfg.devices)} devices, "
        f"{sum(_points(d) for d in cfg.devices)} values, {len(cfg.sinks)} sinks, "
        f"data in {cfg.agent.data_dir})\n"
    )
    return 0


def _points(device: Any) -> int:
    return sum(len(getattr(m, "registers", None) or getattr(m, "nodes", None) or [])
               for m in device.machines)  # fmt: skip


def cmd_run(args: argparse.Namespace, out: IO[str]) -> int:
    cfg = _load(args)
    logs.configure(level=cfg.agent.log_level)
    if args.once:
        from agent.once import read_once  # noqa: PLC0415

        lines, problems = asyncio.run(read_once(cfg, timeout_s=args.timeout))
        out.write("".join(line + "\n" for line in lines))
        for problem in problems:
            sys.stderr.write(f"factory-agent: {problem}\n")
        return 2 if problems else 0
    from agent.runtime import Agent  # noqa: PLC0415
    from agent.sinks.base import SinkError  # noqa: PLC0415

    async def main() -> None:
        agent = Agent(cfg, config_path=args.config)
        agent.install_signals()
        await agent.run()

    try:
        asyncio.run(main())
    except OSError as exc:  # a port in use, a data dir we may not write
        raise UsageError(str(exc)) from None
    except SinkError as exc:  # at start, before anything is read: a secret file
        raise UsageError(f"{args.config}: {exc}") from None
    return 0


def cmd_check(args: argparse.Namespace, out: IO[str]) -> int:
    from agent.once import check  # noqa: PLC0415

    cfg = _load(args)
    results = asyncio.run(check(cfg, timeout_s=args.timeout))
    width = max((len(name) for name, _, _ in results), default=0)
    for name, ok, text in results:
        out.write(f"{'ok  ' if ok else 'FAIL'}  {name:<{width}}  {text}\n")
    return 0 if all(ok for _, ok, _ in results) else 2


def cmd_demo(args: argparse.Namespace, out: IO[str]) -> int:
    from agent.demo import DEMO_CONFIG, DEMO_SCENARIO, main_demo  # noqa: PLC0415
    from simulators.modbus_server import ServerStartError  # noqa: PLC0415
    from simulators.opcua_security import OpcUaSetupError  # noqa: PLC0415
    from simulators.scenario import load_scenario  # noqa: PLC0415

    scenario = load_scenario(args.scenario or DEMO_SCENARIO)
    cfg = load_config(args.config or DEMO_CONFIG, data_dir=args.data_dir)
    logs.configure(level="WARNING")  # the live view is the output
    from agent.sinks.base import SinkError  # noqa: PLC0415

    try:
        return main_demo(scenario, cfg, args.duration)
    except SinkError as exc:  # a secret file of a sink the config names
        raise UsageError(str(exc)) from None
    except (ServerStartError, OpcUaSetupError, OSError) as exc:
        raise UsageError(f"{exc} (is another demo or simulator running?)") from None


def cmd_example_config(args: argparse.Namespace, out: IO[str]) -> int:
    from agent.configdoc import example_config  # noqa: PLC0415

    out.write(example_config())
    return 0


def _analytics_section(args: argparse.Namespace) -> Any:
    from agent.config import AnalyticsSection  # noqa: PLC0415

    if getattr(args, "config", None):
        return load_config(args.config).analytics
    return AnalyticsSection.model_validate({})


def _write_json(path: Path | None, data: dict[str, Any]) -> None:
    if path is None:
        return
    import json  # noqa: PLC0415

    try:
        path.write_text(json.dumps(data, indent=2, default=str) + "\n")
    except OSError as exc:
        raise UsageError(f"--json {path}: cannot write: {exc.strerror}") from None


def cmd_evaluate_scenario(args: argparse.Namespace, out: IO[str]) -> int:
    from agent.evaluate import evaluate_scenario, render_scenario  # noqa: PLC0415
    from simulators.scenario import load_scenario  # noqa: PLC0415

    scenario = load_scenario(args.scenario)
    logs.configure(level="ERROR")  # the table is the output; episodes would flood the log
    cfg = _analytics_section(args)
    if args.detector:
        cfg = cfg.model_copy(update={"detector": args.detector})
    result = evaluate_scenario(scenario, cfg)
    out.write(render_scenario(result) + "\n")
    _write_json(args.json, result)
    return 0


def cmd_evaluate_skab(args: argparse.Namespace, out: IO[str]) -> int:
    from agent.evaluate import evaluate_skab  # noqa: PLC0415

    if not args.dir.is_dir():
        raise UsageError(f"{args.dir}: not a directory (the SKAB data, e.g. ../shared/data/skab)")
    logs.configure(level="ERROR")
    cfg = _analytics_section(args)
    if args.detector:
        cfg = cfg.model_copy(update={"detector": args.detector})
    try:
        text, result = evaluate_skab(args.dir, cfg)
    except FileNotFoundError as exc:
        raise UsageError(str(exc)) from None
    out.write(text + "\n")
    _write_json(args.json, result)
    return 0


def cmd_retrain(args: argparse.Namespace, out: IO[str]) -> int:
    from agent.anomalies import parse_when  # noqa: PLC0415
    from agent.retrain import render, retrain  # noqa: PLC0415

    cfg = _load(args)
    since = parse_when(args.since, "--from") if args.since else None
    until = parse_when(args.until, "--to") if args.until else None
    out.write(render(retrain(cfg, args.machine, since, until)))
    return 0


def _config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-c", "--config", type=Path, required=True, help="the agent's YAML file")
    p.add_argument("--data-dir", type=Path, help="override agent.data_dir")


def _analytics_commands(sub: Any) -> None:
    ev = sub.add_parser("evaluate", help="measure the anomaly detection")
    ev_sub = ev.add_subparsers(dest="what", required=True)
    evs = ev_sub.add_parser("scenario", help="run a simulator scenario, score against its labels")
    evs.add_argument(
        "scenario", type=Path, help="scenario YAML, e.g. configs/scenarios/all-faults.yaml"
    )
    evk = ev_sub.add_parser("skab", help="the SKAB benchmark's protocol on a data directory")
    evk.add_argument("dir", type=Path, help="SKAB data directory, e.g. ../shared/data/skab")
    for e in (evs, evk):
        e.add_argument("-c", "--config", type=Path, help="take the analytics section from here")
        e.add_argument("--detector", choices=["pca-t2q", "iforest", "none"],
                       help="override analytics.detector")  # fmt: skip
        e.add_argument("--json", type=Path, metavar="FILE", help="also write the figures here")
    evs.set_defaults(func=cmd_evaluate_scenario)
    evk.set_defaults(func=cmd_evaluate_skab)

    rt = sub.add_parser("retrain", help="refit a machine's model on a window of normal running")
    _config_args(rt)
    rt.add_argument("--machine", required=True, help="machine name")
    rt.add_argument("--from", dest="since", metavar="TIME",
                    help="ISO 8601 or an age such as 2h (default: oldest)")  # fmt: skip
    rt.add_argument("--to", dest="until", metavar="TIME",
                    help="ISO 8601 or an age such as 2h (default: newest)")  # fmt: skip
    rt.set_defaults(func=cmd_retrain)


def cmd_anomalies(args: argparse.Namespace, out: IO[str]) -> int:
    from agent.anomalies import run  # noqa: PLC0415

    return run(args, out)


def _anomalies_commands(sub: Any) -> None:
    an = sub.add_parser("anomalies", help="review anomaly episodes: list, show, ack, export")
    an_sub = an.add_subparsers(dest="action", required=True, metavar="{list,show,ack,export}")
    ls = an_sub.add_parser("list", help="episodes, newest first, as a table (or --json)")
    show = an_sub.add_parser("show", help="one episode: every field, why, verdict, audit trail")
    show.add_argument("id", help="episode id, as `list` prints it")
    show.add_argument("--plot", type=Path, metavar="FILE", help="also draw its signals (.png/.svg)")
    ack = an_sub.add_parser("ack", help="acknowledge an episode with a verdict")
    ack.add_argument("id", help="episode id, as `list` prints it")
    ack.add_argument("--by", metavar="NAME", help="who judged it (required)")
    ack.add_argument("--verdict", metavar="VERDICT", help="confirmed or false-alarm (required)")
    ack.add_argument("--note", metavar="TEXT", default="", help="what was found or done")
    ex = an_sub.add_parser("export", help="every episode (or the filtered ones) as CSV or JSON")
    ex.add_argument("--format", default="csv", metavar="csv|json", help="default csv")
    ex.add_argument("--output", type=Path, metavar="FILE", help="default: standard output")
    for p in (ls, ex):
        p.add_argument("--since", metavar="TIME", help="ISO 8601 (UTC unless +hh:mm) or age: 2h")
        p.add_argument("--until", metavar="TIME", help="same forms as --since")
        p.add_argument("--machine", help="machine name")
        p.add_argument("--line", help="line tag")
        p.add_argument("--severity", metavar="N", help="minimum severity, 1..1000")
        p.add_argument("--state", metavar="STATE", help="open, closed or acknowledged")
    ls.add_argument("--limit", default="50", metavar="N", help="at most N episodes (default 50)")
    ls.add_argument("--json", action="store_true", help="JSON rows instead of the table")
    for p in (ls, show, ack, ex):
        p.add_argument("-c", "--config", type=Path, metavar="FILE",
                       help="the agent's YAML (for its data_dir and sinks)")  # fmt: skip
        p.add_argument("--data-dir", type=Path, metavar="DIR",
                       help="default: the config's, or ./factory-agent-data")  # fmt: skip
        p.set_defaults(func=cmd_anomalies)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="factory-agent",
        description="Edge monitoring agent: OPC UA and Modbus acquisition, local anomaly "
        "detection, store-and-forward to InfluxDB.",
    )
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the agent")
    _config_args(run)
    run.add_argument("--once", action="store_true",
                     help="read one cycle of every device, print line protocol, exit")  # fmt: skip
    run.add_argument("--timeout", type=float, default=10.0, help="--once: seconds per device")
    run.set_defaults(func=cmd_run)

    val = sub.add_parser("validate", help="check a configuration file without connecting")
    _config_args(val)
    val.set_defaults(func=cmd_validate)

    chk = sub.add_parser("check", help="connect once to every device and sink and report")
    _config_args(chk)
    chk.add_argument("--timeout", type=float, default=10.0, help="seconds per device or sink")
    chk.set_defaults(func=cmd_check)

    demo = sub.add_parser("demo", help="simulated plant + agent in one process, live view")
    demo.add_argument("--duration", type=float, metavar="S", help="stop after S seconds")
    demo.add_argument("-c", "--config", type=Path, help="agent config (default configs/demo.yaml)")
    demo.add_argument("--scenario", type=Path, help="default configs/scenarios/demo.yaml")
    demo.add_argument("--data-dir", type=Path, help="override agent.data_dir")
    demo.set_defaults(func=cmd_demo)

    _analytics_commands(sub)
    _anomalies_commands(sub)

    ex = sub.add_parser("example-config", help="print every option with its default")
    ex.set_defaults(func=cmd_example_config)

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

    from agent.bench import add_parser as add_bench  # noqa: PLC0415 (its heavy imports are lazy)

    add_bench(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logs.configure(level="WARNING")
    return run_command("factory-agent", lambda: int(args.func(args, sys.stdout)))


if __name__ == "__main__":
    sys.exit(main())
