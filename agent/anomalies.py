"""``factory-agent anomalies``: review the anomaly journal from the command line.

``list`` (filters, newest first), ``show ID [--plot FILE]``, ``ack ID --by NAME --verdict
confirmed|false-alarm [--note TEXT]`` and ``export --format csv|json [--output FILE]``. They open
``<data_dir>/journal.db``: the data dir is ``--data-dir``, else ``agent.data_dir`` of ``-c
FILE``, else ``factory-agent-data`` in the current directory, where ``factory-agent demo`` and
``factory-agent run`` keep it. A running agent may write the same file meanwhile (SQLite WAL).

A user's mistake (unknown id, bad filter, no journal there) is one line and exit code 2
(:class:`~connectors.cli.UsageError`). Times are shown in local time and in UTC; ``--since`` and
``--until`` take ISO 8601 (UTC unless it carries an offset, as ``retrain --from``) or an age
such as ``30m``, ``2h``, ``7d``.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import sqlite3
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any, cast

from agent.config import DEFAULT_DATA_DIR, AgentConfig, load_config
from agent.journal import (
    STATES,
    VERDICTS,
    Journal,
    State,
    StoredEpisode,
    Verdict,
    export_row,
    iso_utc,
)
from analytics.types import Episode
from connectors.cli import UsageError

DEFAULT_LIMIT = 50
_AGE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|min|h|d|w)\s*$")
_UNIT_S = {"s": 1, "m": 60, "min": 60, "h": 3600, "d": 86400, "w": 604800}
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


# -- arguments -------------------------------------------------------------------------------


def parse_when(text: str, what: str, *, now_ns: int | None = None) -> int:
    """``--since``/``--until``: ISO 8601 (UTC unless an offset is given), ``now``, or an age.

    >>> parse_when("2h", "--since", now_ns=10 * 3600 * 10**9) // 10**9
    28800
    >>> parse_when("2026-01-05T06:00:00Z", "--since") == parse_when("2026-01-05T13:00+07:00", "-")
    True
    >>> parse_when("yesterday", "--since")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    connectors.cli.UsageError: --since 'yesterday': not a time; use ISO 8601 ... such as 30m, 2h, 7d
    """
    now = time.time_ns() if now_ns is None else now_ns
    if text.strip().lower() == "now":
        return now
    age = _AGE.match(text)
    if age:
        return now - round(float(age[1]) * _UNIT_S[age[2]] * 1e9)
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise UsageError(
            f"{what} {text!r}: not a time; use ISO 8601 (2026-11-23T08:00, UTC unless it has an "
            "offset such as +07:00) or an age such as 30m, 2h, 7d"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return (when - _EPOCH) // timedelta(microseconds=1) * 1000


def _severity(text: str | None) -> int | None:
    if text is None:
        return None
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= 1000:
        raise UsageError(f"--severity {text!r}: a minimum severity is a whole number 1..1000 "
                         "(200: at the limit, 400: twice, 600: 4×, 800: 8×)")  # fmt: skip
    return value


def _state(text: str | None) -> State | None:
    if text is None:
        return None
    if text not in STATES:
        raise UsageError(f"--state {text!r}: must be one of {', '.join(STATES)}")
    return cast(State, text)


def _limit(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise UsageError(f"--limit {text!r}: must be a whole number of episodes, at least 1")
    return value


def _filters(args: argparse.Namespace) -> dict[str, Any]:
    """The Journal.list keyword arguments of the filter options."""
    now = time.time_ns()
    since = parse_when(args.since, "--since", now_ns=now) if args.since else None
    until = parse_when(args.until, "--until", now_ns=now) if args.until else None
    if since is not None and until is not None and since > until:
        raise UsageError(f"--since {args.since} ({iso_utc(since)}) is after --until "
                         f"{args.until} ({iso_utc(until)})")  # fmt: skip
    return {
        "since_ns": since,
        "until_ns": until,
        "machine": args.machine,
        "line": args.line,
        "min_severity": _severity(args.severity),
        "state": _state(args.state),
    }


# -- the journal -----------------------------------------------------------------------------


def load(args: argparse.Namespace) -> AgentConfig:
    """The configuration: ``-c FILE`` if given (``--data-dir`` overrides its data dir)."""
    if args.config is not None:
        return load_config(args.config, data_dir=args.data_dir)
    return AgentConfig.model_validate({"agent": {"data_dir": args.data_dir or DEFAULT_DATA_DIR}})


def open_journal(args: argparse.Namespace, cfg: AgentConfig) -> Journal:
    """The journal of the data dir; exit 2 saying where it looked when there is none."""
    path = cfg.data_path("journal.db")
    if not path.is_file():
        if args.data_dir is not None:
            chosen = "--data-dir"
        elif args.config is not None:
            chosen = f"agent.data_dir of {args.config}"
        else:
            chosen = f"the default data dir, {DEFAULT_DATA_DIR}/ in the current directory"
        raise UsageError(
            f"no anomaly journal at {path.absolute()} ({chosen}); run this where "
            "`factory-agent demo` or `factory-agent run` ran, or point to the agent's data with "
            "--data-dir DIR or its configuration with -c FILE"
        )
    try:
        return Journal(path)
    except (sqlite3.Error, RuntimeError) as exc:
        raise UsageError(f"{path}: cannot open the anomaly journal: {exc}") from None


def _get(journal: Journal, id: str) -> StoredEpisode:
    stored = journal.get(id)
    if stored is None:
        hint = ""
        if "-" not in id or not id.rsplit("-", 1)[1].isdigit():
            hint = " (ids look like cnc-01-1767592800000000000)"
        raise UsageError(f"no episode {id!r} in {journal.path}{hint}; "
                         "`factory-agent anomalies list` shows the ids")  # fmt: skip
    return stored


# -- formatting ------------------------------------------------------------------------------


def local_time(ns: int) -> str:
    """Local wall-clock time, to the second."""
    return datetime.fromtimestamp(ns / 1e9).astimezone().strftime("%Y-%m-%d %H:%M:%S")


def _both(ns: int) -> str:
    """Local time with its offset, then UTC."""
    t = datetime.fromtimestamp(ns / 1e9).astimezone()
    return f"{t.strftime('%Y-%m-%d %H:%M:%S %z')} ({iso_utc(ns)})"


def plural(n: int, word: str) -> str:
    """``n word`` or ``n words``.

    >>> plural(1, "signal"), plural(2, "signal")
    ('1 signal', '2 signals')
    """
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def duration(seconds: float) -> str:
    """A duration the way people say it.

    >>> [duration(s) for s in (4.25, 65, 3725, 90000)]
    ['4.2s', '1m 05s', '1h 02m', '1d 01h']
    """
    if seconds < 10:
        return f"{seconds:.1f}s"
    s = round(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h {s % 3600 // 60:02d}m"
    return f"{s // 86400}d {s % 86400 // 3600:02d}h"


def _episode_duration(stored: StoredEpisode) -> str:
    e = stored.episode
    return "open" if e.end_ns is None else duration((e.end_ns - e.start_ns) / 1e9)


def table(rows: Sequence[StoredEpisode]) -> str:
    """The ``list`` table: one line per episode, the top signals last."""
    tz = datetime.now().astimezone().strftime("%z")
    head = ["id", "machine", "line", f"start (local {tz})", "start (UTC)", "duration",
            "severity", "state", "top signals"]  # fmt: skip
    body = [
        [
            s.id,
            s.episode.machine,
            s.line or "-",
            local_time(s.episode.start_ns),
            iso_utc(s.episode.start_ns)[:19] + "Z",
            _episode_duration(s),
            str(s.episode.severity),
            s.state if s.verdict is None else f"{s.state} ({s.verdict})",
            export_row(s)["top_signals"] or "-",
        ]
        for s in rows
    ]
    widths = [max(len(r[i]) for r in [head, *body]) for i in range(len(head) - 1)]
    lines = []
    for r in [head, *body]:
        cells = [
            c.ljust(w) if i != 6 else c.rjust(w)
            for i, (c, w) in enumerate(zip(r, widths, strict=False))
        ]
        lines.append("  ".join([*cells, r[-1]]))
    return "\n".join(lines)


def show_text(journal: Journal, stored: StoredEpisode) -> str:
    """Every field of the episode, its explanation, verdict and audit trail."""
    from agent.episode_view import explanation_lines  # noqa: PLC0415

    e = stored.episode
    tags = ", ".join(f"{k}={v}" for k, v in sorted(e.tags.items())) or "none"
    age_s = (time.time_ns() - e.start_ns) / 1e9
    running = f" (started {duration(age_s)} ago)" if e.end_ns is None and age_s > 0 else ""
    out = [
        f"episode     {e.id}",
        f"machine     {e.machine}",
        f"line        {stored.line or '-'}",
        f"tags        {tags}",
        f"state       {stored.state}",
        f"start       {_both(e.start_ns)}",
        "end         " + ("(open)" if e.end_ns is None else _both(e.end_ns)),
        f"duration    {_episode_duration(stored)}{running}",
        f"peak        {_both(e.peak_ns)}",
        f"score       {e.peak_score:.3g} × the limit (1 = the limit learned in training)",
        f"severity    {e.severity} of 1000",
        f"detector    {e.detector}, model {e.model_version}",
        "why",
        *(f"  {line}" for line in explanation_lines(stored) or ["(no explanation recorded)"]),
    ]
    if stored.verdict is None:
        out.append("verdict     none yet (factory-agent anomalies ack ID --by NAME "
                   "--verdict confirmed|false-alarm)")  # fmt: skip
    else:
        assert stored.acked_ns is not None  # an acknowledgement sets both
        note = f': "{stored.ack_note}"' if stored.ack_note else ""
        out.append(f"verdict     {stored.verdict}, by {stored.acked_by} at "
                   f"{_both(stored.acked_ns)}{note}")  # fmt: skip
    audit = journal.audit(e.id)
    out.append("audit" + ("       (none)" if not audit else ""))
    for a in audit:
        note = f'  "{a["note"]}"' if a["note"] else ""
        out.append(f"  {local_time(a['time_ns'])}  {a['who']}  {a['action']}  "
                   f"{a['verdict'] or ''}{note}".rstrip())  # fmt: skip
    return "\n".join(out)


# -- commands --------------------------------------------------------------------------------


def cmd_list(args: argparse.Namespace, out: IO[str]) -> int:
    cfg = load(args)
    filters = _filters(args)
    limit = _limit(args.limit)
    with open_journal(args, cfg) as journal:
        rows = journal.list(**filters, limit=limit)
        if args.json:
            out.write(json.dumps([export_row(s) for s in rows], indent=2, ensure_ascii=False))
            out.write("\n")
            return 0
        if not rows:
            names = ("since", "until", "machine", "line", "severity", "state")
            given = [f"--{k} {v}" for k, v in vars(args).items() if k in names and v]
            if given:
                out.write(f"no episodes match ({', '.join(given)}) in {journal.path}\n")
            else:
                out.write(f"no episodes yet in {journal.path}\n")
            return 0
        out.write(table(rows) + "\n")
        if len(rows) == limit:
            out.write(f"(the newest {limit}; --limit N shows more)\n")
    return 0


def cmd_show(args: argparse.Namespace, out: IO[str]) -> int:
    cfg = load(args)
    plot: Path | None = args.plot
    fmt = None
    if plot is not None:
        fmt = plot.suffix.lower().lstrip(".")
        if fmt not in ("png", "svg"):
            raise UsageError(f"--plot {plot}: give a file name ending in .png or .svg")
    with open_journal(args, cfg) as journal:
        stored = _get(journal, args.id)
        out.write(show_text(journal, stored) + "\n")
    if plot is None:
        return 0
    from agent.episode_view import load_view  # noqa: PLC0415
    from agent.plot import render_plot  # noqa: PLC0415

    view = load_view(stored, cfg)
    image = render_plot(view, "svg" if fmt == "svg" else "png")
    try:
        plot.write_bytes(image)
    except OSError as exc:
        raise UsageError(f"--plot {plot}: cannot write: {exc.strerror}") from None
    signals = plural(len(view.series), "signal")
    values = plural(sum(len(s.values) for s in view.series), "value")
    source = {"history": "the local history", "influxdb": "InfluxDB", "none": "nowhere"}
    out.write(f"plot        {plot}: {signals}, {values} from {source[view.source]}, "
              f"{local_time(view.start_ns)} to {local_time(view.end_ns)}\n")  # fmt: skip
    if view.note:
        out.write(f"            ({view.note})\n")
    return 0


def cmd_ack(args: argparse.Namespace, out: IO[str]) -> int:
    cfg = load(args)
    by = (args.by or "").strip()
    if not by:
        raise UsageError("ack: --by NAME is required: who judged the episode")
    if args.verdict not in VERDICTS:
        got = "missing" if args.verdict is None else repr(args.verdict)
        raise UsageError(f"ack: --verdict {got}: must be confirmed (a real anomaly) or "
                         "false-alarm (normal running the model did not know)")  # fmt: skip
    with open_journal(args, cfg) as journal:
        before = _get(journal, args.id)
        stored = journal.acknowledge(args.id, by=by, verdict=cast(Verdict, args.verdict),
                                     note=args.note or "")  # fmt: skip
    replaced = (f"; replaces {before.verdict} by {before.acked_by}"
                if before.verdict is not None else "")  # fmt: skip
    out.write(f"{stored.id}: {stored.verdict}, acknowledged by {stored.acked_by}{replaced}\n")
    return 0


def cmd_export(args: argparse.Namespace, out: IO[str]) -> int:
    cfg = load(args)
    if args.format not in ("csv", "json"):
        raise UsageError(f"--format {args.format!r}: must be csv or json")
    filters = _filters(args)
    with open_journal(args, cfg) as journal:
        if any(v is not None for v in filters.values()):
            rows = [export_row(s) for s in journal.list(**filters, limit=2**62)]
        else:
            rows = journal.export_rows()
    if args.output is None:
        _write_rows(rows, args.format, out)
        return 0
    try:
        with args.output.open("w", encoding="utf-8", newline="") as f:
            _write_rows(rows, args.format, f)
    except OSError as exc:
        raise UsageError(f"--output {args.output}: cannot write: {exc.strerror}") from None
    out.write(f"{plural(len(rows), 'episode')} written to {args.output} ({args.format})\n")
    return 0


def _write_rows(rows: list[dict[str, Any]], fmt: str, f: IO[str]) -> None:
    if fmt == "json":
        f.write(json.dumps(rows, indent=2, ensure_ascii=False) + "\n")
        return
    columns = list(rows[0]) if rows else _export_columns()
    writer = csv.DictWriter(f, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)


def _export_columns() -> list[str]:
    """The CSV header of an empty export: the keys of :func:`export_row`."""
    return list(export_row(StoredEpisode(Episode("", 0, "", "", 0.0, 0), "open")))


COMMANDS = {"list": cmd_list, "show": cmd_show, "ack": cmd_ack, "export": cmd_export}


def run(args: argparse.Namespace, out: IO[str]) -> int:
    """Dispatch ``factory-agent anomalies <action>``."""
    return COMMANDS[args.action](args, out)
