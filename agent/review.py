"""The maintenance review page: the anomaly inbox, an episode's page, its acknowledgement.

Server-rendered HTML for a tablet on the line, served by the agent itself (no framework, no
CDN: ``agent/static/`` holds the stylesheet and a small optional script). Routes:

===============================  ==============================================================
``GET /`` (``/anomalies``)       the inbox, newest first; filters ``machine``, ``line``,
                                 ``severity`` (minimum, 1..1000), ``state``, ``since`` (``24h``,
                                 ``7d`` or a date/time, UTC unless it says otherwise), ``limit``;
                                 and the agent's health at a glance
``GET /anomalies/{id}``          the episode: explanation, plot, times, verdict, audit trail
``GET /anomalies/{id}/plot.svg``  its signals around the episode (``.png`` too)
``POST /anomalies/{id}/ack``     the verdict form (name, confirmed / false-alarm, note): 303
``GET /api/anomalies[/{id}]``    the same as JSON (same filters)
===============================  ==============================================================

A bad filter is a 400 naming the filter and what it takes; an unknown id a 404. The journal is
the agent's SQLite file opened a second time (WAL: the analytics keep writing through their own
connection); every call to it runs in a worker thread, one at a time.
"""

from __future__ import annotations

import asyncio
import html
import json
import math
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, TypeVar, cast
from urllib.parse import quote

from aiohttp import web

from agent.access import CSRF_FIELD, Access
from agent.anomalies import parse_when
from agent.config import AgentConfig
from agent.episode_view import explanation_lines, load_view
from agent.journal import STATES, VERDICTS, Journal, State, StoredEpisode, Verdict, export_row
from agent.journal import iso_utc as iso
from agent.monitor import Snapshot
from connectors.cli import UsageError

STATIC_DIR = Path(__file__).with_name("static")
FILTERS = ("machine", "line", "severity", "state", "since", "limit")
SINCE_CHOICES = (("", "any time"), ("1h", "last hour"), ("24h", "last 24 h"),
                 ("7d", "last 7 days"), ("30d", "last 30 days"))  # fmt: skip
DEFAULT_LIMIT, MAX_LIMIT = 200, 1000
MAX_NAME_CHARS, MAX_NOTE_CHARS = 100, 2000
PLOT_TYPES = {"svg": "image/svg+xml", "png": "image/png"}
T = TypeVar("T")
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


def _sev(severity: int) -> str:
    band = severity_band(severity)
    return (
        f'<span class="sev sev-{band}" title="severity {severity} of 1000">{severity} {band}</span>'
    )


def _state(state: str) -> str:
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


def _url(stored_id: str, suffix: str = "") -> str:
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
            "Severity": _sev(e.severity),
            "Machine": f'<a class="open" href="{_url(e.id)}">{esc(e.machine)}</a>',
            "Line": esc(s.line) or "—",
            "Start": _time(e.start_ns),
            "Duration": _duration(s),
            "Top signals": _top(s),
            "State": _state(s.state),
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


class Review:
    """The review routes over one journal; :meth:`open` before serving, :meth:`close` after."""

    def __init__(
        self, cfg: AgentConfig, snapshot: Callable[[], Snapshot] | None, access: Access
    ) -> None:
        self.cfg = cfg
        self.snapshot = snapshot
        self.access = access
        self.journal_path = cfg.data_path("journal.db")
        self._journal: Journal | None = None
        self._lock = threading.Lock()

    def open(self) -> None:
        self._journal = Journal(self.journal_path)

    def close(self) -> None:
        if self._journal is not None:
            self._journal.close()
            self._journal = None

    async def _db(self, call: Callable[[Journal], T]) -> T:
        """Run ``call(journal)`` in a worker thread, one call at a time (one connection)."""

        def locked() -> T:
            with self._lock:
                assert self._journal is not None, "Review.open() was not called"
                return call(self._journal)

        return await asyncio.to_thread(locked)

    def add_routes(self, app: web.Application) -> None:
        r = app.router
        r.add_get("/", self.inbox)
        r.add_get("/anomalies", self.inbox)
        r.add_get("/anomalies/{id}", self.episode)
        r.add_get(r"/anomalies/{id}/plot.{fmt:svg|png}", self.plot)
        r.add_post("/anomalies/{id}/ack", self.ack)
        r.add_get("/api/anomalies", self.api_list)
        r.add_get("/api/anomalies/{id}", self.api_get)
        r.add_static("/static/", STATIC_DIR)

    # -- pages ---------------------------------------------------------------------------------
    def _page(
        self, request: web.Request, title: str, body: str, *, status: int = 200, refresh: int = 0
    ) -> web.Response:
        signout = ""
        if self.access.token is not None:
            signout = (f'<form method="post" action="/logout"><input type="hidden" '
                       f'name="{CSRF_FIELD}" value="{self.access.csrf_token(request)}">'
                       '<button class="link">Sign out</button></form>')  # fmt: skip
        text = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{esc(title)} · {esc(self.cfg.agent.name)}</title>
<link rel="stylesheet" href="/static/review.css"><script src="/static/review.js" defer></script>
</head><body data-refresh="{refresh}">
<header class="bar"><a class="brand" href="/">Anomalies</a>
<span class="agent">{esc(self.cfg.agent.name)}</span>{signout}</header>
<main>{body}</main></body></html>
"""
        return web.Response(text=text, status=status, content_type="text/html")

    def _not_found(self, request: web.Request, id_: str) -> web.Response:
        body = (f'<h1>No such episode</h1><p class="flash error">There is no episode '
                f"<code>{esc(id_)}</code> in the journal ({esc(str(self.journal_path))}).</p>"
                '<p><a class="button" href="/">Back to the inbox</a></p>')  # fmt: skip
        return self._page(request, "Not found", body, status=404)

    async def inbox(self, request: web.Request) -> web.Response:
        error, status = "", 200
        try:
            f = parse_filters(request.query, time.time_ns())
        except FilterError as exc:
            error, status, f = str(exc), 400, Filters()
        rows = [] if error else await self._db(lambda j: j.list(**f.journal_args()))
        known = await self._db(lambda j: j.list(limit=MAX_LIMIT))
        machines = sorted({s.episode.machine for s in known})
        lines = sorted({s.line for s in known if s.line})
        health = health_panel(self.snapshot()) if self.snapshot is not None else ""
        flash = f'<p class="flash error" role="alert">Bad filter: {esc(error)}</p>' if error else ""
        body = (f"{health}{filter_form(f, machines, lines)}{flash}"
                f"{'' if error else inbox_table(rows)}")  # fmt: skip
        return self._page(request, "Anomalies", body, status=status, refresh=0 if error else 30)

    async def episode(
        self, request: web.Request, *, error: str = "", given: Mapping[str, str] | None = None
    ) -> web.Response:
        id_ = request.match_info["id"]
        stored = await self._db(lambda j: j.get(id_))
        if stored is None:
            return self._not_found(request, id_)
        audit = await self._db(lambda j: j.audit(id_))
        e = stored.episode
        if error:
            flash = f'<p class="flash error" role="alert">{esc(error)}</p>'
        elif request.query.get("saved") == "1":
            flash = '<p class="flash ok" role="status">Saved: this verdict trains the detector.</p>'
        else:
            flash = ""
        why = "".join(f"<li>{esc(line)}</li>" for line in explanation_lines(stored))
        alt = f"{esc(e.machine)}: contributing signals with the expected band"
        body = (
            '<p class="nav"><a class="back" href="/">← Inbox</a></p>'
            f"<h1>{esc(e.machine)} {_sev(e.severity)} {_state(stored.state)}</h1>"
            f"{flash}{verdict_box(stored)}"
            '<div class="episode"><section class="why"><h2>Why</h2>'
            f'<ul class="explanation">{why or "<li>no explanation recorded</li>"}</ul>'
            f"{facts(stored)}</section>"
            '<section class="plot"><h2>Signals around the episode</h2>'
            f'<img class="plot" src="{_url(e.id, "/plot.svg")}" alt="{alt}">'
            f'<p><a href="{_url(e.id, "/plot.png")}" download>Download as PNG</a></p>'
            f"</section></div>{self._ack_form(request, stored, given or {})}{audit_table(audit)}"
        )
        title = f"{e.machine} {iso(e.start_ns)}"
        return self._page(request, title, body, status=400 if error else 200)

    def _ack_form(
        self, request: web.Request, stored: StoredEpisode, given: Mapping[str, str]
    ) -> str:
        """The verdict form; ``given``: what was sent, when it comes back with an error."""
        again = stored.verdict is not None
        checked = given.get("verdict", stored.verdict)
        radios = "".join(
            f'<label class="choice"><input type="radio" name="verdict" value="{v}" required'
            f"{' checked' if checked == v else ''}> {text}</label>"
            for v, text in (("confirmed", "Confirmed fault"), ("false-alarm", "False alarm"))
        )
        return f"""<section class="ack"><h2>{"Change the verdict" if again else "Acknowledge"}</h2>
<form method="post" action="{_url(stored.id, "/ack")}" class="card">
<input type="hidden" name="{CSRF_FIELD}" value="{self.access.csrf_token(request)}">
<label for="by">Your name</label>
<input id="by" name="by" required maxlength="{MAX_NAME_CHARS}" autocomplete="name"
 value="{esc(given.get("by", ""))}">
<fieldset><legend>Verdict</legend>{radios}</fieldset>
<label for="note">Note — for a confirmed fault, what was found (e.g. “bearing replaced”)</label>
<textarea id="note" name="note" rows="3" maxlength="{MAX_NOTE_CHARS}">
{esc(given.get("note", ""))}</textarea>
<button type="submit" class="primary">Save verdict</button>
</form></section>"""

    async def ack(self, request: web.Request) -> web.Response:
        id_ = request.match_info["id"]
        form = await request.post()
        by, verdict, note = (str(form.get(k) or "").strip() for k in ("by", "verdict", "note"))
        error = ""
        if not by:
            error = "Give your name: every verdict is kept with who gave it."
        elif len(by) > MAX_NAME_CHARS or len(note) > MAX_NOTE_CHARS:
            error = f"Name up to {MAX_NAME_CHARS} characters, note up to {MAX_NOTE_CHARS}."
        elif verdict not in VERDICTS:
            error = "Choose a verdict: confirmed fault or false alarm."
        if error:
            given = {"by": by, "verdict": verdict, "note": note}
            return await self.episode(request, error=error, given=given)
        v = cast(Verdict, verdict)
        try:
            await self._db(lambda j: j.acknowledge(id_, by=by, verdict=v, note=note))
        except KeyError:
            return self._not_found(request, id_)
        return web.Response(status=303, headers={"Location": _url(id_, "?saved=1")})

    async def plot(self, request: web.Request) -> web.Response:
        id_, fmt = request.match_info["id"], request.match_info["fmt"]
        stored = await self._db(lambda j: j.get(id_))
        if stored is None:
            return web.Response(status=404, text=f"no episode {id_!r} in the journal\n")
        kind: Literal["svg", "png"] = "svg" if fmt == "svg" else "png"
        data = await asyncio.to_thread(self._render, stored, kind)
        headers = {
            "Cache-Control": "no-store" if stored.episode.end_ns is None else "max-age=60",
            "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'",
        }
        return web.Response(body=data, content_type=PLOT_TYPES[fmt], headers=headers)

    def _render(self, stored: StoredEpisode, fmt: Literal["svg", "png"]) -> bytes:
        from agent.plot import render_plot  # noqa: PLC0415 (matplotlib: only when plotting)

        return render_plot(load_view(stored, self.cfg), fmt=fmt)

    # -- JSON ----------------------------------------------------------------------------------
    async def api_list(self, request: web.Request) -> web.Response:
        try:
            f = parse_filters(request.query, time.time_ns())
        except FilterError as exc:
            return web.json_response({"error": str(exc)}, status=400)
        rows = await self._db(lambda j: j.list(**f.journal_args()))
        episodes = [{**export_row(s), "url": _url(s.id)} for s in rows]
        return web.json_response({"filters": f.echo(), "count": len(episodes),
                                  "episodes": episodes}, dumps=_dumps)  # fmt: skip

    async def api_get(self, request: web.Request) -> web.Response:
        id_ = request.match_info["id"]
        stored = await self._db(lambda j: j.get(id_))
        if stored is None:
            return web.json_response({"error": f"no episode {id_!r} in the journal"}, status=404)
        audit = await self._db(lambda j: j.audit(id_))
        e = stored.episode
        return web.json_response({
            **export_row(stored), "url": _url(e.id), "plot": _url(e.id, "/plot.svg"),
            "start_ns": e.start_ns, "end_ns": e.end_ns, "peak_ns": e.peak_ns, "tags": e.tags,
            "note": e.note, "explanation": explanation_lines(stored),
            "contributions": [asdict(c) for c in e.contributions],
            "audit": [{**a, "time": iso(a["time_ns"])} for a in audit],
        }, dumps=_dumps)  # fmt: skip


def _dumps(data: Any) -> str:
    """JSON with NaN as null (a gap detector has no expected value)."""

    def clean(v: Any) -> Any:
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, list):
            return [clean(x) for x in v]
        return v

    return json.dumps(clean(data))
