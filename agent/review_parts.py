"""The review page's parts: its filters and the small pieces of HTML it is built from.

Pure functions of their arguments (no server, no journal), so each can be checked on its own;
``agent/review.py`` puts them together behind the routes.
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast
from urllib.parse import quote

from agent.anomalies import parse_when
from agent.journal import STATES, State, StoredEpisode
from agent.journal import iso_utc as iso
from agent.monitor import Snapshot
from connectors.cli import UsageError

FILTERS = ("machine", "line", "severity", "state", "since", "limit")
SINCE_CHOICES = (("", "any time"), ("1h", "last hour"), ("24h", "last 24 h"),
                 ("7d", "last 7 days"), ("30d", "last 30 days"))  # fmt: skip
DEFAULT_LIMIT, MAX_LIMIT = 200, 1000
esc = html.escape


class FilterError(ValueError):
    """A filter value the inbox cannot use; the message names it and what it takes."""


@dataclass(frozen=True, slots=True)
class Filters:
    machine: str | None = None
    line: str | None = None
    severity: int | None = None
    state: State | None = None
    since: str = ""
    since_ns: int | None = None
    limit: int = DEFAULT_LIMIT

    def journal_args(self) -> dict[str, Any]:
        return {"machine": self.machine, "line": self.line, "min_severity": self.severity,
                "state": self.state, "since_ns": self.since_ns, "limit": self.limit}  # fmt: skip

    def echo(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in FILTERS if getattr(self, k) not in (None, "")}


def parse_since(text: str, now_ns: int) -> int:
    """What ``factory-agent anomalies list --since`` takes: an age (``24h``) or ISO 8601.

    >>> parse_since("2h", 10 * 3600 * 10**9) // 10**9
    28800
    >>> iso(parse_since("2026-01-05T06:00", 0)), iso(parse_since("2026-01-05T07:00+01:00", 0))
    ('2026-01-05T06:00:00.000Z', '2026-01-05T06:00:00.000Z')
    """
    try:
        return parse_when(text, "since", now_ns=now_ns)
    except UsageError as exc:
        raise FilterError(str(exc)) from None


def parse_filters(query: Mapping[str, str], now_ns: int) -> Filters:
    """The inbox filters from a query string; empty values mean "any"."""
    unknown = sorted(set(query) - set(FILTERS))
    if unknown:
        raise FilterError(f"unknown filter {unknown[0]!r}; the filters are {', '.join(FILTERS)}")
    value = {k: (query.get(k) or "").strip() for k in FILTERS}
    severity = limit = None
    if value["severity"]:
        if not value["severity"].isdigit() or not 1 <= int(value["severity"]) <= 1000:
            raise FilterError(f"severity {value['severity']!r}: give the minimum severity, "
                              "a whole number 1..1000 (200 is at the limit)")  # fmt: skip
        severity = int(value["severity"])
    if value["limit"]:
        if not value["limit"].isdigit() or not 1 <= int(value["limit"]) <= MAX_LIMIT:
            raise FilterError(f"limit {value['limit']!r}: a whole number 1..{MAX_LIMIT}")
        limit = int(value["limit"])
    if value["state"] and value["state"] not in STATES:
        raise FilterError(f"state {value['state']!r}: one of {', '.join(STATES)}")
    since = value["since"]
    return Filters(
        machine=value["machine"] or None, line=value["line"] or None, severity=severity,
        state=cast(State, value["state"]) if value["state"] else None, since=since,
        since_ns=parse_since(since, now_ns) if since else None, limit=limit or DEFAULT_LIMIT,
    )  # fmt: skip


# -- small pieces of HTML ------------------------------------------------------------------------


def severity_band(severity: int) -> str:
    """low (< 2× the limit), medium (< 4×), high (< 8×), critical."""
    return ("low", "medium", "high", "critical")[min(3, max(0, severity // 200 - 1))]


def sev_badge(severity: int) -> str:
    band = severity_band(severity)
    return (
        f'<span class="sev sev-{band}" title="severity {severity} of 1000">{severity} {band}</span>'
    )


def state_badge(state: str) -> str:
    return f'<span class="state state-{state}">{state}</span>'


def _time(ns: int | None) -> str:
    if ns is None:
        return "—"
    text = datetime.fromtimestamp(ns // 10**9, tz=UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    return f'<time datetime="{iso(ns)}">{text}</time>'


def human_duration(seconds: float) -> str:
    """A duration for people, two units at most.

    >>> [human_duration(s) for s in (4.2, 95, 3 * 3600 + 300, 2 * 86400 + 7200)]
    ['4 s', '1 min 35 s', '3 h 5 min', '2 d 2 h']
    """
    s = round(seconds)
    for big, small, a, b in ((86400, 3600, "d", "h"), (3600, 60, "h", "min"), (60, 1, "min", "s")):
        if s >= big:
            rest = (s % big) // small
            return f"{s // big} {a}" + (f" {rest} {b}" if rest else "")
    return f"{s} s"


def _duration(stored: StoredEpisode) -> str:
    e = stored.episode
    return "ongoing" if e.end_ns is None else human_duration((e.end_ns - e.start_ns) / 1e9)


def _top(stored: StoredEpisode, n: int = 3) -> str:
    top = sorted(stored.episode.contributions, key=lambda c: -c.share)[:n]
    return ", ".join(f"{esc(c.signal)} <small>{c.share * 100:.0f} %</small>" for c in top) or "—"


def episode_url(stored_id: str, suffix: str = "") -> str:
    return f"/anomalies/{quote(stored_id, safe='')}{suffix}"


def _ms(seconds: Any) -> str:
    ok = isinstance(seconds, int | float) and math.isfinite(seconds)
    return f"{seconds * 1000:.1f} ms" if ok else "–"


def health_panel(snap: Snapshot) -> str:
    """Devices up/down with read round trips, sinks with spool depth and drops."""
    status, reasons = snap.health()
    items = []
    for d in snap.devices:
        up = bool(d.get("connected"))
        items.append(f'<li class="chip {"up" if up else "down"}"><b>{esc(str(d["device"]))}</b> '
                     f"{'up' if up else 'down'} · read {_ms(d.get('rtt_median_s'))}, "
                     f"p99 {_ms(d.get('rtt_p99_s'))}</li>")  # fmt: skip
    for s in snap.sinks:
        bad = bool(s.get("failing") or s.get("dropped_points"))
        items.append(f'<li class="chip {"down" if bad else "up"}"><b>{esc(str(s["sink"]))}</b> '
                     f"spool {s.get('spool_points', 0):,} points · "
                     f"dropped {s.get('dropped_points', 0):,}</li>")  # fmt: skip
    if not snap.sinks:
        items.append('<li class="chip">no sink: readings stay in the local history</li>')
    why = "".join(f"<li>{esc(r)}</li>" for r in reasons)
    return (f'<section class="health" aria-label="agent health"><h2>Agent '
            f'<span class="state state-{status}">{status}</span> '
            f"<small>up {human_duration(snap.uptime_s)}</small></h2>"
            f'<ul class="chips">{"".join(items)}</ul>'
            f'{f"<ul class=reasons>{why}</ul>" if why else ""}</section>')  # fmt: skip


def _select(name: str, current: str, any_label: str, values: list[str]) -> str:
    if current and current not in values:
        values = [*values, current]
    options = "".join(f'<option value="{esc(v)}"{" selected" if v == current else ""}>'
                      f"{esc(v)}</option>" for v in values)  # fmt: skip
    return f'<select name="{name}"><option value="">{any_label}</option>{options}</select>'


def filter_form(f: Filters, machines: list[str], lines: list[str]) -> str:
    since = "".join(f'<option value="{v}"{" selected" if v == f.since else ""}>{t}</option>'
                    for v, t in SINCE_CHOICES)  # fmt: skip
    if f.since and f.since not in (v for v, _ in SINCE_CHOICES):
        since += f'<option value="{esc(f.since)}" selected>since {esc(f.since)}</option>'
    severity = (f'<input name="severity" type="number" min="1" max="1000" inputmode="numeric" '
                f'placeholder="1–1000" value="{f.severity or ""}">')  # fmt: skip
    return (
        '<form class="filters" method="get" action="/">'
        f"<label>Machine{_select('machine', f.machine or '', 'all machines', machines)}</label>"
        f"<label>Line{_select('line', f.line or '', 'all lines', lines)}</label>"
        f"<label>Severity at least{severity}</label>"
        f"<label>State{_select('state', f.state or '', 'any state', list(STATES))}</label>"
        f'<label>Since<select name="since">{since}</select></label>'
        '<button type="submit" class="primary">Filter</button>'
        '<a class="button" href="/">Clear</a></form>'
    )


def inbox_table(rows: list[StoredEpisode]) -> str:
    if not rows:
        return '<p class="empty">No episodes match these filters.</p>'
    out = []
    for s in rows:
        e = s.episode
        cells = {
            "Severity": sev_badge(e.severity),
            "Machine": f'<a class="open" href="{episode_url(e.id)}">{esc(e.machine)}</a>',
            "Line": esc(s.line) or "—",
            "Start": _time(e.start_ns),
            "Duration": _duration(s),
            "Top signals": _top(s),
            "State": state_badge(s.state),
        }
        tds = "".join(f'<td data-label="{k}">{v}</td>' for k, v in cells.items())
        out.append(f'<tr class="row-{s.state}">{tds}</tr>')
    head = "".join(f"<th>{k}</th>" for k in cells)
    count = f"{len(rows)} episode{'s' if len(rows) != 1 else ''}, newest first"
    return (f'<table class="inbox"><thead><tr>{head}</tr></thead><tbody>{"".join(out)}</tbody>'
            f'</table><p class="count">{count}</p>')  # fmt: skip


def facts(stored: StoredEpisode) -> str:
    e = stored.episode
    rows = {
        "Line": esc(stored.line) or "—",
        "Start": _time(e.start_ns),
        "End": _time(e.end_ns) if e.end_ns is not None else "still open",
        "Duration": _duration(stored),
        "Peak": _time(e.peak_ns),
        "Peak score": f"{e.peak_score:.2f} × the limit",
        "Detector": esc(e.detector),
        "Model version": esc(e.model_version),
        "Episode": f"<code>{esc(e.id)}</code>",
    }
    return f'<dl class="facts">{"".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in rows.items())}</dl>'


def verdict_box(stored: StoredEpisode) -> str:
    if stored.verdict is None:
        return ""
    label = "Confirmed fault" if stored.verdict == "confirmed" else "False alarm"
    note = f": {esc(stored.ack_note)}" if stored.ack_note else ""
    who = f"{esc(stored.acked_by or '')}, {_time(stored.acked_ns)}"
    head = f'<p class="verdict verdict-{stored.verdict}"><b>{label}</b>'
    return f"{head}{note} <small>— {who}</small></p>"


def audit_table(audit: list[dict[str, Any]]) -> str:
    if not audit:
        return (
            '<section class="audit"><h2>Audit trail</h2><p class="empty">Nobody has '
            "acknowledged this episode yet.</p></section>"
        )
    rows = "".join(f"<tr><td>{_time(a['time_ns'])}</td><td>{esc(a['who'])}</td>"
                   f"<td>{esc(a['verdict'] or a['action'])}</td><td>{esc(a['note'])}</td></tr>"
                   for a in audit)  # fmt: skip
    return ('<section class="audit"><h2>Audit trail</h2><table><thead><tr><th>When</th>'
            "<th>Who</th><th>Verdict</th><th>Note</th></tr></thead>"
            f"<tbody>{rows}</tbody></table></section>")  # fmt: skip


# -- the application -----------------------------------------------------------------------------
